"""What classification and SFT share: a Trainer that scores validation at each checkpoint, stops early, and registers the best."""

import tempfile

import mlflow
from peft import PeftModel
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback

from tasks import distributed, methods, registry
from tasks import model as models
from tasks.finetune import average, layers
from tasks.finetune.adversarial import trainer_class
from tasks.tracking import StageRun, log_metrics, resolve_version
from tasks.train import arguments, clean_up, fit, work_dir


def registered_already(spec, register_as: str, ctx: StageRun) -> str | None:
    """The version this stage registered in an earlier attempt (a retry returns it instead of training again); before a
    fresh start, the check that the distributed settings can run here."""
    existing = registry.find_version(register_as, ctx.key)
    if existing:
        print(f"finetune: {existing} was already registered by this stage")
        return existing
    distributed.check(spec.train, ctx.stage)
    return None


def build(
    spec,
    model,
    tokenizer,
    train_ds,
    eval_ds,
    collator,
    ctx: StageRun,
    *,
    metric: str,
    greater: bool,
    compute_metrics=None,
    ordered: bool = False,
    base: type[Trainer] = Trainer,
) -> Trainer:
    """A Trainer that scores validation at every checkpoint, stops early, and loads the best checkpoint's weights at the end;
    `ordered`: the training examples are read in the order given (already shuffled by the caller), not shuffled again;
    `base`: the Trainer class whose loss is trained (and perturbed, under finetune.adversarial)."""
    args = arguments(
        spec.train,
        work_dir(ctx),
        train_sampling_strategy="sequential" if ordered else "random",
        eval_strategy="steps",
        eval_steps=spec.train.checkpoint_every,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=greater,
        save_total_limit=max(2, (spec.average_last or 0) + 1),  # the newest (or the last k to average) and the best
    )
    callbacks = [EarlyStoppingCallback(early_stopping_patience=spec.patience)] if spec.patience else []
    if spec.stop_behind:
        callbacks.append(StopBehind(spec.stop_behind, metric, greater))
    if spec.reinit_layers:  # before the Trainer: every torchrun rank draws the same fresh blocks from the seeded RNG
        layers.reinit_top(model, spec.reinit_layers)
    trainer = trainer_class(spec.adversarial, base)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        processing_class=tokenizer,
    )
    if spec.layer_lr_decay < 1:  # Trainer's own optimizer class, given per-layer groups in place of its two
        no_decay = {n for n, _ in model.named_parameters()} - set(trainer.get_decay_parameter_names(model))
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        groups = layers.param_groups(model, spec.train.lr, spec.train.weight_decay, spec.layer_lr_decay, no_decay)
        trainer.optimizer_cls_and_kwargs = (cls, {**kwargs, "params": groups})
    return trainer


class StopBehind(TrainerCallback):
    """Stop when the best validation score so far is worse than the bar set for this evaluation step."""

    def __init__(self, bars: dict[int, float], metric: str, greater: bool):
        self.bars, self.sign = bars, 1 if greater else -1
        self.key = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.best = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.key)
        if value is None:
            return
        self.best = value if self.best is None else self.sign * max(self.sign * self.best, self.sign * value)
        bar = self.bars.get(state.global_step)
        if bar is not None and self.sign * (self.best - bar) < 0:
            print(f"finetune: {self.key} {self.best:.4f} at step {state.global_step} is behind {bar:.4f}: stopping")
            control.should_training_stop = True


def fit_best(trainer: Trainer, spec, inputs: dict[str, str], ctx: StageRun) -> None:
    """Train here, or on `spec.train.devices` torchrun ranks that leave their weights in `trainer.model`; either way the
    trainer ends holding the best weights, or with `average_last` the mean of the last k checkpoints.

    `inputs` are the keyword arguments with which each rank rebuilds the same Trainer (the stage module's `trainer`).
    """
    trainable, total = methods.trainable_fraction(trainer.model)
    mlflow.log_params({"trainable_parameters": trainable, "parameters": total})
    log_metrics(ctx.run_id, {"trainable_fraction": trainable / total})
    if spec.train.devices > 1:
        distributed.launch(spec, inputs, ctx, trainer.model)
    else:
        fit(trainer, ctx, max(spec.train.keep_checkpoints, spec.average_last or 0))
    if spec.average_last:
        average.average_last(trainer.model, spec.average_last, ctx)


def register(
    spec,
    model,
    tokenizer,
    task: str,
    register_as: str,
    init: str,
    metrics: dict[str, float],
    ctx: StageRun,
    lineage: dict,
) -> str:
    """Log the (merged) model, register it once per stage key, put its metrics on the version, drop the scratch."""
    final = methods.finalize(model, spec)
    if isinstance(final, PeftModel):  # merge_lora off: the adapter alone, pointing at its base version
        base = _pinned(init)
        with tempfile.TemporaryDirectory() as tmp:
            methods.save_adapter(final, tmp, base_uri=base)
            tokenizer.save_pretrained(tmp)
            mlflow.log_artifacts(tmp, "adapter")
        logged, lineage = mlflow.get_artifact_uri("adapter"), {**lineage, "multistep.adapter_base": base}
    else:
        logged = models.log(final, tokenizer, task=task, name=register_as)
    log_metrics(ctx.run_id, metrics)
    tags = {
        "multistep.parent_model": init,
        "multistep.method": spec.method,
        registry.MAX_LENGTH: str(spec.max_length),
        registry.MAX_NEW_TOKENS: str(spec.max_new_tokens),
        **lineage,
    }
    version = registry.register(logged, register_as, ctx, tags, task=task)
    registry.set_tags(version, {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()})
    clean_up(ctx)
    print(f"finetune: registered {version}")
    return version


def _pinned(uri: str) -> str:
    """An alias resolved to its version: an adapter must name the exact base it was trained on."""
    if uri.startswith("models:/") and "@" in uri:
        version = resolve_version(uri)
        return f"models:/{version.name}/{version.version}"
    return uri
