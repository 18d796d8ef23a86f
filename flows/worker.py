"""`prefect worker start` for a process worker that asks its pool for work only when it can take some.

A Prefect worker polls its pool every PREFECT_WORKER_QUERY_SECONDS, busy or not, and each poll costs the Prefect server
~25 ms of CPU (it records the poll on the pool's queues and deployments). A gpu worker (limit 1) is full for the whole
of a fine-tune, when a poll can only find runs it would leave for another worker; on a one-machine stack those polls
are taken from training (issue 10: ~12 of the server's 40 CPU s in a four-cell sweep on two gpu workers). Full, this
worker polls every BUSY_POLL_S instead: often enough that Prefect keeps its deployments Ready (it marks them Not Ready
after 60 s unpolled) and, at the stack's 1 s poll, that the worker's opt-in health check (no poll in 30 polls' time)
stays green. With a free slot it polls as Prefect's does, from its first turn after the slot came free.

    python -m flows.worker --pool gpu --limit 1 ...   # the arguments of `prefect worker start`; `--type process` implied

The class takes the "process" type in Prefect's worker registry, so `prefect worker start --type process` in this
process builds it; everything else (flow-run processes, cancellation, heartbeats) is Prefect's ProcessWorker.
"""

import sys
import time
import warnings

BUSY_POLL_S = 10.0


def register() -> type:
    """Define (and so register as the "process" worker type) the ProcessWorker that skips polls while it is full."""
    from prefect.workers.process import ProcessWorker

    class BusyAwareProcessWorker(ProcessWorker):
        type = "process"  # replaces Prefect's entry for this process only
        _polled_at = 0.0  # time.monotonic() of the last real poll

        async def setup(self) -> None:
            print(f"worker: {self.name} polls every {BUSY_POLL_S:.0f} s while every slot is busy", flush=True)
            await super().setup()

        async def get_and_submit_flow_runs(self):
            full = self._limiter is not None and self._limiter.available_tokens < 1
            if full and time.monotonic() - self._polled_at < BUSY_POLL_S:
                return []
            self._polled_at = time.monotonic()
            return await super().get_and_submit_flow_runs()

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
