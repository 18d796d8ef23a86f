"""How pools mode waits on a dispatched stage: timeouts, a pool nobody serves, and which failures are dispatched again."""

import contextvars
import threading
import time
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.states import Completed, Crashed, Pending, Running

from flows import dispatch, shared, slots
from flows.spec import ExecutionSpec
from tasks import interrupt
from tasks.errors import UserError


class FakeClient:
    """Answers read_flow_run with the states given, one per poll (the last repeats); records cancellations."""

    def __init__(self, *states):
        self.states, self.cancelled = list(states), []

    def read_flow_run(self, flow_run_id):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return SimpleNamespace(id=flow_run_id, name="brave-otter", state=state)

    def set_flow_run_state(self, flow_run_id, state, force=False):
        self.cancelled.append(flow_run_id)


@pytest.fixture
def clock(monkeypatch):
    """A monotonic clock that advances 1 s per poll instead of sleeping."""
    now = [0.0]
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(dispatch.time, "sleep", lambda s: now.__setitem__(0, now[0] + 1.0))
    return now


def test_a_stage_past_its_timeout_is_cancelled_as_a_crash(clock):
    client = FakeClient(Pending(), Running())
    with pytest.raises(dispatch.StageCrashed, match="ran past its 5 s timeout"):
        dispatch._wait(client, SimpleNamespace(id="r1"), "gpu", start_timeout_s=60, timeout_s=5)
    assert client.cancelled == ["r1"]


def test_a_stage_no_worker_takes_is_an_error_naming_the_pool(clock):
    client = FakeClient(Pending())
    with pytest.raises(
        UserError, match=r"no worker of work pool 'gpu' took flow run brave-otter within 10 s.*flows.worker --pool gpu"
    ):
        dispatch._wait(client, SimpleNamespace(id="r1"), "gpu", start_timeout_s=10, timeout_s=100)
    assert client.cancelled == ["r1"]


def test_a_final_state_ends_the_wait(clock):
    client = FakeClient(Pending(), Running(), Running(), Completed())
    assert dispatch._wait(client, SimpleNamespace(id="r1"), "cpu", 60, 60).state.is_completed()
    assert client.cancelled == []


def test_crashes_are_dispatched_again_and_input_errors_are_not(monkeypatch):
    execution = ExecutionSpec(mode="pools", stage_retries=2)
    outcomes = [Crashed(message="no heartbeat"), Completed()]
    calls = []

    def remote(stage, execution, params, run_name):
        calls.append(params)
        state = outcomes.pop(0)
        if not state.is_completed():
            raise dispatch.StageCrashed(f"ended {state.name}")
        return "runs:/abc/dataset", SimpleNamespace(name="brave-otter")

    monkeypatch.setattr(dispatch, "_remote", remote)
    monkeypatch.setattr(dispatch, "_linked", lambda uri, run: uri)
    stage = SimpleNamespace(name="prepare")
    assert dispatch.call(stage, execution, None, spec=None) == "runs:/abc/dataset"
    assert len(calls) == 2

    def refuses(stage, execution, params, run_name):
        calls.append(params)
        raise UserError("data.sources: no such file")

    calls.clear()
    monkeypatch.setattr(dispatch, "_remote", refuses)
    with pytest.raises(UserError):
        dispatch.call(stage, execution, None, spec=None)
    assert len(calls) == 1


def test_stage_timeouts_name_real_stages():
    with pytest.raises(ValueError, match="unknown stages"):
        ExecutionSpec(stage_timeouts={"pretrian": 3600})
    assert ExecutionSpec(stage_timeouts={"pretrain": 3600}).stage_timeouts == {"pretrain": 3600}


def test_deploy_needs_a_prefect_server_and_sane_numbers(tmp_path, run_cli):
    done = run_cli(["deploy"], tmp_path / "home", PREFECT_API_URL="")
    assert done.returncode == 2 and "set PREFECT_API_URL" in done.stderr.strip().splitlines()[-1]
    done = run_cli(["deploy", "--gpus", "0"], tmp_path / "home")
    assert done.returncode == 2 and "--gpus must be at least 1" in done.stderr


