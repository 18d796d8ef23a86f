"""flows/worker.py: Prefect's process worker, minus the polls it makes while every slot is busy."""

import asyncio
import time
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


def test_an_idle_worker_that_hears_events_polls_when_one_wakes_it_and_at_every_turn_just_after(busy_aware):
    polls = []

    async def scenario():
        w = busy_aware(work_pool_name="cpu", limit=4)
        w._has_successfully_synced = True
        w._limiter = anyio.CapacityLimiter(4)
        w._get_scheduled_flow_runs = lambda: _none(polls)
        w._submit_scheduled_flow_runs = lambda flow_run_response: _none([])
        w._wake = asyncio.Event()  # as while the subscription is open
        w._polled_at = time.monotonic()  # it has just polled: the next idle poll is IDLE_POLL_S away

        turn = asyncio.create_task(w.get_and_submit_flow_runs())
        for _ in range(20):  # the turn runs as far as it goes without an event (a poll would be its first await)
            await asyncio.sleep(0)
        assert polls == [] and not turn.done(), "an idle worker asked for work with nothing heard"
        w._woken_at = time.monotonic()  # what _listen does for a run of its pool
        w._wake.set()
        await asyncio.wait_for(turn, 5)
        assert len(polls) == 1
        await w.get_and_submit_flow_runs()  # just woken: the run may not be visible yet, so ask again at once
        assert len(polls) == 2
        w._wake = None  # the subscription dropped: every turn asks, as Prefect's worker does
        w._woken_at = -worker.WAKE_S
        await w.get_and_submit_flow_runs()
        assert len(polls) == 3

    asyncio.run(scenario())


def test_the_worker_is_woken_by_a_run_of_its_own_pool_and_not_by_another_pools(busy_aware, prefect_api, monkeypatch):
    """On a real server a Scheduled run of the worker's pool wakes it; then the very events the server sent for a run
    of another pool and of its own are fed to a second listener one by one: only its own pool's moves it."""
    from contextlib import asynccontextmanager

    import prefect.events.clients
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.events.filters import EventFilter, EventNameFilter

    async def scenario():
        async with get_client() as client:
            for pool in ("wake-gpu", "wake-cpu"):
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
            flow_id = await client.create_flow_from_name("stage")
            deployments = {
                pool: await client.create_deployment(flow_id=flow_id, name=f"on-{pool}", work_pool_name=pool)
                for pool in ("wake-gpu", "wake-cpu")
            }
            w = busy_aware(work_pool_name="wake-gpu", limit=1)
            listener = asyncio.create_task(w._listen())
            seen = prefect.events.clients.get_events_subscriber(
                filter=EventFilter(event=EventNameFilter(name=["prefect.flow-run.Scheduled"]))
            )
            async with seen as events:
                for _ in range(400):
                    if w._wake is not None:
                        break
                    await asyncio.sleep(0.05)
                assert w._wake is not None, "the worker's subscription did not open"
                runs = {
                    pool: str((await client.create_flow_run_from_deployment(deployments[pool])).id)
                    for pool in ("wake-cpu", "wake-gpu")
                }
                await asyncio.wait_for(w._wake.wait(), 20)
                listener.cancel()
                sent = {}
                while len(sent) < 2:
                    event = await asyncio.wait_for(events.__anext__(), 20)
                    sent.update({p: event for p, run in runs.items() if event.resource.id == f"prefect.flow-run.{run}"})

        @asynccontextmanager
        async def feeding(filter):
            async def stream():
                for event in fed:
                    yield event

            yield stream()

        monkeypatch.setattr(prefect.events.clients, "get_events_subscriber", feeding)
        other = busy_aware(work_pool_name="wake-gpu", limit=1)
        fed = [sent["wake-cpu"]]
        await other._listen()
        assert other._woken_at == -worker.WAKE_S, "a run of another pool woke the worker"
        fed = [sent["wake-gpu"]]
        await other._listen()
        assert other._woken_at > 0

    asyncio.run(scenario())
