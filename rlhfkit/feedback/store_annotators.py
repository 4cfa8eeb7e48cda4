"""The store's annotators part: adding annotators, their project memberships and roles, and
their sign-in tokens (issuing, rotating, revoking, and looking one up on each request)."""

from __future__ import annotations

import secrets

from sqlalchemy import and_, bindparam, delete, select

from rlhfkit.feedback.checks import MAX_TOKEN_CHARS, check_name
from rlhfkit.feedback.database import hash_token
from rlhfkit.feedback.errors import Conflict, FeedbackError, NotFound
from rlhfkit.feedback.records import ROLES, AnnotatorInfo, MemberInfo, ProjectInfo
from rlhfkit.feedback.schema import Annotator, Assignment, Membership, Prompt, utcnow
from rlhfkit.feedback.store_base import StoreBase, _annotator_info

# Who a token belongs to, and their role in one project (NULL: no member); built once.
_TOKEN_LOOKUP = (
    select(Annotator.id, Annotator.name, Annotator.revoked_at, Membership.role)
    .outerjoin(Membership, and_(Membership.annotator_id == Annotator.id,
                                Membership.project_id == bindparam("project_id")))
    .where(Annotator.token_hash == bindparam("token_hash"))
)


class AnnotatorsMixin(StoreBase):
    """Annotators, members and tokens."""

    # ----- annotators --------------------------------------------------------------------------
    def add_annotator(self, name: str, project: str | ProjectInfo | None = None, role: str = "annotator") -> str:
        """Add an annotator (a member of `project` with `role`, when given) and return their
        sign-in token. Only its hash is stored: show it now."""
        name = check_name(name, "annotator name")
        role = _check_role(role)
        token = secrets.token_urlsafe(24)
        with self._writing() as s:
            if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
                raise Conflict(f"annotator {name!r} already exists; add them to a project with "
                               f"`rlhfkit feedback add-member {name} --project NAME`")
            p = self._project(s, project) if project is not None else None
            row = Annotator(name=name, token_hash=hash_token(token))
            s.add(row)
            s.flush()
            if p is not None:
                s.add(Membership(project_id=p.id, annotator_id=row.id, role=role))
        return token

    def add_member(self, project: str | ProjectInfo, annotator: str, role: str = "annotator") -> bool:
        """Make `annotator` a member of `project` with `role` (or change their role there).
        Returns whether they were a member before."""
        role = _check_role(role)
        with self._writing() as s:
            p = self._project(s, project)
            a = self._annotator_row(s, annotator)
            m = s.get(Membership, (p.id, a.id))
            if m is None:
                s.add(Membership(project_id=p.id, annotator_id=a.id, role=role))
                return False
            m.role = role
            return True

    def remove_member(self, project: str | ProjectInfo, annotator: str) -> None:
        """Take `annotator` off `project`: the page and API refuse them there from the next request.
        Their rankings stay (and export); the prompts they held go back to the queue."""
        with self._writing() as s:
            p = self._project(s, project)
            a = self._annotator_row(s, annotator)
            if s.get(Membership, (p.id, a.id)) is None:
                raise NotFound(f"annotator {annotator!r} is not a member of project {p.name!r}")
            s.execute(delete(Membership).where(Membership.project_id == p.id, Membership.annotator_id == a.id))
            held = select(Prompt.id).where(Prompt.project_id == p.id)
            s.execute(delete(Assignment).where(Assignment.annotator_id == a.id, Assignment.prompt_id.in_(held)))

    def revoke_token(self, annotator: str) -> None:
        """The annotator's token stops working everywhere (their rankings stay); `rotate_token`
        gives them a new one."""
        with self._writing() as s:
            a = self._annotator_row(s, annotator)
            a.revoked_at = utcnow()
            s.execute(delete(Assignment).where(Assignment.annotator_id == a.id))

    def rotate_token(self, annotator: str) -> str:
        """A new token for `annotator` (a lost or leaked one stops working at once); returns it,
        shown this once. Also lifts a revocation."""
        token = secrets.token_urlsafe(24)
        with self._writing() as s:
            a = self._annotator_row(s, annotator)
            a.token_hash, a.revoked_at = hash_token(token), None
        return token

    def annotator_for_token(self, token: str | None, project: str | ProjectInfo | None = None) -> AnnotatorInfo | None:
        """The annotator a token belongs to (with their role in `project`, None if they are no
        member), or None for an unknown or revoked token.

        The web app asks this on every request, so it is one prepared statement on a plain
        connection (no ORM session): a third of the cost of building the query each time."""
        if not token or not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        if project is not None and not isinstance(project, ProjectInfo):
            project = self.project(project)
        with self.engine.connect() as conn:
            found = conn.execute(_TOKEN_LOOKUP, {"token_hash": hash_token(token),
                                                 "project_id": project.id if project is not None else -1}).first()
        if found is None or found.revoked_at is not None:
            return None
        return AnnotatorInfo(found.id, found.name, found.role if project is not None else None)

    def annotators(self) -> list[AnnotatorInfo]:
        """Every annotator in the database (no role: roles are per project, see `members`)."""
        with self._reading() as s:
            return [_annotator_info(a) for a in s.scalars(select(Annotator).order_by(Annotator.name))]

    def members(self, project: str | ProjectInfo) -> list[MemberInfo]:
        """The project's annotators and admins, by name."""
        with self._reading() as s:
            p = self._project(s, project)
            rows = s.execute(
                select(Annotator.name, Membership.role, Annotator.revoked_at)
                .join(Membership, Membership.annotator_id == Annotator.id)
                .where(Membership.project_id == p.id)
                .order_by(Annotator.name)
            ).all()
            return [MemberInfo(name, role, revoked is not None) for name, role, revoked in rows]


def _check_role(role: object) -> str:
    if role not in ROLES:
        raise FeedbackError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return str(role)

