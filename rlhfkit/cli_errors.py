"""One job: turn the errors a user can act on into one red `error: ...` line and exit code 2.

Both command lines (`rlhfkit ...` and `rlhfkit feedback ...`) wrap their commands in
`one_line_errors`. It catches a `UserError` (bad input, an unknown project, ...), a file-system
failure of the machine (disk full, permission denied) and a database
failure (SQLAlchemy's `DBAPIError`) and prints its message as one line on stderr, never a stack
trace. SQLAlchemy is not imported here, so that `rlhfkit --help` stays fast: an exception can
only be a `DBAPIError` once SQLAlchemy has been loaded, so the check looks in `sys.modules`.

A command that ends well under torchrun also leaves its process group (`end_processes`), so that no
process of a finished run aborts at exit; torch is looked for in `sys.modules` the same way.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from rlhfkit.errors import UserError, first_line

EXIT_USER_ERROR = 2
"""The exit status of a command stopped by an error the user can fix."""

F = TypeVar("F", bound=Callable[..., Any])


def is_database_error(e: BaseException) -> bool:
    """Whether `e` is a SQLAlchemy DBAPIError (a driver failure), without importing SQLAlchemy."""
    exc = sys.modules.get("sqlalchemy.exc")
    return exc is not None and isinstance(e, exc.DBAPIError)


# File-system failures that come from the machine, not from a bug: a full disk, no permission, a read-only
# mount, a path through a file. Printed as one line naming the file (a run's checkpoints are written
# atomically, so the previous one is intact and --resume continues from it).
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                      errno.ENOTDIR, errno.EISDIR, errno.EMFILE, errno.EIO}


def is_environment_error(e: BaseException) -> bool:
    """Whether `e` is a file-system failure of the machine (see ENVIRONMENT_ERRNOS)."""
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS


def environment_message(e: OSError) -> str:
    name = f"{e.filename}: " if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"error: {name}no space left to write ({e.strerror}); nothing half-written is kept and earlier "
                "checkpoints are intact: free some space, then rerun (with --resume where the stage has it)")
    return f"error: {name}{e.strerror or e}; check the path and its permissions"


def error_message(e: BaseException) -> str:
    """The one line printed for a UserError, a database failure or a file-system failure of the machine."""
    if isinstance(e, UserError):
        return f"error: {e}"
    if is_environment_error(e):
        return environment_message(e)  # type: ignore[arg-type]
    return f"error: database: {first_line(e)}"


def one_line_errors(fn: F) -> F:
    """Run a command; print a UserError or a database failure as `error: <message>` in red on
    stderr and exit with status 2. Other exceptions (bugs) propagate with their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rlhfkit.trainers.signals import Stopped, restore_signals

        try:
            result = fn(*args, **kwargs)
            if "torch.distributed" in sys.modules:  # a command that ran a trainer: leave its process group
                from rlhfkit.trainers.common import end_processes

                end_processes()
            return result
        except Stopped as e:  # SIGTERM / Ctrl-C: a checkpoint was saved; say how to resume
            typer.secho(str(e), err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(e.code) from None
        except Exception as e:
            if not (isinstance(e, UserError) or is_database_error(e) or is_environment_error(e)):
                raise
            typer.secho(error_message(e), err=True, fg=typer.colors.RED)
            raise typer.Exit(EXIT_USER_ERROR) from None
        finally:
            restore_signals()

    return wrapper  # type: ignore[return-value]
