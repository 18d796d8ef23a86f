"""Within a sweep, a stage that several cells dispatch with the same settings and inputs goes to a worker once.

A sweep's cells start together, and those that share a stage (the data preparation; a pretraining that only the
fine-tune seeds differ on) would each dispatch it at the same moment: one flow run would do the work and the others,
each a process on a worker, would wait on the stage's lease (tasks/lease.py) to take its result from the cache. On a
one-machine stack those processes, and the Prefect and MLflow calls they make, are taken from the cells that train.
Here the first dispatch goes out; the other cells wait in this process for it and record its stage run as a cache hit
on their own pipeline run. The scope is one sweep, whose cells are meant to see one state of the data: a later
pipeline run dispatches again, and its worker looks the stage up by key as always.
"""

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tasks import interrupt

_scope: ContextVar["Shared | None"] = ContextVar("multistep_shared_dispatches", default=None)


class Shared:
    """The dispatches of one sweep, by identity (the stage, its deployment and its parameters but the parent run)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._dispatches: dict[str, Future] = {}

    def once(self, identity: str, dispatch: Callable[[], Any]) -> tuple[Any, bool]:
        """`(dispatch(), True)` for the first caller of an identity; `(its result, False)` for those that come while
        it runs or after it succeeded. When it fails, a waiting caller dispatches in its turn (the others follow it)."""
        while True:
            with self._lock:
                found = self._dispatches.get(identity)
                lead = found is None or (found.done() and found.exception() is not None)
                if lead:
                    found = self._dispatches[identity] = Future()
            if lead:
                try:
                    found.set_result(dispatch())
                except BaseException as exc:
                    found.set_exception(exc)
                    raise
                return found.result(), True
            while True:  # a future of this process: the timeout only lets Ctrl-C through
                try:
                    failure = found.exception(timeout=0.5)
                    break
                except TimeoutError:
                    interrupt.check("while waiting for a stage another cell dispatched")
            if failure is None:
                return found.result(), False


def current() -> Shared | None:
    """The sweep's shared dispatches, in a cell's thread (None outside a sweep)."""
    return _scope.get()


@contextmanager
def scope() -> Iterator[Shared]:
    """Share identical dispatches among the cells run inside (threads started with a copy of this context)."""
    token = _scope.set(Shared())
    try:
        yield _scope.get()
    finally:
        _scope.reset(token)
