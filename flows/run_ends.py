"""Dispatched flow runs' ends as the Prefect server pushes them (its events websocket), for the dispatcher's wait.

Polling a stage's flow run costs the server a read each time (~860 by the poll's pace in a 4-cell sweep on 2 cards,
a good part of the server's CPU, which on a one-machine stack is taken from training) and notices its end up to a poll
late (2 s for a long stage). One subscription per process and server hears every flow run's final state as it
happens; the wait then reads the run once it has ended, and otherwise only every CONFIRM_S, in case an event was
lost. Without the subscription (it failed to connect, or dropped) the wait polls as before.
"""

import asyncio
import contextvars
import threading
import time
from collections import OrderedDict

FINAL = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")
CONFIRM_S = 10.0  # the wait's read of a run it has heard nothing about: a lost event costs at most this
_REMEMBERED = 10_000  # ended runs kept, for a wait that begins after its run's event came


class Ends:
    """The ids of flow runs that reached a final state, from a subscription kept by a daemon thread."""

    def __init__(self):
        self._cond = threading.Condition()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._live = False
        run = contextvars.copy_context().run  # the caller's Prefect settings (its server) hold in the thread too
        threading.Thread(target=run, args=(asyncio.run, self._listen()), name="flow-run-ends", daemon=True).start()

    def live(self) -> bool:
        """Whether the subscription is open (events are arriving)."""
        return self._live

    def wait(self, run_id, timeout_s: float, stop=lambda: False) -> bool:
        """Until the run has ended (True), `timeout_s` passed, `stop()` or the subscription dropped (False); `stop` is
        looked at every 0.5 s."""
        key, deadline = str(run_id), time.monotonic() + timeout_s
        with self._cond:
            while key not in self._ended:
                left = deadline - time.monotonic()
                if left <= 0 or stop() or not self._live:
                    return False
                self._cond.wait(min(0.5, left))
            return True

    async def _listen(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        names = [f"prefect.flow-run.{state}" for state in FINAL]
        try:
            async with get_events_subscriber(filter=EventFilter(event=EventNameFilter(name=names))) as events:
                self._set_live(True)
                async for event in events:
                    self._heard(event.resource.id.removeprefix("prefect.flow-run."))
        except Exception as exc:  # noqa: BLE001 — the wait polls instead; a dispatch never fails for this
            print(
                f"dispatch: no flow-run events from the Prefect server ({type(exc).__name__}: {exc}); polling instead"
            )
        finally:
            self._set_live(False)

    def _set_live(self, live: bool) -> None:
        with self._cond:
            self._live = live
            self._cond.notify_all()

    def _heard(self, run_id: str) -> None:
        with self._cond:
            self._ended[run_id] = None
            while len(self._ended) > _REMEMBERED:
                self._ended.popitem(last=False)
            self._cond.notify_all()


_watchers: dict[str, Ends] = {}
_lock = threading.Lock()


def watcher() -> Ends | None:
    """This process's subscription to the Prefect server it talks to now, started on first use; None without a server
    URL (pools mode always has one; without it Prefect's subscriber would start a server of its own)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    with _lock:
        if url not in _watchers:
            _watchers[url] = Ends()
        return _watchers[url]
