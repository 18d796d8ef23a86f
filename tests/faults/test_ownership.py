"""Three identical runs started at once on one home: each stage runs once, in one of them; a stage run whose owner lives is
waited for, never resumed; a SIGKILLed owner's run is resumed by exactly one of the waiting processes, the other reuses it."""

import os
import re
import signal
import socket
import time

from mlflow.tracking import MlflowClient


def waits_for(text: str) -> tuple[int, str] | None:
    """(pid, run id) of the process that this output says it waits for in pretrain, or None."""
    found = re.search(
        rf"pretrain: the same stage is running in process (\d+) on {re.escape(socket.gethostname())} \(MLflow run (\w+)[,)]",
        text,
    )
    return (int(found.group(1)), found.group(2)) if found else None


def test_identical_runs_wait_for_a_live_owner_and_one_resumes_it_once_it_is_killed(
    tmp_path, corpus, tiny_overrides, start_cli, registered_versions
):
    home = tmp_path / "home"
    home.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").search_experiments()  # a home already in use
    args = ["run", "configs/default.yaml", *sum((["--set", o] for o in tiny_overrides(corpus, steps=6)), [])]
    names = ("a", "b", "c")
    # Whichever wins pretrain holds its live run after checkpoint-3 (a resumed run saves step 6 next, so it never holds).
    # Each its own Prefect home: concurrent first starts of one Prefect database are another issue's subject.
    # Three servers migrating their databases at once on a small machine start slower than Prefect's 20 s default.
    env = {
        "MULTISTEP_FAULT_HOLD_AT_STEP": "3",
        "MULTISTEP_LEASE_POLL_S": "0.2",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    clis = {n: start_cli(args, home, n, PREFECT_HOME=str(tmp_path / f"prefect-{n}"), **env) for n in names}
    procs = {n: cli.proc for n, cli in clis.items()}

    def said(name: str) -> str:
        return clis[name].out.read_text() + clis[name].err.read_text()

    deadline = time.monotonic() + 240
    while True:  # until the two others both wait for the one that holds
        waiting = {n: waits_for(said(n)) for n in names}
        holders = {w[0] for w in waiting.values() if w}
        owner = [n for n in names if {procs[n].pid} == holders]
        if (
            owner
            and sum(map(bool, waiting.values())) == 2
            and "fault injection: holding after checkpoint-3" in said(owner[0])
        ):
            break
        ended = {n: said(n)[-3000:] for n, p in procs.items() if p.poll() is not None}
        assert not ended and time.monotonic() < deadline, ended or {n: said(n)[-2000:] for n in names}
        time.sleep(0.1)
    owner = owner[0]
    (run_id,) = {w[1] for w in waiting.values() if w}
    others = [n for n in names if n != owner]
    for n in others:
        assert "resuming" not in said(n)  # the live owner's run is left alone

    os.killpg(procs[owner].pid, signal.SIGKILL)
    procs[owner].wait()
    codes = [clis[n].finish(timeout=240).returncode for n in others]

    outputs = {n: said(n) for n in others}
    assert codes == [0, 0], outputs
    resumed = [n for n, text in outputs.items() if f"pretrain: resuming unfinished run {run_id}" in text]
    assert len(resumed) == 1, outputs
    (reused,) = set(others) - set(resumed)
    assert f"pretrain: resuming from checkpoint-3 of run {run_id}" in outputs[resumed[0]]
    assert f"pretrain: cache hit, reusing run {run_id}" in outputs[reused]
    assert "pretrain: resuming" not in outputs[reused]
    for text in outputs.values():
        assert "Traceback" not in text
    assert [(v.name, int(v.version)) for v in registered_versions(home)] == [("tiny-base", 1)]
    # Every stage ran in exactly one process: one finished MLflow run per stage.
    stages = [
        r.data.tags["multistep.stage"]
        for r in MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").search_runs(["1"])
        if "multistep.stage" in r.data.tags
    ]
    assert sorted(stages) == ["evaluate", "gate", "prepare", "pretrain"]
