"""A checkpoint whose optimizer state was replaced by a pickle that would run code: the rerun runs no code, says so in one
line, quarantines it, resumes from the previous checkpoint and registers exactly one version."""

import os
import re
import signal
from pathlib import Path


class RunsCode:
    """Unpickling this calls os.system (what `torch.load(weights_only=False)` would do with it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_poisoned_checkpoint_is_quarantined_and_the_stage_resumes_from_the_previous_one(
    tmp_path, corpus, tiny_overrides, run_cli, registered_versions
):
    import torch

    home = tmp_path / "home"
    args = ["run", "configs/default.yaml", *sum((["--set", o] for o in tiny_overrides(corpus, steps=8)), [])]
    killed = run_cli(args, home, MULTISTEP_FAULT_KILL_AT_STEP="7")  # after checkpoint-3 and checkpoint-6
    assert killed.returncode == -signal.SIGKILL
    (store,) = home.glob("artifacts/*/artifacts/checkpoints")
    assert sorted(p.name for p in store.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    run_id = store.parent.parent.name
    poisoned = store / "checkpoint-6" / "optimizer.pt"
    poisoned.unlink()  # the published file is a hard link of the Trainer's own copy: replace it, as an attacker would
    torch.save(RunsCode(tmp_path / "pwned"), poisoned)

    rerun = run_cli(args, home)
    said = rerun.stdout + rerun.stderr

    assert rerun.returncode == 0, said[-3000:]
    assert not (tmp_path / "pwned").exists()
    # Said once (the resumed training's own "saved checkpoint-6" progress line aside).
    lines = [line for line in said.splitlines() if "checkpoint-6" in line and "saved checkpoint-6" not in line]
    assert len(lines) == 1, lines
    assert re.search(
        rf"pretrain: checkpoint-6 of run {run_id} cannot be loaded \(optimizer\.pt: it would call posix\.system when unpickled, "
        rf"which is refused\); moved aside as quarantined-checkpoint-6-\d{{8}}T\d{{6}}Z, resuming from checkpoint-3 instead$",
        lines[0],
    ), lines[0]
    assert f"pretrain: resuming from checkpoint-3 of run {run_id}" in said
    assert "Traceback" not in said and "weights_only" not in said and "attempt 1 failed" not in said
    assert [(v.name, int(v.version)) for v in registered_versions(home)] == [("tiny-base", 1)]
    # The finished stage deletes its checkpoints; the quarantined one stays for whoever looks into it.
    assert [p.name for p in store.iterdir()] == [re.search(r"quarantined-checkpoint-6-\w+", lines[0]).group(0)]
