"""Trainer setup shared by every training stage: arguments, MLflow logging, checkpoints, resume, fault injection."""

import functools
import os
import shutil
import signal
import time

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tasks import interrupt, storage
from tasks.backend import home
from tasks.checkpoints import resume_point
from tasks.metrics import curves_figure
from tasks.progress import Progress
from tasks.spec import TrainSpec
from tasks.tracking import StageRun, log_metrics

# Tests set this to SIGKILL the training process at a given step (a crash Prefect cannot retry).
FAULT_ENV = "MULTISTEP_FAULT_KILL_AT_STEP"
HOLD_ENV = "MULTISTEP_FAULT_HOLD_AT_STEP"

# TrainSpec.sharding fsdp: FSDP2, each transformer block (the classes a model lists as `_no_split_modules`) its own
# unit, resharded after forward (FULL_SHARD); checkpoints and the final model hold the full weights, gathered on rank 0.
FSDP_CONFIG = {
    "version": 2,
    "reshard_after_forward": True,
    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "state_dict_type": "FULL_STATE_DICT",
}


class BlockDataset(torch.utils.data.Dataset):
    """Packed blocks [n, block_size] as causal-LM examples (labels = input_ids, the model shifts them), or bare for an MLM collator."""

    def __init__(self, blocks: np.ndarray, labels: bool = True):
        self.blocks, self.labels = torch.from_numpy(blocks.astype(np.int64)), labels

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]} if self.labels else {"input_ids": self.blocks[i]}


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


