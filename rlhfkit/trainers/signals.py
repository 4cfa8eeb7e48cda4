"""SIGTERM and Ctrl-C during a run: finish the step, save a checkpoint, exit with one line.

`catch_stop_signals()` (at a run's start) makes SIGTERM (Slurm, Kubernetes, `kill`) and the first
SIGINT (Ctrl-C) only set a flag; the loop reads it at the end of each iteration or step
(`stop_requested`), saves a checkpoint and raises `Stopped`, which the CLI prints as one line
saying how to resume, exiting with 128 + the signal number (the shell's convention). A second
Ctrl-C stops at once (KeyboardInterrupt), losing only the work since the last checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from rlhfkit.errors import UserError

_requested: int | None = None
_previous: dict[int, Any] = {}


class Stopped(UserError):
    """The run stopped on a signal after saving a checkpoint; `code` is the exit status (128 + signal)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.code = 128 + signum


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # the second Ctrl-C: stop now
    _requested = signum


def catch_stop_signals() -> None:
    """Turn SIGTERM and SIGINT into a stop request (main thread only; elsewhere signals keep their handlers)."""
    global _requested
    _requested = None
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig not in _previous:
            _previous[sig] = signal.signal(sig, _handler)


def restore_signals() -> None:
    """Put back the handlers `catch_stop_signals` replaced."""
    global _requested
    if threading.current_thread() is threading.main_thread():
        for sig, old in list(_previous.items()):
            signal.signal(sig, old)
            del _previous[sig]
    _requested = None


def stop_requested(accelerator: Any = None) -> int | None:
    """The signal that asked the run to stop (None if none); with several processes, any process's
    request stops them all at the same step (one all-reduce)."""
    local = _requested or 0
    if accelerator is not None and accelerator.num_processes > 1:
        import torch

        flag = torch.tensor([local], device=accelerator.device)
        local = int(accelerator.reduce(flag, reduction="max").item())
    return local or None


def stopped(signum: int, where: str, checkpoint: Any) -> Stopped:
    """The one line: what stopped the run, where the checkpoint is and how to go on."""
    name = signal.Signals(signum).name
    return Stopped(f"stopped by {name} {where}; checkpoint saved in {checkpoint}: run the same command with "
                   "--resume to continue", signum)