def test_ctrl_c_cancels_the_dispatched_stage_and_stops_waiting(clock, monkeypatch):
    monkeypatch.setattr(interrupt, "requested", lambda: True)  # as the CLI's SIGINT handler leaves it
    client = FakeClient(Pending(), Running())
    with pytest.raises(interrupt.Interrupted, match="flow run brave-otter cancelled"):
        dispatch._wait(client, SimpleNamespace(id="r1"), "gpu", start_timeout_s=60, timeout_s=60)
    assert client.cancelled == ["r1"]


def test_in_pools_mode_the_run_graph_draws_the_arrow_from_a_stage_to_the_one_that_takes_its_uri(monkeypatch):
    """Prefect draws an arrow into a run whose inputs hold an upstream run's result; a dispatched stage's URI is read
    from an artifact, so the dispatcher must tie it to the flow run that made it (in-process subflows do so by themselves)."""
    from prefect import flow, get_client
    from prefect.client.schemas.actions import ArtifactCreate

    from flows.stages import OUTPUT_KEY, STAGES, prepare_stage, pretrain_stage
    from tasks.data.spec import PrepareSpec
    from tasks.pretrain.spec import PretrainSpec

    def worker(client, run, pool, start_timeout_s, timeout_s, ends):
        """What a worker does with the flow run: the stage runs, leaves its URI, completes."""
        artifact = ArtifactCreate(key=OUTPUT_KEY, type="markdown", data=f"`runs:/{run.id}/out`", flow_run_id=run.id)
        client.create_artifact(artifact)
        client.set_flow_run_state(run.id, Completed(), force=True)
        return client.read_flow_run(run.id)

    monkeypatch.setattr(dispatch, "_wait", worker)
    with get_client(sync_client=True) as client:
        for stage in ("prepare", "pretrain"):
            flow_name, name = dispatch.deployment_name(stage, STAGES[stage].hardware).split("/")
            client.create_deployment(flow_id=client.create_flow_from_name(flow_name), name=name)

    @flow
    def two_stages() -> str:
        from prefect.runtime import flow_run

        ex = ExecutionSpec(mode="pools", stage_retries=0)
        dataset = dispatch.call(prepare_stage, ex, None, spec=PrepareSpec())
        dispatch.call(pretrain_stage, ex, None, spec=PretrainSpec(), dataset=dataset, name="t")
        return flow_run.id

    pipeline = two_stages()
    with get_client(sync_client=True) as client:
        graph = client.request("GET", "/flow_runs/{id}/graph-v2", path_params={"id": pipeline}).json()
    nodes = {node["label"].split(" / ")[0]: node for _, node in graph["nodes"]}
    assert set(nodes) == {"prepare", "pretrain"}
    # (Prefect's graph query repeats an edge once per parameter of the upstream run; the UI draws one arrow)
    assert {edge["id"] for edge in nodes["pretrain"]["parents"]} == {nodes["prepare"]["id"]}
    assert nodes["prepare"]["parents"] == []


