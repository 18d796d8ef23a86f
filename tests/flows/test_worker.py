"""flows/worker.py: Prefect's process worker, minus the polls it makes while every slot is busy."""

import warnings

import anyio
import pytest
from prefect.utilities.dispatch import get_registry_for_type, lookup_type
from prefect.workers.base import BaseWorker

from flows import worker


@pytest.fixture
def busy_aware():
    registry = get_registry_for_type(BaseWorker)
    stock = registry["process"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = worker.register()
    yield cls
    registry["process"] = stock  # the other tests in this process get Prefect's own worker


def test_prefect_builds_it_for_the_process_type(busy_aware):
    assert lookup_type(BaseWorker, "process") is busy_aware


def test_a_full_worker_asks_for_work_once_per_busy_poll_and_a_free_one_every_time(busy_aware, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock[0])
    polls = []

    async def scenario():
        w = busy_aware(work_pool_name="gpu", limit=1)
        w._has_successfully_synced = True  # as after its first sync with the server
        w._limiter = anyio.CapacityLimiter(1)
        w._get_scheduled_flow_runs = lambda: _none(polls)
        w._submit_scheduled_flow_runs = lambda flow_run_response: _none([])

        for _ in range(3):  # a free slot: every call asks the server
            await w.get_and_submit_flow_runs()
        assert len(polls) == 3
        w._limiter.acquire_on_behalf_of_nowait("a-running-flow-run")
        for _ in range(3):
            clock[0] += 1.0
            await w.get_and_submit_flow_runs()
        assert len(polls) == 3, "a full worker asked for work it could not take"
        clock[0] += worker.BUSY_POLL_S
        await w.get_and_submit_flow_runs()
        await w.get_and_submit_flow_runs()
        assert len(polls) == 4, "a full worker must still poll now and then (deployments stay Ready)"
        w._limiter.release_on_behalf_of("a-running-flow-run")
        await w.get_and_submit_flow_runs()
        assert len(polls) == 5, "a worker whose slot came free asks at once"

    anyio.run(scenario)


async def _none(calls: list) -> list:
    calls.append(1)
    return []