class PublishCheckpoints(TrainerCallback):
    """Copy each checkpoint the Trainer writes into the artifact store, where only complete ones are visible (rank 0 only)."""

    def __init__(self, dest: str, keep: int):
        self.dest, self.keep = dest, keep

    def on_save(self, args, state, control, **kwargs):
        # Every rank writes its own part (its RNG state; its shards under FSDP): copy the folder once all are on disk.
        _barrier()
        if not state.is_world_process_zero:
            return
        name = f"checkpoint-{state.global_step}"
        storage.publish_dir(os.path.join(args.output_dir, name), f"{self.dest}/{name}")
        for old in storage.list_complete(self.dest)[: -self.keep]:
            storage.remove_dir(old)


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
    interrupts the process itself, hold still after the checkpoint of step $MULTISTEP_FAULT_HOLD_AT_STEP has been published."""

    def on_step_end(self, args, state, control, **kwargs):
        if os.environ.get(FAULT_ENV) == str(state.global_step):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_save(self, args, state, control, **kwargs):
        # Runs after PublishCheckpoints.on_save (added before this callback): the checkpoint is complete in the store.
        if os.environ.get(HOLD_ENV) == str(state.global_step):
            print(
                f"fault injection: holding after checkpoint-{state.global_step} until this process is killed or interrupted"
            )
            interrupt.wait()


@functools.cache
def compile_failure() -> str | None:
    """Why torch.compile cannot work in this process (no C++ compiler for inductor, an unsupported Python ...), or None.

    A small function is compiled and run once per process: Trainer compiles the model lazily, and a machine without a
    toolchain would otherwise fail at the first training step."""
    try:
        torch.compile(lambda x: torch.nn.functional.gelu(x) * 2)(torch.ones(8))
    except Exception as exc:  # whatever inductor, dynamo or the toolchain raise: the fallback is the same
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    return None


def arguments(spec: TrainSpec, output_dir: str, **overrides) -> TrainingArguments:
    """TrainingArguments from the spec with fast defaults (fused AdamW, SDPA set on the model, no workers)."""
    cuda = torch.cuda.is_available()
    compiled = spec.compile and compile_failure() is None
    if spec.compile and not compiled:
        print(
            f"warning: train.compile is on, but torch.compile fails here ({compile_failure()}): training runs eagerly"
        )
    kwargs = dict(
        output_dir=output_dir,
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.lr,
        lr_scheduler_type=spec.schedule,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        optim="adamw_torch_fused",
        logging_steps=spec.log_every,
        save_strategy="steps",
        save_steps=spec.checkpoint_every,
        save_total_limit=1,
        seed=spec.seed,
        data_seed=spec.seed,
        full_determinism=spec.deterministic,
        bf16=spec.precision == "bf16",
        fp16=spec.precision == "fp16",
        torch_compile=compiled,
        use_cpu=not cuda,
        report_to="none",
        # Our datasets hold exactly the model's inputs; dropping "unused" columns has silently broken labels before (DESIGN §5).
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_only_model=False,
    )
    # Only a torchrun rank trains distributed; the stage process that launched the ranks (and evaluates after them) does not.
    if spec.devices > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs["ddp_backend"] = "nccl" if cuda else "gloo"
        if spec.sharding == "fsdp":
            kwargs.update(fsdp=True, fsdp_config=dict(FSDP_CONFIG))  # a copy: TrainingArguments edits it
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def fit(trainer: Trainer, ctx: StageRun, keep_checkpoints: int) -> dict[str, float]:
    """Train, resuming from the newest complete checkpoint in the stage's artifact store; returns timing stats.

    Under torchrun every rank calls this: rank 0 fetches the checkpoint that all ranks resume from, publishes the new
    ones and logs to MLflow; the other ranks only train.
    """
    lead = trainer.is_world_process_zero()
    world = trainer.args.world_size
    dest = checkpoints(ctx) if lead else ""
    resume = None
    if lead:
        resume = resume_point(dest, trainer.args.output_dir, ctx.stage, ctx.run_id)
        if resume:
            print(f"{ctx.stage}: resuming from {os.path.basename(resume)} of run {ctx.run_id}")
    resume = _from_rank_zero(resume)
    # train_batch_size is one process's batch: every rank takes its own.
    tokens_per_step = (
        trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps * world * _tokens_per_example(trainer)
    )
    if lead:
        trainer.add_callback(MlflowMetrics(ctx.run_id, tokens_per_step))
        MlflowClient().log_param(ctx.run_id, "world_size", world)
        if world > 1:
            how = "FSDP" if trainer.is_fsdp_enabled else "DDP"
            print(f"{ctx.stage}: {world} processes train together ({how}, {torch.distributed.get_backend()} backend)")
    trainer.add_callback(PublishCheckpoints(dest, keep=keep_checkpoints))
    trainer.add_callback(Progress(ctx.stage, dest))  # on every rank: it also asks for the last step's log
    trainer.add_callback(FaultInjection())
    stop = StopOnInterrupt()
    trainer.add_callback(stop)
    # Trainer scales a loss by the batch's label count across ranks (×world size, not ÷grad_accum) whenever the model's
    # forward takes **kwargs, yet only causal LMs divide by that count: a masked-LM or classification loss would come out
    # world_size × (or grad_accum ×) too large, in the gradients and on the charts. Such losses are plain batch means.
    trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and _counts_label_tokens(trainer.model)
    # Trainer recounts the parameters for its FLOP estimate on every step (~0.5 ms, a third of its overhead on a
    # small model); the count does not change, so count once.
    n_params = trainer.model.num_parameters(exclude_embeddings=True)
    trainer.floating_point_ops = lambda inputs: 6 * inputs["input_ids"].numel() * n_params
    start_step = int(resume.rsplit("-", 1)[-1]) if resume else 0
    if resume and lead:  # on the run's charts: where a crash cut training and the resumed attempt picked it up
        log_metrics(ctx.run_id, {"resumed_from_step": start_step}, step=start_step)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    if stop.stopped_at is not None:  # the checkpoint of that step is published: raise before anything is registered
        print(
            f"{ctx.stage}: stopped by {interrupt.signal_name()} at step {stop.stopped_at}, checkpoint-{stop.stopped_at} saved"
        )
        raise interrupt.Interrupted(f"{ctx.stage} at checkpoint-{stop.stopped_at}")
    steps = trainer.state.global_step - start_step
    stats = {"train_seconds": seconds, "train_tokens_per_second": tokens_per_step * steps / max(seconds, 1e-9)}
    if lead:
        log_metrics(ctx.run_id, stats, step=trainer.state.global_step)
        _log_curves(trainer.state.log_history, ctx)
    return stats


def _counts_label_tokens(model: torch.nn.Module) -> bool:
    """Whether the model's loss divides by Trainer's `num_items_in_batch` (the causal LMs' shared loss does)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's transformers model
    return type(base).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _barrier() -> None:
    if _distributed():
        torch.distributed.barrier()


def _from_rank_zero(value):
    """Rank 0's value on every rank (the value itself outside torchrun)."""
    if not _distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _log_curves(history: list[dict], ctx: StageRun) -> None:
    """Training (and validation) loss against steps as a PNG on the stage run, beside the metric charts MLflow draws."""
    curves = {
        "train loss": [(h["step"], h["loss"]) for h in history if "loss" in h],
        "validation loss": [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h],
    }
    if curves["train loss"]:  # by run id: a torchrun rank has no active run
        MlflowClient().log_figure(ctx.run_id, curves_figure(curves, f"{ctx.stage} loss"), "loss_curves.png")


def _tokens_per_example(trainer: Trainer) -> float:
    """Tokens in one example: the block size for packed data, the mean length (before padding) otherwise."""
    data = trainer.train_dataset
    sample = [len(data[i]["input_ids"]) for i in range(min(len(data), 256))]
    return sum(sample) / max(1, len(sample))


def checkpoints(ctx: StageRun) -> str:
    """Where the stage's checkpoints live: beside its MLflow artifacts, written directly (S3 through boto3 or a local folder)."""
    return storage.direct(ctx.artifact_uri) + "/checkpoints"


def work_dir(ctx: StageRun) -> str:
    """Local scratch for the Trainer's own files; the durable copies live in the artifact store."""
    path = home() / "work" / ctx.run_id
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def clean_up(ctx: StageRun) -> None:
    """Drop local scratch and stored checkpoints once the stage's result is registered."""
    shutil.rmtree(home() / "work" / ctx.run_id, ignore_errors=True)
    for ckpt in storage.list_complete(checkpoints(ctx)):
        storage.remove_dir(ckpt)
