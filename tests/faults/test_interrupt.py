"""Ctrl-C and SIGTERM mid-pretraining: a checkpoint, KILLED and Cancelled runs, exit 128+signal with one line on how to
resume, nothing left running; the same command then resumes from that checkpoint and registers exactly one version."""

import json
import os
import shlex
import signal
import sqlite3
from pathlib import Path

from mlflow.tracking import MlflowClient

HOLD = "MULTISTEP_FAULT_HOLD_AT_STEP"  # tasks/train.py: hold after that step's checkpoint until killed or interrupted


def statuses(home: Path) -> dict[str, str]:
    """MLflow run (its stage, or `pipeline`) → status, and the Prefect flow run state of each (through its `mlflow-run:` tag)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = {
        r.info.run_id: r.data.tags.get("multistep.stage", "pipeline")
        for r in client.search_runs([client.get_experiment_by_name("multistep").experiment_id])
    }
    # The flow runs of this home among those of the suite's Prefect database, which the CLIs share.
    prefect_db = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    with sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True) as db:
        flow_runs = db.execute("SELECT tags, state_type FROM flow_run").fetchall()
    out = {name: client.get_run(run_id).info.status for run_id, name in runs.items()}
    for tags, state in flow_runs:
        for tag in json.loads(tags):
            if tag.removeprefix("mlflow-run:") in runs:
                out[f"prefect {runs[tag.removeprefix('mlflow-run:')]}"] = state
    return out


def the_one_line(result) -> str:
    for noise in ("Traceback", "ConnectError", "Crash detected"):
        assert noise not in result.stderr, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if line.startswith("multistep: ")]
    assert len(said) == 1, result.stderr[-3000:]
    return said[0]


def test_ctrl_c_then_sigterm_each_stop_at_a_checkpoint_that_the_same_command_resumes(
    tmp_path, corpus, tiny_overrides, start_cli, run_cli, registered_versions, processes_of
):
    home = tmp_path / "home"
    args = ["run", "configs/default.yaml", *sum((["--set", o] for o in tiny_overrides(corpus, steps=8)), [])]
    command = shlex.join(["multistep", *args])

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group, after checkpoint-3 (checkpoint_every=3).
    cli = start_cli(args, home, **{HOLD: "3"})
    cli.wait_for("fault injection: holding after checkpoint-3")
    os.killpg(cli.proc.pid, signal.SIGINT)
    first = cli.finish(timeout=180)
    assert first.returncode == 130, first.stderr[-3000:]
    # The signal arrived while holding after step 3: training went on to the next step boundary and saved there.
    assert (
        the_one_line(first)
        == f"multistep: interrupted by SIGINT (pretrain at checkpoint-4); the same command resumes: {command}"
    )
    assert statuses(home) == {
        "pipeline": "KILLED", "prepare": "FINISHED", "pretrain": "KILLED",
        "prefect pipeline": "CANCELLED", "prefect prepare": "COMPLETED", "prefect pretrain": "CANCELLED",
    }  # fmt: skip
    assert processes_of(home) == []  # the embedded server outlived the SIGINT, then stopped last
    assert registered_versions(home) == []

    # SIGTERM (docker stop, kill) to the CLI alone, after the resumed run's checkpoint-6.
    cli = start_cli(args, home, **{HOLD: "6"})
    cli.wait_for("fault injection: holding after checkpoint-6")
    assert "pretrain: resuming from checkpoint-4" in cli.err.read_text()
    os.kill(cli.proc.pid, signal.SIGTERM)
    second = cli.finish(timeout=180)
    assert second.returncode == 143, second.stderr[-3000:]
    assert (
        the_one_line(second)
        == f"multistep: interrupted by SIGTERM (pretrain at checkpoint-7); the same command resumes: {command}"
    )
    assert processes_of(home) == []

    resumed = run_cli(args, home)
    said = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, said[-3000:]
    assert "pretrain: resuming from checkpoint-7" in said
    assert "  pretrain        resumed " in resumed.stdout
    assert len(registered_versions(home)) == 1
