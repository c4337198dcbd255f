"""Stop when asked: a process-wide request to stop (SIGTERM, Ctrl-C, a cancelled flow run), seen by long loops
at their next step.

A signal can only interrupt Python's main thread, and the work runs elsewhere (Prefect runs tasks in worker
threads; `itx` runs the flow itself in a thread). So the signal handler only calls `request_stop`, and the
long loops call `check_stop` at every step: each training and validation batch (`StopOnRequest` in
models/base.py, a Lightning callback, so Lightning tears the fit down as after any exception and the last epoch's checkpoint
stays for the resume), each batch of evaluation, scoring and export, and each stage's start. The
`StopRequested` they raise fails the run like any error, which marks it interrupted (docs/guarantees.md).
"""
from __future__ import annotations

import signal
import threading

_requested = threading.Event()
_signal: list[int | None] = [None]


class StopRequested(Exception):
    """Raised at the next step of a long loop once a stop was requested."""

    def __init__(self, where: str, signum: int | None = None):
        self.where, self.signum = where, signum
        name = signal.Signals(signum).name if signum else "a stop request"
        super().__init__(f"stopped by {name} during {where}")


def request_stop(signum: int | None = None) -> None:
    """Ask every loop of this process to stop at its next step (safe to call from a signal handler)."""
    if _signal[0] is None:
        _signal[0] = signum
    _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


def requested_signal() -> int | None:
    """The signal that asked to stop (None: no signal, or no stop)."""
    return _signal[0]


def clear_stop() -> None:
    """Forget a request (a long-lived process, e.g. the tests, runs again afterwards)."""
    _requested.clear()
    _signal[0] = None


def check_stop(where: str) -> None:
    """Raise StopRequested when a stop was requested; `where` says what was interrupted."""
    if _requested.is_set():
        raise StopRequested(where, _signal[0])
