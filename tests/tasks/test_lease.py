"""Ownership of a live stage run: a lease in MLflow tags, renewed by a heartbeat; a live owner is waited for, a dead one resumed."""

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from tasks import code, lease
from tasks.backend import configure
from tasks.errors import UserError
from tasks.tracking import STAGE_KEY, stage_key, stage_run

OWNER, HEARTBEAT, CLAIM = "multistep.owner", "multistep.heartbeat", "multistep.claim."
INPUTS = {"dataset": "runs:/abc/dataset"}


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the file (creating one takes seconds); each test has stage keys of its own."""
    return tmp_path_factory.mktemp("lease-home")


@pytest.fixture(autouse=True)
def fast_lease(store, monkeypatch, request):
    """Beats, elections and polls in tens of milliseconds, so that a test takes well under a second of lease time."""
    monkeypatch.setenv("MULTISTEP_HOME", str(store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in {"HEARTBEAT_S": "0.05", "SETTLE_S": "0.05", "POLL_S": "0.02", "EXPIRY_S": "2"}.items():
        monkeypatch.setenv(f"MULTISTEP_LEASE_{name}", value)
    monkeypatch.setitem(INPUTS, "dataset", f"runs:/{request.node.name}/dataset")  # a stage key per test
    configure("test")


CODE = "tasks.lease"  # the module whose import closure stands for the stage's code here


def stage(body, stage_name="pretrain") -> str:
    """A stage run the way the stage flows open one, with `body` as its body."""
    with stage_run(stage_name, Spec(), INPUTS, code=CODE, experiment="test", digests=dict(INPUTS)) as ctx:
        if not ctx.cached:
            ctx.output = body(ctx)
    return ctx.output


def key(stage_name="pretrain") -> str:
    return stage_key(
        stage_name, Spec(), {n: {"uri": u, "digest": u} for n, u in INPUTS.items()}, {}, code.version(CODE)
    )


def runs(status: str | None = None) -> list:
    experiment = configure("test")
    query = f"tags.`{STAGE_KEY}` = '{key()}'" + (f" and attributes.status = '{status}'" if status else "")
    return MlflowClient().search_runs([experiment], query)


def until(condition, what: str, deadline_s: float = 30):
    """Poll an observable condition (a tag, a line of output) until it holds; fail after the deadline."""
    end = time.monotonic() + deadline_s
    while not (value := condition()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


def unfinished_run(owner_host: str, pid: int, place: str, heartbeat_age_s: float) -> str:
    """An unfinished run of the stage key whose lease names the given process, as a crashed or busy owner leaves it."""
    token, heartbeat = lease.new_token(), time.time() - heartbeat_age_s
    tags = {"multistep.stage": "pretrain", STAGE_KEY: key(), OWNER: f"{owner_host}:{pid}:{token}",
            HEARTBEAT: f"{heartbeat:.3f}", CLAIM + token: f"{owner_host}:{pid}:{place}"}  # fmt: skip
    return MlflowClient().create_run(configure("test"), run_name="pretrain", tags=tags).info.run_id


def exited_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


def test_the_owner_renews_its_heartbeat_and_lets_go_when_done():
    seen = {}

    def body(ctx):
        tags = lambda: MlflowClient().get_run(ctx.run_id).data.tags  # noqa: E731
        seen["owner"], first = tags()[OWNER], tags()[HEARTBEAT]
        seen["renewed"] = until(lambda: tags()[HEARTBEAT] != first and tags()[HEARTBEAT], "a renewed heartbeat")
        return "models:/m/1"

    assert stage(body) == "models:/m/1"
    host, pid, token = seen["owner"].split(":")
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.tags[OWNER] == seen["owner"]  # who ran it stays on the run
    assert HEARTBEAT not in run.data.tags and CLAIM + token not in run.data.tags  # the lease is given up
    assert [t for t in threading.enumerate() if t.name.startswith("lease-heartbeat")] == []


def test_a_live_owner_is_waited_for_and_its_result_reused(capsys):
    release, calls, results = threading.Event(), [], {}

    def first_body(ctx):
        calls.append("first")
        release.wait(60)
        return "models:/m/1"

    def second_body(ctx):
        calls.append("second")
        return "models:/m/2"

    first = threading.Thread(target=lambda: results.setdefault("first", stage(first_body)))
    first.start()
    until(lambda: calls == ["first"], "the first process to be running the stage")
    second = threading.Thread(target=lambda: results.setdefault("second", stage(second_body)))
    second.start()
    said = []
    until(
        lambda: said.append(capsys.readouterr().out) or "waiting for it to finish" in "".join(said),
        "the second to wait",
    )
    release.set()
    first.join(30)
    second.join(30)
    said.append(capsys.readouterr().out)

    assert results == {"first": "models:/m/1", "second": "models:/m/1"}
    assert calls == ["first"]
    (run,) = runs()
    text = "".join(said)
    assert (
        f"pretrain: the same stage is running in process {os.getpid()} on {socket.gethostname()} (MLflow run {run.info.run_id}"
        in text
    )
    assert f"pretrain: cache hit, reusing run {run.info.run_id}" in text
    assert "resuming" not in text


def test_a_dead_owner_on_this_machine_is_resumed_at_once(capsys):
    # A fresh heartbeat, but the pid is gone: a kill -9 on this machine needs no expiry to be noticed.
    run_id = unfinished_run(socket.gethostname(), exited_pid(), lease.place(), 0)
    resumed = []
    assert stage(lambda ctx: resumed.append((ctx.run_id, ctx.resumed)) or "models:/m/1") == "models:/m/1"
    assert resumed == [(run_id, True)]
    assert f"pretrain: resuming unfinished run {run_id}" in capsys.readouterr().out


def test_an_owner_elsewhere_is_resumed_once_its_heartbeat_expired():
    run_id = unfinished_run("other-host", 4242, "other-host/pid:[1]", 3)  # expiry is 2 s here
    resumed = []
    stage(lambda ctx: resumed.append((ctx.run_id, ctx.resumed)) or "models:/m/1")
    assert resumed == [(run_id, True)]


def test_a_live_owner_elsewhere_is_refused_in_one_sentence_after_the_wait(monkeypatch):
    monkeypatch.setenv("MULTISTEP_LEASE_WAIT_S", "0")
    run_id = unfinished_run("other-host", 4242, "other-host/pid:[1]", 0)
    with pytest.raises(UserError) as err:
        stage(lambda ctx: pytest.fail("a run whose owner is alive was resumed"))
    message = str(err.value)
    # the seconds are read off the clock: a loaded machine can turn 0 into 1
    assert re.match(
        rf"pretrain: the same stage is still running in process 4242 on other-host \(MLflow run {run_id}, "
        r"last heartbeat [01] s ago\) after [01] s of waiting",
        message,
    ), message
    assert message.endswith(
        "run again once it has finished, or stop that process and run again to resume its checkpoint."
    )
    (run,) = runs()
    assert run.data.tags[OWNER].startswith("other-host:4242:")  # untouched


def test_two_processes_starting_at_once_run_the_stage_once():
    start, calls, results = threading.Barrier(2), [], []

    def body(ctx):
        calls.append(ctx.run_id)
        return f"runs:/{ctx.run_id}/out"

    def contender():
        start.wait()
        results.append(stage(body))

    threads = [threading.Thread(target=contender) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert len(calls) == 1
    assert results == [f"runs:/{calls[0]}/out"] * 2
    assert [r.info.run_id for r in runs()] == calls  # the loser's run (if it made one) is deleted, not left to resume


# ---- the election itself -----------------------------------------------------------------------


def claimed_run(token: str, place: str = "other-host/pid:[1]") -> str:
    tags = {STAGE_KEY: key(), CLAIM + token: f"other-host:4242:{place}"}
    return MlflowClient().create_run(configure("test"), tags=tags).info.run_id


def elect(run_id: str, create=None):
    return lease.acquire(run_id, create=create, rivals=lambda: runs())


def claims(run_id: str) -> list[str]:
    return sorted(k[len(CLAIM) :] for k in MlflowClient().get_run(run_id).data.tags if k.startswith(CLAIM))


def token_at(offset_s: float) -> str:
    return f"{time.time_ns() + int(offset_s * 1e9):020d}-00000000"


def test_an_earlier_live_claim_wins_and_the_loser_withdraws_its_own():
    earlier = token_at(-0.1)
    run_id = claimed_run(earlier)
    assert elect(run_id) is None
    assert claims(run_id) == [earlier]


@pytest.mark.parametrize("offset_s", [1.0, -5.0], ids=["later claim", "expired claim"])
def test_a_later_or_expired_claim_loses_to_ours(offset_s):
    rival = token_at(offset_s)
    run_id = claimed_run(rival)
    won = elect(run_id)
    try:
        assert won is not None and won.run_id == run_id and not won.created
        tags = MlflowClient().get_run(run_id).data.tags
        assert tags[OWNER] == f"{socket.gethostname()}:{os.getpid()}:{won.token}"
        assert claims(run_id) == sorted([rival, won.token])
    finally:
        won and won.release()


def slow_create(claim: dict[str, str]) -> str:
    time.sleep(0.1)  # a store slower than the settle time (0.05 s here)
    return MlflowClient().create_run(configure("test"), tags={STAGE_KEY: key(), **claim}).info.run_id


def test_a_claim_slower_than_the_settle_time_stands_down_when_contested():
    # A rival that read before our slow claim became visible may have won meanwhile, even with a later token.
    rival_run = claimed_run(token_at(1.0))
    assert elect(None, create=slow_create) is None
    assert [r.info.run_id for r in runs()] == [rival_run]  # our new run is deleted


def test_a_slow_claim_uncontested_wins():
    won = elect(None, create=slow_create)
    try:
        assert won is not None and won.created
        assert [r.info.run_id for r in runs()] == [won.run_id]
    finally:
        won and won.release()


def test_a_lease_setting_that_is_no_number_is_named(monkeypatch):
    monkeypatch.setenv("MULTISTEP_LEASE_WAIT_S", "a day")
    with pytest.raises(
        UserError,
        match=r"^MULTISTEP_LEASE_WAIT_S='a day' is not a number of seconds: set it to e.g. 86400, or unset it$",
    ):
        lease.wait_s()


def test_a_waiter_looks_again_soon_at_first_and_seldom_after_a_long_wait(monkeypatch):
    """Sweep cells that race for a 5 s data preparation go on within 0.25 s of its end; a rival that trains for an hour
    is read every MULTISTEP_LEASE_POLL_S (2 s), not four times a second."""
    monkeypatch.setenv("MULTISTEP_LEASE_POLL_S", "2")
    assert lease.poll_s(0) == lease.poll_s(5) == 0.25
    assert lease.poll_s(50) == pytest.approx(1.0)
    assert lease.poll_s(3600) == 2
