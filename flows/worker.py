"""`prefect worker start` for a process worker that asks its pool for work only when there may be some it can take.

A Prefect worker polls its pool every PREFECT_WORKER_QUERY_SECONDS, busy or not, and each poll costs the Prefect server
~25 ms of CPU (it records the poll on the pool's queues and deployments). A gpu worker (limit 1) is full for the whole
of a fine-tune, when a poll can only find runs it would leave for another worker; on a one-machine stack those polls
are taken from training (issue 10: ~12 of the server's 40 CPU s in a four-cell sweep on two gpu workers). Full, this
worker polls every BUSY_POLL_S instead: often enough that Prefect keeps its deployments Ready (it marks them Not Ready
after 60 s unpolled) and, at the stack's 1 s poll, that the worker's opt-in health check (no poll in 30 polls' time)
stays green.

An idle worker (a cpu worker through a whole sweep of fine-tunes) would poll every second for nothing. Instead it
listens to the server's events: a flow run of its pool that becomes Scheduled (a dispatch, a retry, a schedule's
run) or ends (a pool slot came free) wakes it, and it polls at once, then at every turn for WAKE_S in case the run
is not visible yet; otherwise it asks every IDLE_POLL_S (for a lost event, and for schedules, which Prefect fetches
PREFECT_WORKER_PREFETCH_SECONDS ahead). A stage then starts without the poll's wait, 0.5 s on average. Without the
events (the subscription failed or dropped) it polls at every turn, as Prefect's worker does.

    python -m flows.worker --pool gpu --limit 1 ...   # the arguments of `prefect worker start`; `--type process` implied

The class takes the "process" type in Prefect's worker registry, so `prefect worker start --type process` in this
process builds it; everything else (flow-run processes, cancellation, heartbeats) is Prefect's ProcessWorker.
"""

import asyncio
import sys
import time
import warnings
from contextlib import suppress

from flows import run_ends

BUSY_POLL_S = 10.0
IDLE_POLL_S = 10.0
WAKE_S = 2.0
# The flow-run states that may give this worker something to take: a run waiting for a worker, or one that ended
# (its slot in the pool is free)
WAKING = ("Scheduled", "AwaitingRetry", "Late", "AwaitingConcurrencySlot", *run_ends.FINAL)


def of_pool(event, pool: str) -> bool:
    """Whether a flow-run event concerns the work pool named `pool` (Prefect relates a run to its pool by role)."""
    return any(r.role == "work-pool" and r.name == pool for r in event.related)


def register() -> type:
    """Define (and so register as the "process" worker type) the ProcessWorker that skips polls while it is full."""
    from prefect.workers.process import ProcessWorker

    class BusyAwareProcessWorker(ProcessWorker):
        type = "process"  # replaces Prefect's entry for this process only
        _polled_at = 0.0  # time.monotonic() of the last real poll
        _woken_at = -WAKE_S  # time.monotonic() of the last event that may concern this pool
        _wake: asyncio.Event | None = None  # set by such an event while the subscription is open; None otherwise
        _listener: asyncio.Task | None = None

        async def setup(self) -> None:
            print(f"worker: {self.name} polls every {BUSY_POLL_S:.0f} s while every slot is busy", flush=True)
            await super().setup()
            self._listener = asyncio.create_task(self._listen())

        async def teardown(self, *exc_info) -> None:
            if self._listener is not None:
                self._listener.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await self._listener
            await super().teardown(*exc_info)

        async def get_and_submit_flow_runs(self):
            full = self._limiter is not None and self._limiter.available_tokens < 1
            if full and time.monotonic() - self._polled_at < BUSY_POLL_S:
                return []
            wake = self._wake
            if not full and wake is not None and time.monotonic() - self._woken_at > WAKE_S:
                # Idle and nothing heard: wait here (the loop's other services go on) for an event or the idle poll
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._polled_at + IDLE_POLL_S - time.monotonic())
                wake.clear()
            self._polled_at = time.monotonic()
            return await super().get_and_submit_flow_runs()

        async def _listen(self) -> None:
            from prefect.events.clients import get_events_subscriber
            from prefect.events.filters import EventFilter, EventNameFilter

            names = [f"prefect.flow-run.{state}" for state in WAKING]
            try:
                async with get_events_subscriber(filter=EventFilter(event=EventNameFilter(name=names))) as events:
                    self._wake = asyncio.Event()
                    print(
                        f"worker: {self.name} wakes on its pool's flow-run events, else polls every {IDLE_POLL_S:.0f} s",
                        flush=True,
                    )
                    async for event in events:
                        if of_pool(event, self._work_pool_name):
                            self._woken_at = time.monotonic()
                            self._wake.set()
            except Exception as exc:  # noqa: BLE001 — the worker polls at every turn instead, as Prefect's does
                print(
                    f"worker: {self.name} hears no flow-run events ({type(exc).__name__}: {exc}); polling at every turn",
                    flush=True,
                )
            finally:
                wake, self._wake = self._wake, None
                if wake is not None:
                    wake.set()  # a poll waiting for an event goes on

    return BusyAwareProcessWorker


def main(argv: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Prefect warns that the "process" type is overridden: that is the point
        register()
    from prefect.cli import app

    sys.argv = ["prefect", "worker", "start", "--type", "process", *argv]  # Prefect's CLI reads its arguments there
    sys.exit(app())


if __name__ == "__main__":
    main(sys.argv[1:])
