"""A worker dies mid-training (SIGKILL, which Prefect cannot retry): the same command resumes and ends identically,
also when it died after the last step's checkpoint, which is published without the optimizer's state."""

import signal
from pathlib import Path

import torch
from safetensors.torch import load_file


def registered_weights(home: Path) -> dict[str, torch.Tensor]:
    (path,) = home.glob("artifacts/**/artifacts/model/model.safetensors")
    return load_file(path)


def test_sigkill_after_a_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(
    tmp_path, corpus, tiny_overrides, run_cli, start_cli, registered_versions
):
    overrides = tiny_overrides(corpus, steps=8) + [
        "pretrain.train.deterministic=true",
        "pretrain.model.dropout=0.1",  # dropout makes the RNG state part of what a resume must restore
        "pretrain.train.checkpoint_every=3",
    ]
    args = ["run", "configs/default.yaml", *sum((["--set", o] for o in overrides), [])]

    whole = run_cli(args, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    crashed_home = tmp_path / "crashed"
    killed = run_cli(args, crashed_home, MULTISTEP_FAULT_KILL_AT_STEP="5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert registered_versions(crashed_home) == []

    # Resumed from step 3, killed again after the checkpoint of the last step (8) is in the store, before registering.
    held = start_cli(args, crashed_home, MULTISTEP_FAULT_HOLD_AT_STEP="8")
    held.wait_for("fault injection: holding after checkpoint-8")
    said = held.out.read_text() + held.err.read_text()
    assert "prepare: cache hit" in said
    assert "pretrain: resuming unfinished run" in said
    assert "pretrain: resuming from checkpoint-3" in said
    held.proc.send_signal(signal.SIGKILL)
    held.proc.wait()
    assert registered_versions(crashed_home) == []
    last = next(crashed_home.glob("artifacts/**/checkpoints/checkpoint-8"))
    assert (last / "model.safetensors").is_file() and not (last / "optimizer.pt").exists()

    resumed = run_cli(args, crashed_home)
    said = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, said[-3000:]
    assert "pretrain: resuming from checkpoint-8" in said

    assert len(registered_versions(crashed_home)) == 1
    expected, got = registered_weights(tmp_path / "whole"), registered_weights(crashed_home)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
