"""execution.mode pools on a real team stack on 127.0.0.1: Prefect server, MLflow server proxying to SeaweedFS's S3,
a cpu and a gpu process worker, deployments/prefect.yaml registered by `multistep deploy`."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows import deploy, s3server, stack
from flows.worker import BUSY_POLL_S, IDLE_POLL_S
from tasks.tracking import REUSED, STAGE

CRASH_AFTER_S = 45  # heartbeats come every 30 s (Prefect's minimum); silence this long marks a run Crashed


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The stack `make stack` starts, with free ports and its own state, and the project's deployments registered."""
    root = tmp_path_factory.mktemp("stack")
    s = stack.up(root, stack.free_ports(), workers=False, crash_after_s=CRASH_AFTER_S)
    try:
        with stack.environ(s.env):
            deploy.register()
        s.start_worker("cpu", limit=4)
        s.start_worker("gpu", limit=1)
        s.wait_forkservers("worker-cpu", "worker-gpu")
        yield s
    finally:
        stack.down(root)


def tiny_pools(corpus: Path, tiny_overrides, *extra: str) -> list[str]:
    overrides = tiny_overrides(corpus) + ["execution.mode=pools", "execution.start_timeout_s=120", *extra]
    return ["run", "configs/default.yaml", *sum((["--set", o] for o in overrides), [])]


def cli(team, args, home: Path, run_cli, **env):
    return run_cli(args, home, timeout=600, **team.env, **env)


def stage_runs(team, pipeline_flow_run_id: str) -> list:
    """The flow runs the pipeline dispatched (run_deployment links each to the pipeline as a subflow)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with stack.environ(team.env), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_flow_run_id]))
        )
        flows = {f.id: f.name for f in client.read_flows()}
    return [(flows[r.flow_id], r) for r in runs]


def bucket_keys(team) -> list[str]:
    client = s3server.client(team.env["AWS_ENDPOINT_URL_S3"], team.access_key, team.secret_key)
    return [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=stack.BUCKET)
        for o in page.get("Contents", [])
    ]


def pipeline_runs(mlflow, name: str) -> list:
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    return mlflow.search_runs(
        experiments, f"tags.`multistep.pipeline` = '{name}'", order_by=["attributes.start_time ASC"]
    )


def stage_run(mlflow, parent, stage: str):
    (run,) = mlflow.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`multistep.stage` = '{stage}'",
    )
    return run


def test_each_stage_runs_on_its_pool_and_a_killed_gpu_worker_is_replaced_and_training_resumes_from_s3(
    team, tmp_path, corpus, tiny_overrides, flow_run_logs
):
    stack.kill(team, "worker-gpu")
    team.start_worker("gpu", limit=1, name="worker-gpu-doomed", env={"MULTISTEP_FAULT_HOLD_AT_STEP": "3"})
    args = tiny_pools(
        corpus, tiny_overrides, "name=pooled", "pretrain.train.max_steps=9", "pretrain.train.checkpoint_every=3"
    )
    home = tmp_path / "client"
    home.mkdir()
    env = {**os.environ, **team.env, "MULTISTEP_HOME": str(home)}
    with open(home / "out", "w+") as out:
        pipeline = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=stack.PACKAGE_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # The worker holds still once checkpoint-3 is complete in S3: then the machine dies, worker and flow run.
            marker = _wait_for_checkpoint(team, "checkpoint-3", pipeline, deadline_s=300)
            stack.kill(team, "worker-gpu-doomed")
            team.start_worker("gpu", limit=1, name="worker-gpu")
            rc = pipeline.wait(timeout=480)
        finally:
            stack._signal(pipeline.pid, 9)
        out.seek(0)
        said = out.read()
    assert rc == 0, said[-4000:]
    assert "pretrain: attempt 1 failed (StageCrashed" in said

    # Every stage ran as a flow run on the pool its hardware needs; the killed one Crashed and ran again.
    mlflow = MlflowClient(team.env["MLFLOW_TRACKING_URI"])
    (parent,) = pipeline_runs(mlflow, "pooled")
    pools, states = {}, {}
    for flow, run in stage_runs(team, parent.data.tags["prefect.flow_run_id"]):
        pools.setdefault(flow, set()).add(run.work_pool_name)
        states.setdefault(flow, []).append(run.state.name)
    assert pools == {"prepare": {"cpu"}, "pretrain": {"gpu"}, "evaluate": {"gpu"}, "gate": {"gpu"}}
    assert sorted(states.pop("pretrain")) == ["Completed", "Crashed"]
    assert all(s == ["Completed"] for s in states.values()), states
    # The workers' stage processes send their lines to the API: the resumed training's loss every log_every (2) steps
    # and at the last, its checkpoints, and the evaluation's results.
    done = {
        flow: run.id
        for flow, run in stage_runs(team, parent.data.tags["prefect.flow_run_id"])
        if run.state.is_completed()
    }
    with stack.environ(team.env):
        said = flow_run_logs(done["pretrain"])
        evaluated = flow_run_logs(done["evaluate"])
    assert [m.split()[2] for m in said if " loss " in m] == ["4/9", "6/9", "8/9", "9/9"]
    assert [m.split()[4] for m in said if " saved checkpoint-" in m] == ["checkpoint-6", "checkpoint-9"]
    assert any(m.startswith("evaluate: test perplexity ") for m in evaluated)
    from prefect import get_client

    with stack.environ(team.env), get_client(sync_client=True) as client:
        assert client.read_work_pool("gpu").concurrency_limit == 1  # two GPU stages never share the card

    # Resumed at the checkpoint's step, registered once, gated on the GPU pool: nine steps do not beat the unigram
    # baseline (measured there from the dataset in S3), so the challenger is not promoted.
    run_id = marker.split("/")[2]
    assert [m.value for m in mlflow.get_metric_history(run_id, "resumed_from_step")] == [3.0]
    assert len(mlflow.search_model_versions("name = 'pooled-base'")) == 1
    assert mlflow.get_model_version_by_alias("pooled-base", "challenger").version in ("1", 1)
    tags = mlflow.get_model_version("pooled-base", "1").tags
    unigram = stage_run(mlflow, parent, "gate").data.metrics["baseline_perplexity"]
    assert (
        tags["gate.decision"] == "rejected"
        and f"is worse than the unigram baseline's {unigram:.4g}" in tags["gate.reason"]
    )

    # Datasets, checkpoints and model files went to the bucket behind MLflow.
    keys = bucket_keys(team)
    prepared = stage_run(mlflow, parent, "prepare").info.run_id
    assert any(k.endswith(f"{prepared}/artifacts/dataset/blocks/train.parquet") for k in keys)
    model_files = [k for k in keys if k.endswith("model.safetensors")]
    assert model_files and all(k.startswith("mlflow/") for k in model_files)


def _wait_for_checkpoint(team, name: str, pipeline: subprocess.Popen, deadline_s: float) -> str:
    """The S3 key of a checkpoint's completion marker, once the worker has published it."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = [k for k in bucket_keys(team) if k.endswith(f"/checkpoints/{name}/_COMPLETE")]
        if found:
            return found[0]
        assert pipeline.poll() is None, "the pipeline ended before the checkpoint appeared"
        time.sleep(0.5)  # poll interval, bounded by the deadline
    raise AssertionError(f"no {name} in the bucket after {deadline_s} s")


