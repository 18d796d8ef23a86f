"""rounds.search: each round's training settings proposed by Optuna's TPE sampler from the rounds before it, and its
pruner judging each round's validation curve against the earlier rounds' (`tasks/rounds.adjust_and_retry` calls it).

A round's fine-tuning is a stage flow, in another process and often on another machine, so the pruner cannot be asked
between its evaluations. The median pruner's bar at each step depends only on the finished rounds, so the round's
stage gets those bars (finetune.stop_behind) and stops where the pruner would prune it; afterwards the curve the stage
logged is reported to the trial, and the pruner itself gives the verdict that the sampler and the loop go by.
"""

import math
import statistics
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tasks import registry, tracking
from tasks.spec import Spec

Rate = Annotated[float, Field(gt=0, le=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]
# Each searched key: (where it lands in the finetune spec, how the sampler draws it).
KEYS = {
    "lr": ("train.lr", "log"),
    "max_steps": ("train.max_steps", "int"),
    "batch_size": ("train.batch_size", "choice"),
    "warmup_ratio": ("train.warmup_steps", "float"),
    "weight_decay": ("train.weight_decay", "float"),
    "layer_lr_decay": ("layer_lr_decay", "float"),
    "reinit_layers": ("reinit_layers", "int"),
}


class SearchSpec(Spec):
    lr: list[Rate] | None = None
    """[low, high] for finetune.train.lr, drawn on a log scale; empty keeps the preset's rate (so for every key below)."""
    max_steps: list[Annotated[int, Field(ge=1)]] | None = None
    """[low, high] for finetune.train.max_steps."""
    batch_size: list[Annotated[int, Field(ge=1)]] | None = None
    """The finetune.train.batch_size values to choose from, e.g. [8, 16, 32]."""
    warmup_ratio: list[Annotated[float, Field(ge=0, lt=1)]] | None = None
    """[low, high] for the warmup as a fraction of the round's max_steps (sets finetune.train.warmup_steps)."""
    weight_decay: list[Fraction] | None = None
    """[low, high] for finetune.train.weight_decay."""
    layer_lr_decay: list[Rate] | None = None
    """[low, high] for finetune.layer_lr_decay (1 is no decay)."""
    reinit_layers: list[Count] | None = None
    """[low, high] for finetune.reinit_layers (needs finetune.method full)."""
    startup_rounds: int = Field(2, ge=1, le=20)
    """Rounds proposed at random (seeded by finetune.train.seed) before TPE proposes from the scores so far."""
    grace: float = Field(0.25, ge=0, lt=1)
    """No round is pruned before this fraction of its steps (of the shortest the search may propose: the low end of max_steps, else finetune.train.max_steps): early scores, inside the warmup, say little of where a round ends, and a slow start at a low learning rate is not a bad round."""
    pruner: Literal["median", "halving", "none"] = "median"
    """Judges each round's validation curve: median prunes a round whose best score so far falls below the earlier rounds' median at the same step (its stage stops training there: finetune.stop_behind); halving is successive halving over the evaluation steps, judged once the round has finished; none never prunes. A pruned round counts against rounds.patience even when it ends better."""

    @field_validator("lr", "max_steps", "warmup_ratio", "weight_decay", "layer_lr_decay", "reinit_layers")
    @classmethod
    def _range(cls, value):
        if value is not None and (len(value) != 2 or value[0] > value[1]):
            raise ValueError(
                "is not a range: write [low, high] with low at most high, or leave it empty to keep the preset's value"
            )
        return value

    @field_validator("batch_size")
    @classmethod
    def _choices(cls, value):
        if value is not None and not value:
            raise ValueError("has no value to choose from: list one or more, or leave it empty")
        return value

    @model_validator(mode="after")
    def _searches_something(self):
        if not any(getattr(self, key) for key in KEYS):
            raise ValueError(f"rounds.search searches nothing: give a range for one of {', '.join(KEYS)}")
        return self


def propose(trial, search: SearchSpec) -> dict[str, float | int]:
    """The round's settings, drawn by the trial's sampler from each range the spec gives."""
    params = {}
    for key, (_, kind) in KEYS.items():
        space = getattr(search, key)
        if not space:
            continue
        if kind == "choice":
            params[key] = trial.suggest_categorical(key, space)
        elif kind == "int":
            params[key] = trial.suggest_int(key, *space)
        else:
            params[key] = trial.suggest_float(key, *space, log=kind == "log")
    return params


def finetuned(spec: BaseModel, params: dict) -> BaseModel:
    """The finetune spec with the round's settings (validated again, like every derived spec)."""
    finetune = spec.finetune
    train = {k: v for k, v in params.items() if KEYS[k][0].startswith("train.") and k != "warmup_ratio"}
    if "warmup_ratio" in params:
        train["warmup_steps"] = round(params["warmup_ratio"] * train.get("max_steps", finetune.train.max_steps))
    top = {k: v for k, v in params.items() if not KEYS[k][0].startswith("train.")}
    return finetune.replace(train=finetune.train.replace(**train), **top)


def describe(params: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def check(spec: BaseModel) -> None:
    """Both corners of the search space (every low, every high) give a valid round: else one sentence naming the key."""
    search = spec.rounds.search
    for end in (0, -1):
        params = {k: getattr(search, k)[end] for k in KEYS if getattr(search, k)}
        try:
            finetuned(spec, params)
        except (ValidationError, ValueError) as exc:
            err = exc.errors()[0] if isinstance(exc, ValidationError) else {"msg": str(exc), "loc": ()}
            msg = err["msg"].removeprefix("Value error, ")
            raise ValueError(
                f"rounds.search gives a round {describe(params)}, which finetune does not accept ({msg}): "
                "narrow that range or change the preset"
            ) from None


# The validation score each task's stage picks its best checkpoint by, which runs the same way as the score the round
# is judged by (rounds.validation_metric). Extractive QA picks by F1 but is judged by loss: its rounds are not pruned.
CURVES = {"classification": "eval_accuracy", "sft": "eval_loss", "math": "eval_loss"}


def curve(model: str, task: str) -> list[tuple[int, float]]:
    """(step, value) of the validation score the stage logged at each evaluation while it trained `model`."""
    from mlflow.tracking import MlflowClient

    if task not in CURVES:
        return []
    history = MlflowClient().get_metric_history(tracking.resolve_version(model).run_id, CURVES[task])
    return sorted((m.step, m.value) for m in history)


def pruned_at(trial, points: list[tuple[int, float]]) -> int | None:
    """Report the round's curve to its trial step by step; the step at which the pruner prunes it, or None."""
    for step, value in points:
        trial.report(value, step)
        if trial.should_prune():
            return step
    return None


def bars(found, grace_steps: int) -> dict[int, float]:
    """The median pruner's bar at each evaluation step from `grace_steps` on: the median of the completed rounds'
    scores at that step."""
    from optuna.trial import TrialState

    done = found.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    steps = sorted({step for t in done for step in t.intermediate_values if step >= grace_steps})
    return {s: statistics.median(t.intermediate_values[s] for t in done if s in t.intermediate_values) for s in steps}


def grace_steps(search: SearchSpec, max_steps: int) -> int:
    """The step before which no round is pruned (Optuna's n_warmup_steps)."""
    return math.ceil(search.grace * (search.max_steps[0] if search.max_steps else max_steps))


def study(search: SearchSpec, seed: int, maximize: bool, grace: int):
    """An in-memory study: its proposals depend only on the seed and the scores told to it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=grace),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "none": optuna.pruners.NopPruner,
    }[search.pruner]()
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_rounds)
    return optuna.create_study(direction="maximize" if maximize else "minimize", sampler=sampler, pruner=pruner)


def search_rounds(spec: BaseModel, tune, parent_run_id: str, metric: str, sign: int) -> str:
    """Rounds proposed by the study; stop after `patience` rounds in a row that were pruned or not better."""
    from optuna.trial import TrialState

    rounds = spec.rounds
    grace = grace_steps(rounds.search, spec.finetune.train.max_steps)
    found = study(rounds.search, spec.finetune.train.seed, sign > 0, grace)
    best, best_score, stale = None, None, 0
    for r in range(1, rounds.max_rounds + 1):
        trial = found.ask()
        params = propose(trial, rounds.search)
        finetune = finetuned(spec, params)
        if rounds.search.pruner == "median" and spec.labeled.task in CURVES:  # it stops where the pruner would prune it
            finetune = finetune.replace(stop_behind=bars(found, grace))
        adjusted = spec.replace(finetune=finetune)
        model = tune(adjusted, adjusted.augment.teacher if adjusted.augment else None, r)
        score = registry.metric(model, metric)
        step = pruned_at(trial, curve(model, spec.labeled.task))
        found.tell(trial, None if step is not None else score, TrialState.PRUNED if step is not None else None)
        verdict = f", pruned at step {step}" if step is not None else ""
        tracking.log_round(parent_run_id, r, metric, score, describe(params) + verdict, model)
        print(f"round {r} ({describe(params)}{verdict}): {metric} {score:.4f} → {model}")
        better = best is None or sign * (score - best_score) > rounds.min_delta
        if better:  # a pruned round's model is trained and scored all the same: keep it when it is the best
            best, best_score = model, score
        stale = 0 if better and step is None else stale + 1
        if stale >= rounds.patience:
            print(
                f"rounds: {stale} round(s) in a row pruned or without a better {metric}; stopping, {best} is the challenger"
            )
            break
    return best