def test_polling_slows_as_a_stage_ages_so_a_long_stage_costs_the_server_few_reads(monkeypatch):
    """A 10-minute stage is read ~400 times, not 2,400 (a fixed 0.25 s poll); a young stage is still read every 0.25 s,
    and the end of a long one is noticed within 2 s."""
    now, reads = [0.0], []

    class Clock:
        @staticmethod
        def read_flow_run(flow_run_id):
            reads.append(now[0])
            state = Completed() if now[0] >= 600 else Running()
            return SimpleNamespace(id=flow_run_id, name="brave-otter", state=state)

    monkeypatch.setattr(dispatch.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(dispatch.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    dispatch._wait(Clock(), SimpleNamespace(id="r1"), "gpu", start_timeout_s=60, timeout_s=3600)
    assert reads[1] - reads[0] == pytest.approx(0.25)
    assert len(reads) < 500
    assert reads[-1] - 600 <= 2.0


def test_within_pool_slots_a_pool_gets_no_more_stages_at_once_than_its_slots_and_other_pools_are_not_held(monkeypatch):
    """A sweep of four cells on two cards: two fine-tunes are dispatched at a time and the other two wait here, not in
    the pool's queue (where start_timeout_s would count the wait); the cpu pool, which has no slots set, takes all four."""
    lock, running, most, ended = threading.Lock(), {"gpu": 0, "cpu": 0}, {"gpu": 0, "cpu": 0}, []
    together = {"gpu": threading.Barrier(2, timeout=20), "cpu": threading.Barrier(4, timeout=20)}

    def run_deployment(name, **kwargs):
        pool = name.rsplit("-on-", 1)[1]
        with lock:
            running[pool] += 1
            most[pool] = max(most[pool], running[pool])
        return SimpleNamespace(id=uuid4(), name=name, pool=pool)

    def runs(client, run, pool, start_timeout_s, timeout_s, ends):
        together[run.pool].wait()  # as many as the pool lets in at once are running now (else: BrokenBarrierError)
        with lock:
            running[run.pool] -= 1
        return SimpleNamespace(id=run.id, name=run.name, state=Crashed(message="ended"))

    monkeypatch.setattr("prefect.deployments.run_deployment", run_deployment)
    monkeypatch.setattr(dispatch, "_wait", runs)
    execution = ExecutionSpec(mode="pools")

    def cell(stage: str) -> None:
        try:
            dispatch._remote(SimpleNamespace(name=stage), execution, {}, "a cell")
        except Exception as exc:  # noqa: BLE001 — the test reads what ended each thread
            ended.append(type(exc).__name__)

    with slots.pool_slots({"gpu": 2}):
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(cell, stage))
            for stage in ["finetune"] * 4 + ["prepare-labeled"] * 4
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert ended == ["StageCrashed"] * 8  # every stage was dispatched and ran to its end
    assert most == {"gpu": 2, "cpu": 4}


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_card_a_stage_frees_stays_its_cells_for_the_next_stage_until_the_cell_leaves():
    """Cell 1's fine-tune frees the only card while cell 2's fine-tune waits: the card stays cell 1's, whose gate asks
    for it a moment later and takes it first; once cell 1 leaves (its pipeline ended), cell 2 takes it."""
    cards, taken, free = slots.Slots(1, keep_s=60), [], threading.Event()

    def finetune(cell: int, wait: bool) -> None:
        with cards.held(cell):
            taken.append(cell)
            if wait:
                free.wait(timeout=20)

    first = threading.Thread(target=finetune, args=(1, True))
    first.start()
    _wait_for(lambda: taken == [1], "cell 1 holds the card")
    second = threading.Thread(target=finetune, args=(2, False))
    second.start()
    _wait_for(lambda: len(cards._waiting) == 1, "cell 2 waits")
    free.set()
    first.join(timeout=20)
    with cards._cond:  # the card is free, cell 2 still waits, and the rule says it is not cell 2's (no sleep needed)
        assert taken == [1] and cards._free == 1
        assert [t[2] for t in cards._waiting] == [2] and not cards._mine(cards._waiting[0])
    finetune(1, False)  # cell 1's gate: the card is its own, cell 2 still waits
    assert taken == [1, 1]
    cards.leave(1)
    second.join(timeout=20)
    assert taken == [1, 1, 2]


def test_a_kept_card_goes_to_the_others_when_the_keep_runs_out():
    cards, taken = slots.Slots(1, keep_s=0.2), []

    def gate() -> None:
        with cards.held(2):
            taken.append(2)

    with cards.held(1):
        waiter = threading.Thread(target=gate)
        waiter.start()
        _wait_for(lambda: len(cards._waiting) == 1, "cell 2 waits")
    waiter.join(timeout=10)  # cell 1 never asks again nor leaves: the keep ends by itself
    assert taken == [2]


def test_a_freed_slot_goes_to_a_cell_that_began_then_to_the_earliest_cell_in_the_plan():
    """One card, held by cell 5's fine-tune; stages of cells 3, 1, 5 (its gate) and 2 queue in that order. When the card
    frees, cell 5's gate goes first (its cell began), then cells 1, 2, 3 by their place in the plan, not as they came."""
    cards, taken, free = slots.Slots(1, keep_s=0), [], threading.Event()

    def stage(cell: int) -> None:
        with cards.held(cell):
            taken.append(cell)

    def holder() -> None:
        with cards.held(5):
            free.wait(timeout=20)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    deadline = time.monotonic() + 10
    while cards._free and time.monotonic() < deadline:  # the card is busy before anyone queues
        time.sleep(0.01)
    for i, cell in enumerate([3, 1, 5, 2]):
        threads.append(threading.Thread(target=stage, args=(cell,)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(cards._waiting) < i + 1 and time.monotonic() < deadline:  # this one waits before the next comes
            time.sleep(0.01)
    assert len(cards._waiting) == 4
    free.set()
    for t in threads:
        t.join(timeout=20)
    assert taken == [5, 1, 2, 3]


def test_each_cell_of_a_parallel_sweep_dispatches_with_its_place_in_the_plan_as_its_rank_and_leaves_when_done(
    monkeypatch,
):
    from flows import sweep as sweep_flow

    seen = {}
    left = []
    monkeypatch.setattr(sweep_flow, "run_cell", lambda cell, parent: seen.setdefault(cell, slots.cell_rank.get()))
    monkeypatch.setattr(slots, "leave_slots", left.append)
    sweep_flow.run_cells(["a", "b", "c"], "parent", parallel=3)
    assert seen == {"a": 0, "b": 1, "c": 2}
    assert sorted(left) == [0, 1, 2]  # each cell, once ended, gives back the card it kept


def test_a_dispatched_runs_end_is_heard_from_the_servers_events_not_found_by_polling(prefect_api):
    """A stage that ends after 3 s is read at its start and once its end is heard (a 0.25 s poll would read it ~12
    times), and a run that ended before its wait began is known to have ended at once."""
    from prefect import flow, get_client

    from flows import run_ends

    @flow
    def stage():
        pass

    ends = run_ends.watcher()
    _wait_for(ends.live, "the subscription opens")
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(stage)
        client.set_flow_run_state(run.id, Running(), force=True)
        reads = []

        class Counted:
            @staticmethod
            def read_flow_run(flow_run_id):
                reads.append(time.monotonic())
                return client.read_flow_run(flow_run_id)

        def finish():
            with get_client(sync_client=True) as other:
                other.set_flow_run_state(run.id, Completed(), force=True)

        threading.Timer(3.0, contextvars.copy_context().run, args=(finish,)).start()
        ended = dispatch._wait(Counted, run, "gpu", start_timeout_s=60, timeout_s=60, ends=ends)
        assert ended.state.is_completed()
        assert len(reads) <= 3
        assert ends.wait(run.id, 0)  # heard before anyone waited: no wait at all


def test_without_a_prefect_server_url_no_subscription_is_made():
    """Prefect's subscriber would start a server of its own; the wait polls instead (pools mode always has a URL)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import run_ends

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert run_ends.watcher() is None


def _in_thread(target) -> tuple[threading.Thread, list]:
    out = []
    thread = threading.Thread(target=lambda: out.append(target()))
    thread.start()
    return thread, out


def test_in_a_sweep_the_same_dispatch_goes_out_once_and_a_failed_one_is_taken_over_by_a_waiting_cell():
    sharing, release, calls = shared.Shared(), threading.Event(), []

    def dispatching(cell, fails=False):
        def go():
            calls.append(cell)
            release.wait(10)
            if fails:
                raise dispatch.StageCrashed("worker died")
            return f"uri of {cell}"

        return go

    first, got_first = _in_thread(lambda: sharing.once("prepare-labeled", dispatching("cell 0")))
    while calls != ["cell 0"]:
        time.sleep(0.01)
    # The second cell comes while the first's flow run is out, or after it finished: either way it dispatches nothing
    second, got_second = _in_thread(lambda: sharing.once("prepare-labeled", dispatching("cell 1")))
    release.set()
    first.join(10), second.join(10)
    assert got_first == [("uri of cell 0", True)] and got_second == [("uri of cell 0", False)]
    assert calls == ["cell 0"]
    assert sharing.once("finetune", dispatching("cell 1")) == ("uri of cell 1", True)  # another stage goes out

    calls.clear()
    release.clear()

    def fails():
        try:
            sharing.once("gate", dispatching("cell 0", fails=True))
        except dispatch.StageCrashed as exc:
            return exc

    first, got_first = _in_thread(fails)
    while calls != ["cell 0"]:
        time.sleep(0.01)
    second, got_second = _in_thread(lambda: sharing.once("gate", dispatching("cell 1")))
    release.set()
    first.join(10), second.join(10)
    assert isinstance(got_first[0], dispatch.StageCrashed)
    assert got_second == [("uri of cell 1", True)] and calls == ["cell 0", "cell 1"]


def test_a_shared_dispatch_is_a_cache_hit_of_the_other_cells_pipeline_runs_and_a_deleted_run_is_dispatched_again(
    home, monkeypatch
):
    """Two cells of a pools sweep call the same stage with the same settings: one flow run, and the second cell's
    pipeline run names the stage run it reused (the report's `reused` line and the sweep's `alone` column read it)."""
    from mlflow.tracking import MlflowClient

    from tasks.backend import configure
    from tasks.tracking import OUTPUT, REUSED

    experiment = configure("shared")
    client = MlflowClient()
    made = client.create_run(experiment, tags={OUTPUT: "runs:/made/dataset"}).info.run_id
    client.set_terminated(made)
    cells = [client.create_run(experiment).info.run_id for _ in range(2)]
    dispatched, linked = [], []

    def remote(stage, execution, params, run_name):
        dispatched.append(params["parent_run_id"])  # the other cell comes while this runs, or after: the same outcome
        return "runs:/made/dataset", SimpleNamespace(name="brave-otter")

    monkeypatch.setattr(dispatch, "_remote", remote)
    monkeypatch.setattr(dispatch, "_linked", lambda uri, run: linked.append(run.name) or uri)
    execution = ExecutionSpec(mode="pools", experiment="shared", stage_retries=0)
    stage = SimpleNamespace(name="prepare-labeled")
    with shared.scope():
        threads = [
            _in_thread(
                lambda c=c, ctx=contextvars.copy_context(): ctx.run(dispatch.call, stage, execution, c, spec=None)
            )
            for c in cells
        ]
        for thread, _ in threads:
            thread.join(10)
    assert [out for _, out in threads] == [["runs:/made/dataset"]] * 2
    assert len(dispatched) == 1 and linked == ["brave-otter"] * 2
    follower = next(c for c in cells if c not in dispatched)
    assert client.get_run(follower).data.tags[REUSED + "prepare-labeled"] == made

    client.delete_run(made)  # gone meanwhile: the next cell dispatches the stage itself
    with shared.scope():
        dispatch.call(stage, execution, cells[0], spec=None)
        dispatch.call(stage, execution, cells[1], spec=None)
    assert len(dispatched) == 3
    # Outside a sweep every call dispatches
    dispatch.call(stage, execution, cells[0], spec=None)
    assert len(dispatched) == 4
