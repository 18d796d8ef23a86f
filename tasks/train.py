"""Trainer setup shared by every training stage: arguments, MLflow logging, checkpoints, resume, fault injection."""

import functools
import os
import shutil
import time

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from transformers import Trainer, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tasks import interrupt, storage
from tasks.backend import home
from tasks.callbacks import FaultInjection, MlflowMetrics, PublishCheckpoints, StopOnInterrupt, distributed_on, settle
from tasks.checkpoints import resume_point
from tasks.metrics import curves_figure
from tasks.progress import Progress
from tasks.spec import TrainSpec
from tasks.tracking import StageRun, log_metrics

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
    publisher = PublishCheckpoints(dest, keep=keep_checkpoints, stage=ctx.stage)
    trainer.add_callback(publisher)
    trainer.add_callback(Progress(ctx.stage))  # on every rank: it also asks for the last step's log
    trainer.add_callback(FaultInjection(publisher))
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
    try:
        trainer.train(resume_from_checkpoint=resume)
    except BaseException:
        settle(publisher)  # the newest checkpoint still lands, for the retry to resume from
        raise
    publisher.wait()  # before anything is registered, and before a stop is reported as saved
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


def _from_rank_zero(value):
    """Rank 0's value on every rank (the value itself outside torchrun)."""
    if not distributed_on():
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