def test_retraining_twice_on_unchanged_data_reuses_every_stage_and_new_data_goes_through_the_gate(team, tmp_path):
    from flows.spec import load

    data = tmp_path / "reviews.tsv"
    data.write_text(_reviews(160))
    overrides = [
        "name=retrained", "data=null", "pretrain=null", "evaluate=null",
        "labeled.task=classification", f"labeled.train=[{data}]", "labeled.text_column=sentence",
        "labeled.split.validation=0.2", "labeled.split.test=0.2",
        # 12 steps at 3e-4 teach minilm the three words of each label: the first version gets every review right
        # (seed 42; 6 steps reach only 0.62 on the third run's test rows, and that run's challenger 1.0).
        "finetune.init=package:minilm", "finetune.max_length=16", "finetune.train.max_steps=12", "finetune.train.batch_size=8",
        "finetune.train.lr=0.0003", "finetune.train.warmup_steps=0", "finetune.train.checkpoint_every=12", "finetune.patience=null",
        "execution.mode=pools",
    ]  # fmt: skip
    spec = load("configs/default.yaml", overrides).model_dump(mode="json")
    mlflow = MlflowClient(team.env["MLFLOW_TRACKING_URI"])

    first = _retrain(team, spec)
    assert [v.version for v in mlflow.search_model_versions("name = 'retrained'")] in (["1"], [1])
    assert mlflow.get_model_version_by_alias("retrained", "champion").version in ("1", 1)

    second = _retrain(team, spec)
    reused = {
        k.removeprefix("multistep.reused."): v
        for k, v in mlflow.get_run(second).data.tags.items()
        if k.startswith("multistep.reused.")
    }
    assert set(reused) == {"prepare-labeled", "finetune", "gate"}
    assert len(mlflow.search_model_versions("name = 'retrained'")) == 1
    first_run = mlflow.get_run(first)
    # the first run's stages
    assert reused == {stage: stage_run(mlflow, first_run, stage).info.run_id for stage in reused}

    data.write_text(_reviews(200))  # new rows arrived
    third = _retrain(team, spec)
    assert not any(k.startswith("multistep.reused.") for k in mlflow.get_run(third).data.tags)
    new = mlflow.get_model_version("retrained", "2")
    assert new.tags["multistep.input.model"] == "models:/retrained/1"  # fine-tuned from the champion
    # The champion already classifies every new review right, so no challenger can gain on it: rejected, champion stays.
    assert float(new.tags["gate.champion_value"]) == 1.0 and float(new.tags["gate.delta"]) <= 0
    assert new.tags["gate.decision"] == "rejected" and "is not above min_delta 0" in new.tags["gate.reason"]
    assert mlflow.get_model_version_by_alias("retrained", "champion").version in ("1", 1)
    assert mlflow.get_model_version_by_alias("retrained", "challenger").version in ("2", 2)
    # Both workers' flow runs started forked from the fork server beside them, past the imports (flows/forkserver.py).
    for worker in ("worker-cpu", "worker-gpu"):
        assert "forkserver: flow run" in (team.root / "logs" / f"{worker}.log").read_text(), worker


