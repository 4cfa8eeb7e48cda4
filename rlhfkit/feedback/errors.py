"""Errors of the feedback store and app: each is a UserError, so the CLI prints one line, and
the web app maps each class to one HTTP status (404, 403, 422, 409, 503)."""

from __future__ import annotations

from rlhfkit.errors import UserError


class FeedbackError(UserError):
    """A request the store cannot carry out; the message says which item is wrong."""


class NotFound(FeedbackError, LookupError):
    """An unknown project, prompt or annotator."""


class InvalidRanking(FeedbackError, ValueError):
    """A ranking that is not a ranking of exactly the prompt's completions."""


class Forbidden(FeedbackError):
    """An annotator asking for what their role or assignment does not allow."""


class Conflict(FeedbackError):
    """The request clashes with what is stored (a name taken, a reused submission id, ...)."""


class DatabaseUnavailable(FeedbackError):
    """The database cannot be opened or reached."""


