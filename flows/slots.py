"""How many stages of a work pool a sweep dispatches at once, and which cell's stage a freed slot goes to."""

import itertools
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar

from tasks import interrupt

# How long a card freed by a cell's stage stays that cell's: long enough for the cell to ask for its next stage (its gate
# after its fine-tune: the output read back, the next stage's key), short enough that a cell whose next stage runs
# elsewhere, or that has ended without saying so, idles the card only that long.
KEEP_S = 5.0


class Slots:
    """At most `n` stages of a work pool dispatched at once, for a sweep that runs more cells at once than its gpu pool
    has cards (flows/sweep.py). A stage is dispatched when its pool has a slot, so it never waits in the pool's queue,
    where start_timeout_s would count its wait as a missing worker; meanwhile its cell's other work (a cached
    preparation, the subflow's start) is done already. A cell that has begun finishes before another begins:
    - a slot its stage frees stays the cell's for `keep_s` (or until `leave(cell)`), for its next stage;
    - a freed slot goes first to a cell that has held one before (the earliest such), then to the cell earliest in the
      plan (`cell`).
    With a semaphore's any-order wake-up, a 4-cell sweep on 2 cards ran the first cells' gates only after the later
    cells' fine-tunes, ~100 s after their own fine-tunes had ended, and the sweep waited on them at the end; without the
    keep, the later cells' fine-tunes took the cards in the ~2 s between a fine-tune's end and its gate's request, and
    both early gates queued on one card, delaying the fine-tune behind them by ~20 s."""

    def __init__(self, n: int, keep_s: float = KEEP_S):
        self._free, self._keep_s = n, keep_s
        self._cond = threading.Condition()
        self._waiting: list[tuple] = []  # the tickets of the stages waiting for a slot, least first
        self._arrivals = itertools.count()
        self._began: dict[int, int] = {}  # cell → the order in which cells first held a slot
        self._kept: dict[int, float] = {}  # cell → until when (time.monotonic()) one of the free slots is its own

    @contextmanager
    def held(self, cell: int, check=lambda: None):
        """One slot, for the least waiting ticket; `check()` runs every 0.5 s while waiting (it may raise)."""
        with self._cond:
            began = self._began.get(cell)
            ticket = ((0, began) if began is not None else (1, cell), next(self._arrivals), cell)
            self._waiting.append(ticket)
            try:
                while not self._mine(ticket):
                    self._cond.wait(0.5)
                    check()
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # whoever is first now may take a free slot
            self._free -= 1
            self._kept.pop(cell, None)
            self._began.setdefault(cell, len(self._began))
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                if self._keep_s > 0:
                    self._kept[cell] = time.monotonic() + self._keep_s
                self._cond.notify_all()

    def leave(self, cell: int) -> None:
        """The cell asks for no more slots: the one it keeps, if any, is free for all now."""
        with self._cond:
            if self._kept.pop(cell, None) is not None:
                self._cond.notify_all()

    def _mine(self, ticket: tuple) -> bool:
        """Whether the slot goes to `ticket` now: its cell keeps one, or it is the least ticket of the cells that keep
        none and a slot is free that no other cell keeps."""
        now = time.monotonic()
        self._kept = {c: until for c, until in self._kept.items() if until > now}
        cell = ticket[2]
        if cell in self._kept:
            return self._free > 0
        others = [t for t in self._waiting if t[2] not in self._kept]
        return self._free > len(self._kept) and min(others) == ticket


_slots: ContextVar[dict[str, Slots]] = ContextVar("multistep_pool_slots", default={})  # read, never changed
cell_rank: ContextVar[int] = ContextVar("multistep_cell_rank", default=0)  # the cell's place in its sweep's plan


@contextmanager
def pool_slots(limits: dict[str, int]):
    """Within this block (and threads started with a copy of its context) at most `limits[pool]` stages are dispatched
    to each named pool at once."""
    token = _slots.set({pool: Slots(n) for pool, n in limits.items()})
    try:
        yield
    finally:
        _slots.reset(token)


def leave_slots(cell: int) -> None:
    """The cell's pipeline has ended: the slots it keeps (Slots.leave) go to the others at once."""
    for slots in _slots.get().values():
        slots.leave(cell)


@contextmanager
def slot(pool: str):
    slots = _slots.get().get(pool)
    if slots is None:
        yield
        return
    with slots.held(cell_rank.get(), lambda: interrupt.check(f"waiting for a free slot of work pool {pool}")):
        yield
