"""Resuming from checkpoints: a checkpoint that does not load safely is quarantined, said once, and the previous one used."""

import json
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tasks import checkpoints, s3, storage

STAMP = r"\d{8}T\d{6}Z"


class RunsCode:
    """Unpickling this calls os.system: what a poisoned state file would do if it were loaded with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def trainer_checkpoint(folder: Path, step: int) -> Path:
    """The files Trainer writes into checkpoint-<step>, with the types it writes (numpy RNG state included)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.full((2, 2), float(step))}, folder / "model.safetensors")
    torch.save(
        {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        folder / "optimizer.pt",
    )
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()},
        folder / "rng_state.pth",
    )
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    torch.save(RunsCode(folder / "never"), folder / "training_args.bin")  # a full pickle Trainer never reads back
    return folder


def store_of(tmp_path: Path, steps=(3, 6)) -> Path:
    parent = tmp_path / "store" / "checkpoints"
    for step in steps:
        storage.publish_dir(
            trainer_checkpoint(tmp_path / "written" / f"checkpoint-{step}", step), str(parent / f"checkpoint-{step}")
        )
    return parent


def test_the_newest_checkpoint_that_loads_is_used_and_nothing_is_said(tmp_path, capsys):
    parent = store_of(tmp_path)
    assert checkpoints.resume_point(str(parent), str(tmp_path / "work"), "pretrain", "r1") == str(
        parent / "checkpoint-6"
    )
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "written" / "checkpoint-3" / "never").exists()  # training_args.bin was not unpickled


POISONS = {
    "code in optimizer.pt": (
        "optimizer.pt",
        "torch.save",
        "optimizer.pt: it would call posix.system when unpickled, which is refused",
    ),
    "code in scheduler.pt": (
        "scheduler.pt",
        "pickle",
        "scheduler.pt: it would call posix.system when unpickled, which is refused",
    ),
    "garbage rng_state.pth": (
        "rng_state.pth",
        b"garbage" * 40,
        "rng_state.pth: it is not a state file that torch.save wrote, or it is damaged",
    ),
    "garbage weights": (
        "model.safetensors",
        b"\x00" * 64,
        "model.safetensors: SafetensorError: Error while deserializing header: ",
    ),
    "no weights": ("model.safetensors", "delete", "it holds no model weights"),
    "pickled weights": (
        "model.safetensors",
        "pytorch_model.bin",
        "its model weights are a pickle (pytorch_model.bin), not safetensors",
    ),
    "torn trainer_state.json": (
        "trainer_state.json",
        b'{"global_step": ',
        "trainer_state.json: JSONDecodeError: Expecting value: line 1 column 17 (char 16)",
    ),
}


@pytest.mark.parametrize("poison", POISONS, ids=list(POISONS))
def test_a_checkpoint_that_does_not_load_is_quarantined_and_the_previous_one_used(tmp_path, capsys, poison):
    parent = store_of(tmp_path)
    work = tmp_path / "work"
    trainer_checkpoint(work / "checkpoint-6", 6)  # Trainer's own copy in the run's scratch folder
    file, content, reason = POISONS[poison]
    target = parent / "checkpoint-6" / file
    target.unlink()  # a new file, as an attacker would drop in (the published one is a hard link of Trainer's)
    if content == "torch.save":
        torch.save(RunsCode(tmp_path / "pwned"), target)
    elif content == "pickle":
        target.write_bytes(pickle.dumps(RunsCode(tmp_path / "pwned"), protocol=2))
    elif content == "pytorch_model.bin":
        # loads with weights_only=True, but is no safetensors
        torch.save({"w": torch.zeros(2, 2)}, target.with_name(content))
    elif content != "delete":
        target.write_bytes(content)

    assert checkpoints.resume_point(str(parent), str(work), "pretrain", "r1") == str(parent / "checkpoint-3")

    assert not (tmp_path / "pwned").exists()
    (line,) = capsys.readouterr().out.splitlines()
    moved = re.fullmatch(
        rf"pretrain: checkpoint-6 of run r1 cannot be loaded \({re.escape(reason)}.*\); moved aside as (quarantined-checkpoint-6-{STAMP}), resuming from checkpoint-3 instead",
        line,
    )
    assert moved, line
    assert "weights_only" not in line
    assert storage.list_complete(str(parent)) == [str(parent / "checkpoint-3")]
    assert sorted(p.name for p in parent.iterdir()) == ["checkpoint-3", moved.group(1)]
    assert sorted(p.name for p in work.iterdir()) == [moved.group(1)]


def test_when_no_checkpoint_loads_training_starts_from_scratch(tmp_path, capsys):
    parent = store_of(tmp_path)
    for step in (3, 6):
        (parent / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"garbage")
    assert checkpoints.resume_point(str(parent), str(tmp_path / "work"), "pretrain", "r1") is None
    lines = capsys.readouterr().out.splitlines()
    assert [re.sub(STAMP, "T", line) for line in lines] == [
        f"pretrain: checkpoint-{step} of run r1 cannot be loaded (optimizer.pt: it is not a state file that torch.save wrote, "
        f"or it is damaged); moved aside as quarantined-checkpoint-{step}-T, training from scratch"
        for step in (6, 3)
    ]
    assert storage.list_complete(str(parent)) == []


def test_a_poisoned_checkpoint_in_s3_is_moved_aside_there_and_in_the_download(s3_bucket, tmp_path, capsys):
    parent = f"{s3_bucket}/run/checkpoints"
    for step in (3, 6):
        storage.publish_dir(
            trainer_checkpoint(tmp_path / "written" / f"checkpoint-{step}", step), f"{parent}/checkpoint-{step}"
        )
    bucket = s3.split_s3(s3_bucket)[0]
    s3.s3_client().put_object(
        Bucket=bucket,
        Key="run/checkpoints/checkpoint-6/optimizer.pt",
        Body=pickle.dumps(RunsCode(tmp_path / "pwned"), protocol=2),
    )
    work = tmp_path / "work"

    assert checkpoints.resume_point(parent, str(work), "pretrain", "r1") == str(work / "checkpoint-3")

    assert not (tmp_path / "pwned").exists()
    moved = re.search(
        rf"moved aside as (quarantined-checkpoint-6-{STAMP}), resuming from checkpoint-3 instead",
        capsys.readouterr().out,
    ).group(1)
    assert storage.list_complete(parent) == [f"{parent}/checkpoint-3"]
    assert s3.list_s3(f"{parent}/checkpoint-6") == []
    names = [
        "model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
        "training_args.bin",
    ]
    assert s3.list_s3(f"{parent}/{moved}") == [f"{parent}/{moved}/{n}" for n in names]  # no _COMPLETE marker
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-3", moved]
