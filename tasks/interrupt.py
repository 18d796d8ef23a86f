"""Ctrl-C and SIGTERM as a request to stop at the next safe point: a training step boundary, or the start of a stage.

The CLI's signal handler calls `request`; the Trainer callback in tasks/train.py and `tracking.stage_run` read it. Outside
the CLI (a worker, a test calling a flow) nothing calls `request`, and Prefect's own signal handling applies.
"""

import signal
import threading

_requested = threading.Event()
_signal: list[int] = []  # the first signal received


class Interrupted(KeyboardInterrupt):
    """Raised at a safe point after a stop was requested: never retried, and Prefect takes it for an interrupt, not a bug."""

    def __init__(self, where: str):
        super().__init__(f"{where}: stopped by {signal_name()}")
        self.where = where


def request(signum: int) -> None:
    """Ask the running pipeline to stop at its next safe point."""
    if not _signal:
        _signal.append(signum)
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def wait() -> None:
    """Block until a stop is requested (forever outside the CLI)."""
    _requested.wait()


def check(where: str) -> None:
    """Raise Interrupted if a stop was requested: called where stopping loses no work."""
    if _requested.is_set():
        raise Interrupted(where)


def poll_s(age_s: float, cap_s: float) -> float:
    """The pause before the next look at work another process does (a dispatched stage, a rival's run of a stage), which
    began `age_s` seconds ago: 0.25 s while it is young (short work ends soon), then 2 % of its age, at most `cap_s`.
    Waiting then adds at most 2 % (and `cap_s`) to the work, and a long wait costs the server it reads few requests."""
    return min(cap_s, max(0.25, 0.02 * age_s))


def signal_name() -> str:
    return signal.Signals(_signal[0]).name if _signal else "an interrupt"


def exit_code() -> int:
    """128 + the signal's number, as a shell reports a process stopped by it (130 for SIGINT)."""
    return 128 + (_signal[0] if _signal else signal.SIGINT)
