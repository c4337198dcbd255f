"""The life of an `itx` process around its flow runs: the temporary Prefect server (started while the heavy
imports run, stopped with the process) and stopping when asked (SIGTERM, Ctrl-C).

The flow runs in a thread of its own while the main thread waits for it (`until_signalled`): a signal only
records a stop request (models/stopping.py) that every long loop checks at its next step, so the run ends
as after an error, marked interrupted, and `Interrupted` reaches the command line (flows/cli.py), which
prints one line and exits with 143 / 130. docs/guarantees.md says what holds afterwards.
"""
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def prepare_prefect_database() -> None:
    """Migrate $PREFECT_HOME's database one process at a time, before a temporary server does: two runs
    starting at once on a new Prefect home would both migrate it and one would fail."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value():
        return
    import asyncio

    from prefect.server.database import provide_database_interface

    from tasks.io import file_lock

    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(home / "itx-migrate.lock", "Prefect database setup"):
        asyncio.run(provide_database_interface().create_db())


PREFECT_STARTING: list[threading.Thread] = []  # the thread starting the temporary server, if one was started


def start_prefect_in_background() -> Callable[[], None]:
    """Set up Prefect's database and start its temporary server (when no PREFECT_API_URL names one) in a
    thread, so that its few seconds overlap the imports of torch, Lightning and MLflow instead of
    following them. Returns the wait to call before the first flow runs; it re-raises the thread's error."""
    # Imported here, in the main thread: two threads importing the same modules at once can see them
    # half-initialised. The thread then only runs code.
    import asyncio  # noqa: F401 - this and the next two: what prepare_prefect_database imports
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.server.database import provide_database_interface  # noqa: F401
    from prefect.settings import get_current_settings

    from tasks.io import file_lock  # noqa: F401

    errors: list[BaseException] = []

    def start() -> None:
        try:
            prepare_prefect_database()
            settings = get_current_settings()
            if not settings.api.url and settings.server.ephemeral.enabled:
                SubprocessASGIServer().start()  # the process-wide server every flow run of this process uses
        except BaseException as error:  # noqa: BLE001 - handed to the main thread by wait()
            errors.append(error)

    thread = threading.Thread(target=start, name="prefect-start", daemon=True)
    thread.start()
    PREFECT_STARTING.append(thread)

    def wait() -> None:
        thread.join()
        if errors:
            raise errors[0]

    return wait


def without_heartbeats_on_a_temporary_server():
    """Settings for the flow runs of this process: no heartbeats when they go to the temporary server.

    A flow run's heartbeat thread sleeps in one-second steps and Prefect joins it when the run ends, so
    each flow run (the pipeline and its five stage subflows) ends up to a second late. Heartbeats let a
    server tell crashed runs from live ones; a temporary server lives and dies with this process, so
    nothing would ever read them. With PREFECT_API_URL set, the settings are left as they are.
    """
    from contextlib import nullcontext

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


EXIT_CODES = {2: 130, 15: 143}  # SIGINT, SIGTERM: 128 + the signal, as a shell reports a process it stopped
# After a stop request: the run's time to end cleanly, then the process's time to exit (Prefect drains its
# logs and events to the temporary server at exit) before it stops its children and leaves regardless.
STOP_GRACE_S, EXIT_GRACE_S = 5.0, 4.0
WORK_STARTED: list[threading.Thread] = []  # the thread running the flow, once started (see stop_on_signals)


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped a run: `code` is the exit code, `where` what it was doing, `clean` whether the
    run ended within the grace period (its folder and MLflow runs marked interrupted). A BaseException, as
    KeyboardInterrupt is: raised during start-up from the signal handler, no library's `except Exception`
    may catch and wrap it."""

    def __init__(self, signum: int, where: str, clean: bool):
        self.code, self.where, self.clean = EXIT_CODES.get(signum, 128 + signum), where, clean
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name} during {where}")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM ask this process's work to stop (models/stopping.py) instead of killing it at once,
    from the moment a command starts: a signal during start-up still stops the temporary Prefect server."""
    from models.stopping import request_stop

    def stop(signum: int, frame: Any) -> None:
        request_stop(signum)
        if not WORK_STARTED:  # still starting (imports, the temporary server): nothing to stop cleanly yet
            raise Interrupted(signum, "start-up", clean=True)

    previous = {signum: signal.signal(signum, stop) for signum in EXIT_CODES}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def until_signalled(work: Callable[[], Any]) -> Any:
    """Run `work` in a thread of its own while this (main) thread waits for it or for a stop request (see
    `stop_on_signals`). Asked to stop, every loop stops at its next step; the run fails as after any error,
    marked interrupted, within STOP_GRACE_S, and Interrupted is raised here."""
    import contextvars

    from models.stopping import StopRequested, clear_stop, requested_signal, stop_requested

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = error

    if stop_requested():  # a signal during start-up: nothing has run yet
        raise Interrupted(requested_signal() or signal.SIGINT, "start-up", clean=True)
    # The thread runs in a copy of this context: Prefect's settings (no heartbeats) are context variables.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name="itx-run", daemon=True)
    try:
        WORK_STARTED.append(thread)
        thread.start()
        while thread.is_alive() and not stop_requested():
            thread.join(0.2)
        if stop_requested():
            thread.join(STOP_GRACE_S)
            if "value" in outcome:  # it had passed its last stop point: the run finished, as a whole
                return outcome["value"]
            error = outcome.get("error")
            where = error.where if isinstance(error, StopRequested) else "the run"
            raise Interrupted(requested_signal() or signal.SIGINT, where, clean=not thread.is_alive())
    finally:
        WORK_STARTED.clear()
        if not thread.is_alive():
            clear_stop()  # a process that runs again (the tests, `itx demo`) starts without the old request
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def stop_temporary_server() -> None:
    """Stop the temporary Prefect server this process started (a uvicorn child), if any, once it has started."""
    from prefect.server.api.server import SubprocessASGIServer

    for starting in PREFECT_STARTING:
        starting.join(timeout=STOP_GRACE_S)

    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()


def leave_within(seconds: float, code: int) -> None:
    """Make sure the process ends within `seconds`: a normal exit stops the temporary server after Prefect
    has sent its last logs to it; if that takes longer (or a worker is still busy), a watchdog stops the
    server and leaves with `code` without waiting."""

    def watchdog() -> None:
        time.sleep(seconds)
        stop_temporary_server()
        sys.stderr.flush()
        os._exit(code)

    if seconds <= 0:
        watchdog()
    threading.Thread(target=watchdog, name="itx-exit-watchdog", daemon=True).start()