def _retrain(team, spec: dict) -> str:
    """Run the scheduled retraining deployment now, as its schedule would; returns the pipeline's MLflow run id."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    with stack.environ(team.env):
        run = run_deployment(
            "retrain/sst2-minilm-weekly", parameters={"spec": spec}, timeout=480, poll_interval=1, as_subflow=False
        )
        assert run.state.is_completed(), run.state
        with get_client(sync_client=True) as client:
            tags = client.read_flow_run(run.id).tags
    (mlflow_run,) = [t.removeprefix("mlflow-run:") for t in tags if t.startswith("mlflow-run:")]
    return mlflow_run


def _reviews(n: int) -> str:
    rng = random.Random(n)
    good, bad = ["great", "lovely", "superb"], ["awful", "dull", "poor"]
    rows = ["sentence\tlabel"]
    for i in range(n):
        label = i % 2
        rows.append(f"{rng.choice(good if label else bad)} film number {i}\t{label}")
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("problem", ["missing pool", "unreachable endpoint", "wrong credentials"])
def test_bad_configuration_ends_in_one_sentence_and_registers_nothing(
    problem, team, tmp_path, corpus, tiny_overrides, run_cli
):
    from prefect.blocks.system import Secret

    extra = {"missing pool": ["execution.pools.gpu=nope"]}.get(problem, ["execution.s3_secret=broken-s3"])
    if problem != "missing pool":
        keys = {"aws_access_key_id": team.access_key, "aws_secret_access_key": team.secret_key}
        if problem == "unreachable endpoint":
            keys["endpoint_url"] = f"http://127.0.0.1:{stack.free_ports().s3}"
        else:
            keys["aws_secret_access_key"] = "not-the-secret"
        with stack.environ(team.env):
            Secret(value=keys).save("broken-s3", overwrite=True)
    name = "bad-" + problem.replace(" ", "-")
    done = cli(team, tiny_pools(corpus, tiny_overrides, f"name={name}", *extra), tmp_path / "client", run_cli)
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    expected = {
        "missing pool": "work pool 'nope' (execution.pools.gpu) does not exist",
        "unreachable endpoint": "cannot reach the S3 endpoint",
        "wrong credentials": "S3 refused the credentials",
    }[problem]
    assert error.startswith("error: ") and expected in error, error
    assert "not-the-secret" not in done.stdout + done.stderr and team.secret_key not in done.stdout + done.stderr
    assert MlflowClient(team.env["MLFLOW_TRACKING_URI"]).search_model_versions(f"name = '{name}-base'") == []


def test_a_sweep_runs_its_cells_side_by_side_on_two_gpu_workers(team, tmp_path, run_cli):
    """Two cells, one gpu stage each: with two cards (pool limit 2, two workers) their fine-tunes run at the same time."""
    data = tmp_path / "reviews.tsv"
    data.write_text(_reviews(80))
    base = {
        "name": "swept", "data": None, "pretrain": None, "evaluate": None, "gate": None,
        "labeled": {"task": "classification", "train": [str(data)], "text_column": "sentence", "split": {"validation": 0.2, "test": 0.2}},
        "finetune": {"init": str(_tiny_bert(tmp_path / "bert")), "max_length": 16, "patience": None,
                     "train": {"max_steps": 200, "batch_size": 8, "warmup_steps": 0, "checkpoint_every": 200}},
        "execution": {"mode": "pools", "start_timeout_s": 120},
    }  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": base, "seeds": [0, 1], "seed_fields": ["finetune.train.seed"]}))
    with stack.environ(team.env):
        deploy.ensure_pools(gpus=2)
    # Each fine-tune waits (up to 180 s) before its first step until both have started: on a loaded machine one cell's
    # fine-tune may be dispatched late, and only a pool that lets two run at once lets the first one meet the second.
    met = tmp_path / "met"
    meet = {"MULTISTEP_FAULT_MEET": f"{met}:2"}
    stack.kill(team, "worker-gpu")
    team.start_worker("gpu", limit=1, env=meet)
    team.start_worker("gpu", limit=1, name="worker-gpu-2", env=meet)
    team.wait_forkservers("worker-gpu", "worker-gpu-2")
    try:
        done = cli(team, ["sweep", str(path), "--json"], tmp_path / "client", run_cli)
    finally:
        stack.kill(team, "worker-gpu-2")
        stack.kill(team, "worker-gpu")
        team.start_worker("gpu", limit=1)
        with stack.environ(team.env):
            deploy.ensure_pools(gpus=1)
        team.wait_forkservers("worker-gpu")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(c["seed"], c["status"]) for c in report["cells"]] == [(0, "completed"), (1, "completed")]

    mlflow = MlflowClient(team.env["MLFLOW_TRACKING_URI"])
    finetunes, prepared, reused = [], [], []
    for cell in report["cells"]:
        flow_run = mlflow.get_run(cell["pipeline_run"]).data.tags["prefect.flow_run_id"]
        finetunes += [run for flow, run in stage_runs(team, flow_run) if flow == "finetune"]
        prepared += [run for flow, run in stage_runs(team, flow_run) if flow == "prepare-labeled"]
        reused += [mlflow.get_run(cell["pipeline_run"]).data.tags.get(f"{REUSED}prepare-labeled")]
    # The cells' shared data preparation went to a worker once; the other cell names that stage run as a cache hit
    assert len(prepared) == 1, [r.name for r in prepared]
    experiment = mlflow.get_run(cell["pipeline_run"]).info.experiment_id
    made = mlflow.search_runs([experiment], f"tags.`prefect.flow_run_id` = '{prepared[0].id}'")
    assert len(made) == 1 and made[0].data.tags[STAGE] == "prepare-labeled"
    assert len(reused) == 2 and set(reused) == {None, made[0].info.run_id}
    first, second = sorted(finetunes, key=lambda r: r.start_time)
    assert first.work_pool_name == second.work_pool_name == "gpu"
    # A worker took the second while the first still ran: the pool let both run at once.
    assert len(list(met.iterdir())) == 2
    taken = _taken(team, second)
    assert taken < first.end_time, (
        f"the second cell's fine-tune was taken by a worker only after the first one ended: first "
        f"{first.start_time}–{first.end_time}, second taken {taken}"
    )
    assert first.infrastructure_pid != second.infrastructure_pid
    # The workers are flows/worker.py's, built by Prefect's CLI for --type process: quiet while full, listening while idle
    log = (team.root / "logs" / "worker-gpu-2.log").read_text()
    assert f"worker: worker-gpu-2 polls every {BUSY_POLL_S:.0f} s while every slot is busy" in log
    assert f"worker: worker-gpu-2 wakes on its pool's flow-run events, else polls every {IDLE_POLL_S:.0f} s" in log


def _taken(team, run):
    """When a worker took the flow run `run` (its Pending state)."""
    from prefect import get_client

    with stack.environ(team.env), get_client(sync_client=True) as client:
        return next(s.timestamp for s in client.read_flow_run_states(run.id) if s.type.value == "PENDING")


def _tiny_bert(path: Path) -> Path:
    """A one-layer BERT classifier over the reviews' words, kilobytes instead of MiniLM's 90 MB on every worker."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path.mkdir()
    (path / "vocab.txt").write_text(
        "\n".join(
            [
                "[PAD]",
                "[UNK]",
                "[CLS]",
                "[SEP]",
                "[MASK]",
                "great",
                "lovely",
                "superb",
                "awful",
                "dull",
                "poor",
                "film",
                "number",
            ]
        )
        + "\n"
    )
    tok = BertTokenizerFast.from_pretrained(path)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path
