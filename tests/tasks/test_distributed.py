"""Training on several devices: `train.devices=2` runs torchrun with two CPU processes (gloo), resumes after a crash, and registers once."""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tasks import backend, distributed, tracking
from tasks.errors import UserError
from tasks.pretrain import stage as pretrain
from tasks.pretrain.spec import PretrainSpec
from tasks.spec import TrainSpec


def stage_run(home: Path, name: str, version: str = "1"):
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    return client, client.get_run(client.get_model_version(name, version).run_id)


def test_two_processes_pretrain_and_classify_and_resume_after_a_crash(
    tmp_path, corpus, sentiment, tiny_overrides, run_cli, registered_versions
):
    overrides = tiny_overrides(corpus, steps=6) + [
        "pretrain.train.devices=2", "execution.stage_retries=0",
        "labeled.task=classification", f"labeled.train=[{sentiment}]", "labeled.text_column=sentence",
        "labeled.split.validation=0.2", "labeled.split.test=0.2", "finetune.train.devices=2",
        "finetune.train.max_steps=12", "finetune.train.batch_size=16", "finetune.train.lr=0.003",
        "finetune.train.warmup_steps=0", "finetune.train.checkpoint_every=6", "finetune.train.log_every=5",
        "finetune.max_length=16",
    ]  # fmt: skip
    args = ["run", "configs/default.yaml", *sum((["--set", o] for o in overrides), [])]
    home = tmp_path / "home"

    # Both ranks die at step 5, after checkpoint-3 was published: a failure the pipeline may dispatch again (not an input error).
    crashed = run_cli(args, home, MULTISTEP_FAULT_KILL_AT_STEP="5")
    said = crashed.stdout + crashed.stderr
    assert crashed.returncode == 1, said[-3000:]
    assert (
        "RuntimeError: pretrain: training on 2 devices failed (torchrun exit 1); see the log above, or set pretrain.train.devices=1"
        in said
    )
    assert "pretrain: no CUDA device on this worker: 2 processes train on the CPU (gloo backend)" in said
    assert registered_versions(home) == []

    resumed = run_cli(args, home)
    said = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, said[-3000:]
    assert "pretrain: resuming unfinished run" in said and "pretrain: resuming from checkpoint-3" in said
    assert said.count("2 processes train together (DDP, gloo backend)") == 2  # pretrain and finetune
    assert sorted((v.name, int(v.version)) for v in registered_versions(home)) == [("tiny", 1), ("tiny-base", 1)]

    client, base = stage_run(home, "tiny-base")
    assert base.data.params["world_size"] == "2"
    assert base.data.metrics["resumed_from_step"] == 3 and base.data.metrics["train_seconds"] > 0
    assert [m.step for m in client.get_metric_history(base.info.run_id, "loss")][-1] == 6

    client, tuned = stage_run(home, "tiny")
    assert tuned.data.params["world_size"] == "2"
    # Every rank logs the last step (12, no multiple of log_every 5), where Trainer gathers the loss across ranks: a rank
    # that skipped it would fail the others. Only rank 0 says so, in the stage's log.
    assert [m.step for m in client.get_metric_history(tuned.info.run_id, "loss")] == [5, 10, 12]
    assert said.count("finetune: step 12/12 loss ") == 1 and said.count("finetune: step 12/12 saved checkpoint-12") == 1
    first_loss = client.get_metric_history(tuned.info.run_id, "loss")[0].value
    # A fresh two-label head starts near ln 2; a loss scaled by the world size (a Trainer pitfall) would start near 1.39.
    assert first_loss < 1.0, first_loss
    # The stage process scored the weights the ranks trained: better than chance on a separable set.
    assert tuned.data.metrics["validation_accuracy"] > 0.6


def test_devices_below_one_are_refused_by_the_spec():
    from flows.spec import load

    with pytest.raises(
        UserError, match=r"`pretrain.train.devices` Input should be greater than or equal to 1 \(got 0\)"
    ):
        load("configs/default.yaml", ["pretrain.train.devices=0"])


def test_more_devices_than_the_worker_has_gpus_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        UserError,
        match=r"finetune.train.devices is 2 but this worker has 1 CUDA device\(s\): set finetune.train.devices to at most 1",
    ):
        distributed.check(TrainSpec(devices=2), "finetune")
    distributed.check(TrainSpec(devices=1, sharding="fsdp"), "finetune")  # one device: nothing to launch


def test_fsdp_without_cuda_is_refused_before_anything_loads(home, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend.configure("multistep")
    ctx = tracking.StageRun("pretrain", "no-run", "no-key", "no-code", {}, {}, None, resumed=False)
    spec = PretrainSpec(train=TrainSpec(devices=2, sharding="fsdp"))
    # The dataset URI is never read: the stage refuses first.
    with pytest.raises(
        UserError,
        match="pretrain.train.sharding fsdp needs CUDA devices and this worker has none: set pretrain.train.sharding to ddp",
    ):
        pretrain.run(spec, "runs:/missing/dataset", "tiny-base", ctx)
