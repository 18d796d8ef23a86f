"""The Trainer callbacks of every training stage: metrics into MLflow, checkpoints into the artifact store, stops on
a signal, and the faults that tests inject."""

import contextvars
import functools
import os
import shutil
import signal
import threading
import time

import torch
from transformers import TrainerCallback

from tasks import interrupt, storage
from tasks.progress import say
from tasks.tracking import log_metrics

# Tests set this to SIGKILL the training process at a given step (a crash Prefect cannot retry).
FAULT_ENV = "MULTISTEP_FAULT_KILL_AT_STEP"
HOLD_ENV = "MULTISTEP_FAULT_HOLD_AT_STEP"
# "<folder>:<n>": training starts only once n processes have come to that folder (or MEET_TIMEOUT_S passed), so a test
# sees training runs overlap however late a loaded machine dispatched one of them.
MEET_ENV = "MULTISTEP_FAULT_MEET"
MEET_TIMEOUT_S = 180


class MlflowMetrics(TrainerCallback):
    """Loss, learning rate and tokens/s into the open stage run."""

    def __init__(self, run_id: str, tokens_per_step: int):
        self.run_id, self.tokens_per_step = run_id, tokens_per_step
        self.last_time, self.last_step = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = time.perf_counter()
        metrics = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) and k != "epoch"}
        if state.global_step > self.last_step and "loss" in metrics:
            metrics["tokens_per_second"] = (
                self.tokens_per_step * (state.global_step - self.last_step) / (now - self.last_time)
            )
            self.last_time, self.last_step = now, state.global_step
        if metrics:
            log_metrics(self.run_id, metrics, step=state.global_step)


SPENT_AT_THE_END = ("optimizer*", "scheduler*", "scaler*")


class PublishCheckpoints(TrainerCallback):
    """Copy each checkpoint the Trainer writes into the artifact store, where only complete ones are visible (rank 0 only).

    The copy runs beside training (to S3 it takes seconds per checkpoint, all of it waiting on the network): a save
    first waits for the copy before it, so one is in flight at most, and `wait()` settles the last before the stage
    relies on the store (resume, register, stop). A crash mid-copy loses that checkpoint only: it never looks complete.
    """

    def __init__(self, dest: str, keep: int, stage: str):
        self.dest, self.keep, self.stage = dest, keep, stage
        self.in_flight: threading.Thread | None = None
        self.failure: BaseException | None = None

    def on_save(self, args, state, control, **kwargs):
        # Every rank writes its own part (its RNG state; its shards under FSDP): copy the folder once all are on disk.
        barrier()
        if not state.is_world_process_zero:
            return
        self.wait()
        name = f"checkpoint-{state.global_step}"
        # Hard links: Trainer deletes this folder when it rotates checkpoints, maybe before the copy has read it.
        snapshot = os.path.join(args.output_dir, ".publishing", name)
        shutil.rmtree(snapshot, ignore_errors=True)
        # At the last step the optimizer's and scheduler's state can never be used again (a resume from this checkpoint
        # loads the weights and has no step left; Trainer loads those files only when present): with Adam that is two
        # thirds of the checkpoint, so it does not travel to the store.
        last = state.max_steps > 0 and state.global_step >= state.max_steps
        spent = shutil.ignore_patterns(*SPENT_AT_THE_END) if last else None
        shutil.copytree(os.path.join(args.output_dir, name), snapshot, copy_function=_link_or_copy, ignore=spent)
        said = f"{self.stage}: step {state.global_step}/{state.max_steps} saved {name} to {self.dest}/{name}"
        # In a copy of this context, so that the line reaches the Prefect run's log like the others.
        run = functools.partial(contextvars.copy_context().run, self._publish, snapshot, name, said)
        self.in_flight = threading.Thread(target=run, name=f"publish-{name}")
        self.in_flight.start()

    def _publish(self, snapshot: str, name: str, said: str) -> None:
        try:
            storage.publish_dir(snapshot, f"{self.dest}/{name}")
            for old in storage.list_complete(self.dest)[: -self.keep]:
                storage.remove_dir(old)
            say(said)
        except BaseException as exc:  # raised in the training thread by wait()
            self.failure = exc
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def wait(self) -> None:
        """Until the checkpoint in flight is in the store; its failure, if it failed, is raised here."""
        if self.in_flight is not None:
            self.in_flight.join()
            self.in_flight = None
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


class StopOnInterrupt(TrainerCallback):
    """After Ctrl-C or SIGTERM (tasks/interrupt.py) end training at this step's boundary, with a checkpoint published like any other."""

    def __init__(self):
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if interrupt.requested():
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step


class FaultInjection(TrainerCallback):
    """SIGKILL this process at step $MULTISTEP_FAULT_KILL_AT_STEP, as a dying worker would; or, for a test that kills or
    interrupts the process itself, hold still after the checkpoint of step $MULTISTEP_FAULT_HOLD_AT_STEP has been published.

    Either waits for the checkpoint in flight first: a test knows which checkpoints a crash left (a real crash may
    also lose the one being copied, and resumes from the one before). $MULTISTEP_FAULT_MEET makes training processes
    wait for each other before their first step."""

    def __init__(self, publisher: PublishCheckpoints):
        self.publisher = publisher

    def on_train_begin(self, args, state, control, **kwargs):
        if meet := os.environ.get(MEET_ENV):
            folder, n = meet.rsplit(":", 1)
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, str(os.getpid())), "w").close()
            deadline = time.monotonic() + MEET_TIMEOUT_S
            while len(os.listdir(folder)) < int(n) and time.monotonic() < deadline:
                time.sleep(0.1)
            print(f"fault injection: {len(os.listdir(folder))} of {n} training processes met in {folder}")

    def on_step_end(self, args, state, control, **kwargs):
        if os.environ.get(FAULT_ENV) == str(state.global_step):
            self.publisher.wait()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_save(self, args, state, control, **kwargs):
        # Runs after PublishCheckpoints.on_save (added before this callback), which started the copy.
        if os.environ.get(HOLD_ENV) == str(state.global_step):
            self.publisher.wait()
            print(
                f"fault injection: holding after checkpoint-{state.global_step} until this process is killed or interrupted"
            )
            interrupt.wait()


def settle(publisher: PublishCheckpoints) -> None:
    """Wait for the checkpoint in flight while another error is on its way up; its own failure is only said."""
    try:
        publisher.wait()
    except Exception as exc:  # noqa: BLE001 - the training error is the one to raise
        print(f"warning: the last checkpoint could not be published either ({type(exc).__name__}: {exc})")


def distributed_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    if distributed_on():
        torch.distributed.barrier()
