"""Ctrl-C and SIGTERM for the CLI, handled once, here: the pipeline runs in a thread and stops at its next safe point.

The main thread only waits and takes the signals: the first asks the pipeline to stop (tasks/interrupt.py: training
saves a checkpoint at its next step boundary, no new stage starts); the stage's MLflow run ends KILLED, the Prefect flow
runs end Cancelled, the embedded server stops last, and the CLI exits 130 with one line saying how to resume. A second
signal stops at once, as kill -9 would: the run still resumes from its newest complete checkpoint.
"""

import atexit
import contextvars
import logging
import os
import shlex
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

from flows import embedded
from tasks import interrupt

T = TypeVar("T")
TAG = f"multistep-cli:{uuid.uuid4().hex[:12]}"  # on every flow run this process starts, to cancel exactly those


def install() -> None:
    """Take SIGINT and SIGTERM in the main thread from now on (before the heavy imports: a Ctrl-C there stops cleanly too)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    logging.getLogger("prefect.flow_runs").addFilter(_no_crash_reports_after_an_interrupt)


def _no_crash_reports_after_an_interrupt(record: logging.LogRecord) -> bool:
    # Prefect takes the interrupt for a crash of each flow run; they end Cancelled, and the CLI says so in one line.
    return not (
        interrupt.requested() and record.getMessage().startswith(("Crash detected!", "Finished in state Crashed"))
    )


def _on_signal(signum: int, frame) -> None:
    if not interrupt.requested():
        interrupt.request(signum)
        # os.write, not print: a handler that prints can interrupt a print of this thread and fail as reentrant.
        name = signal.Signals(signum).name
        os.write(
            1,
            f"multistep: {name} received: stopping at the next training step (with a checkpoint) or before the next stage; again to stop at once\n".encode(),
        )
        return
    embedded.stop_prefect_server()
    os.write(2, f"{resume_hint('stopped at once, without a new checkpoint')}\n".encode())
    os._exit(interrupt.exit_code())


def run(work: Callable[[], T]) -> T:
    """`work()` (a Prefect flow call) in a thread, so that signals reach only the main thread; its result or its exception."""
    interrupt.check("before the pipeline started")
    outcome: dict = {}

    def target() -> None:
        from prefect import tags

        try:
            with tags(TAG):
                outcome["result"] = work()
        except BaseException as exc:  # handed to the main thread, which raises it
            outcome["error"] = exc

    # The thread inherits the caller's context: Prefect's temporary settings live in context variables.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name="pipeline", daemon=True)
    thread.start()
    thread.join()  # a signal runs its handler, and the join goes on
    if "error" in outcome:
        if isinstance(outcome["error"], interrupt.Interrupted):
            _cancel_flow_runs()
        raise outcome["error"]
    return outcome["result"]


def stopped(exc: interrupt.Interrupted) -> int:
    """After an interrupt: say how to resume (one line on stderr) and return the exit code.

    The embedded server stops at exit, after Prefect has sent it the last logs and events (the reverse order of atexit).
    """
    print(resume_hint(exc.where), file=sys.stderr)
    return interrupt.exit_code()


def resume_hint(where: str) -> str:
    command = shlex.join(["multistep", *sys.argv[1:]])
    return f"multistep: interrupted by {interrupt.signal_name()} ({where}); the same command resumes: {command}"


def _cancel_flow_runs() -> None:
    """End this process's unfinished flow runs Cancelled (Prefect recorded an interrupt as a crash)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    done = [StateType.COMPLETED, StateType.CANCELLED]
    found = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[TAG]), state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=done))
    )
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=found):
            client.set_flow_run_state(
                run.id, Cancelled(message=f"interrupted by {interrupt.signal_name()}"), force=True
            )


def exit_now(code: int) -> None:
    """End the process as Python would, minus the interpreter's teardown: freeing torch's, transformers', MLflow's and
    Prefect's modules object by object took seconds after each run, and nothing there needs it. Every atexit handler
    still runs, in order: Prefect sends its last logs and events, then the embedded server stops."""
    # The interpreter's own first two steps at exit: join the threads, run threading's exit hooks (Prefect's log and
    # event services drain there), then atexit's handlers.
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
