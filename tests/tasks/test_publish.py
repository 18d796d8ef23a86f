"""Checkpoints are copied into the store beside training: a save does not wait for its own copy, the next save and the
end of training do, a copy survives Trainer deleting the folder, and a failed copy is raised in the training thread."""

import threading
from types import SimpleNamespace

import pytest

from tasks import storage
from tasks.callbacks import PublishCheckpoints


def saved(out, step: int):
    """What Trainer leaves when it saves at `step`: the folder, and the state on_save is called with."""
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes([step]) * 1000)
    return SimpleNamespace(output_dir=str(out)), SimpleNamespace(
        global_step=step, max_steps=9, is_world_process_zero=True
    )


@pytest.fixture
def held(monkeypatch):
    """storage.publish_dir that waits for the test to let it go; yields (the gate, the copies started)."""
    gate, started, real = threading.Event(), [], storage.publish_dir

    def publish(src, dest):
        started.append(dest.rsplit("/", 1)[-1])
        assert gate.wait(30), "the test never let the copy go"
        return real(src, dest)

    monkeypatch.setattr(storage, "publish_dir", publish)
    return gate, started


def test_a_save_returns_while_its_copy_runs_and_the_copy_is_whole_after_trainer_deleted_the_folder(tmp_path, held):
    gate, started = held
    store, out = tmp_path / "store", tmp_path / "work"
    publisher = PublishCheckpoints(str(store), keep=2, stage="finetune")
    args, state = saved(out, 3)
    publisher.on_save(args, state, None)  # returns at once although the copy cannot finish yet
    assert storage.list_complete(str(store)) == []
    for file in (out / "checkpoint-3").iterdir():  # Trainer's rotation, before the copy has read anything
        file.unlink()
    (out / "checkpoint-3").rmdir()
    gate.set()
    publisher.wait()
    assert storage.list_complete(str(store)) == [f"{store}/checkpoint-3"]
    assert (store / "checkpoint-3" / "model.safetensors").read_bytes() == bytes([3]) * 1000
    assert not (out / ".publishing" / "checkpoint-3").exists()  # the snapshot is gone with the copy
    assert started == ["checkpoint-3"]


def test_the_next_save_waits_for_the_copy_before_it_and_old_checkpoints_are_dropped(tmp_path, held):
    gate, started = held
    store, out = tmp_path / "store", tmp_path / "work"
    publisher = PublishCheckpoints(str(store), keep=1, stage="finetune")
    publisher.on_save(*saved(out, 3), None)
    second = threading.Thread(target=publisher.on_save, args=(*saved(out, 6), None))
    second.start()
    second.join(0.5)
    assert second.is_alive() and started == ["checkpoint-3"]  # one copy in flight at most
    gate.set()
    second.join(30)
    publisher.wait()
    assert started == ["checkpoint-3", "checkpoint-6"]
    assert storage.list_complete(str(store)) == [f"{store}/checkpoint-6"]  # keep=1


def test_a_failed_copy_is_raised_where_training_waits_for_it(tmp_path, monkeypatch):
    def broken(src, dest):
        raise OSError("the store is full")

    monkeypatch.setattr(storage, "publish_dir", broken)
    publisher = PublishCheckpoints(str(tmp_path / "store"), keep=1, stage="finetune")
    publisher.on_save(*saved(tmp_path / "work", 3), None)
    with pytest.raises(OSError, match="the store is full"):
        publisher.wait()
    publisher.wait()  # said once: a later wait has nothing left to raise


def test_the_last_steps_checkpoint_goes_to_the_store_without_the_optimizer_state_nothing_can_use(tmp_path):
    store, out = tmp_path / "store", tmp_path / "work"
    publisher = PublishCheckpoints(str(store), keep=2, stage="finetune")
    for step in (3, 9):  # max_steps is 9
        args, state = saved(out, step)
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
            (out / f"checkpoint-{step}" / name).write_bytes(b"state")
        publisher.on_save(args, state, None)
        publisher.wait()
    middle, last = ({p.name for p in (store / f"checkpoint-{step}").iterdir()} for step in (3, 9))
    assert {"optimizer.pt", "scheduler.pt"} <= middle  # a resume from step 3 needs them
    assert "optimizer.pt" not in last and "scheduler.pt" not in last
    assert {"model.safetensors", "rng_state.pth", "trainer_state.json"} <= last
