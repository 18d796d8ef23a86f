"""The loops that fine-tune more than once: evaluate–adjust–retry rounds (their settings, what each round changes) and self-training."""

from collections.abc import Callable

from pydantic import BaseModel, Field, ValidationError

from tasks import registry, search, tracking
from tasks.search import SearchSpec
from tasks.spec import Spec

# tune(spec, teacher, round) → the registered student: the labeled data augmented as `spec` says (with `teacher` for
# pseudo-labels and attacks), fine-tuned; the pipeline passes its stage calls in, so these loops stay free of flows.
Tune = Callable[[BaseModel, str | None, int], str]


class StrategySpec(Spec):
    lr_factor: float = Field(1.0, gt=0, le=100)
    """Multiply finetune.train.lr by this in the round (relative to the preset's rate, not compounding)."""
    augment: bool | None = None
    """Turn the augment stage on (with the preset's settings) or off for the round; empty keeps the preset's choice."""
    eda_copies: int | None = Field(None, ge=1, le=64)
    """EDA strength for the round: augmented copies per training row; empty keeps augment.eda.copies."""
    pseudo_refresh: bool = False
    """Pseudo-label the pool again with the best model so far as the teacher (needs augment.pseudo)."""
    seed_offset: int = 0
    """Add this to finetune.train.seed (and the EDA seed) for the round, to try another data order and initialisation of the head (with a soup, the head's stays the first round's: finetune.init_seed)."""

    def describe(self) -> str:
        parts = [f"lr ×{self.lr_factor:g}"] if self.lr_factor != 1 else []
        parts += [f"augment {'on' if self.augment else 'off'}"] if self.augment is not None else []
        parts += [f"EDA copies {self.eda_copies}"] if self.eda_copies else []
        parts += ["pseudo-label refresh"] if self.pseudo_refresh else []
        parts += [f"seed +{self.seed_offset}"] if self.seed_offset else []
        return ", ".join(parts) or "as configured"


class RoundsSpec(Spec):
    max_rounds: int = Field(3, ge=1, le=20)
    """Fine-tuning rounds at most; round 1 trains as the preset says, later rounds apply the strategies (with search, every round is proposed)."""
    patience: int = Field(1, ge=1)
    """Stop after this many rounds in a row without a better validation score."""
    min_delta: float = Field(0.0, ge=0)
    """A round counts as better only when it improves the validation score by more than this."""
    strategies: list[StrategySpec] = Field(
        default_factory=lambda: [StrategySpec(lr_factor=0.5), StrategySpec(lr_factor=2.0)], min_length=1
    )
    """What rounds 2, 3, … change, in order (the list repeats when there are more rounds than strategies); unused when search is set."""
    match_first_steps: bool = False
    """Cap every later round's finetune.train.max_steps at the steps round 1 trained (where early stopping ended it), its warmup scaled alike, so k rounds cost about k plain fine-tunes: otherwise a round at another learning rate, still improving, trains on to max_steps (on TREC the ×0.5 and ×2 rounds trained 545 steps to round 1's 460). Strategies only: a search proposes its own max_steps."""
    search: SearchSpec | None = None
    """Search instead of a fixed list: every round's settings are proposed by Optuna's TPE sampler from the scores of the rounds before it, within the ranges given here, and its pruner stops rounds that fall behind; empty follows the strategies."""

    def planned(self) -> list[StrategySpec]:
        """The strategies the rounds will apply: none when a search proposes each round."""
        return [] if self.search else self.strategies

    def strategy(self, round: int) -> StrategySpec:
        """Round 1 is the preset itself; round r ≥ 2 uses strategies[r - 2], cycling."""
        return StrategySpec() if round == 1 else self.strategies[(round - 2) % len(self.strategies)]


def apply(spec: BaseModel, strategy: StrategySpec) -> BaseModel:
    """The pipeline spec with one round's adjustments (`spec` is a PipelineSpec; frozen models are copied and validated again)."""
    finetune, augment = adjusted(spec, strategy)
    return spec.replace(finetune=finetune, augment=augment)


def adjusted(spec: BaseModel, strategy: StrategySpec) -> tuple[BaseModel, BaseModel | None]:
    """The round's finetune and augment specs, each validated (a ValidationError names what the strategy pushed out of bounds)."""
    train = spec.finetune.train
    finetune = spec.finetune.replace(
        train=train.replace(lr=train.lr * strategy.lr_factor, seed=train.seed + strategy.seed_offset)
    )
    if spec.soup and strategy.seed_offset:
        # Heads drawn from different seeds grow along different directions, and their mean shrinks every logit: a soup
        # of three TREC fine-tunes kept its accuracy but its test loss rose from 0.15 to 0.62 (ECE 0.01 → 0.45).
        finetune = finetune.replace(init_seed=spec.finetune.seed_of_new_weights)
    augment = spec.augment
    if strategy.augment is False:
        augment = None
    if augment is not None and augment.eda is not None and (strategy.eda_copies or strategy.seed_offset):
        eda = augment.eda.replace(
            copies=strategy.eda_copies or augment.eda.copies, seed=augment.eda.seed + strategy.seed_offset
        )
        augment = augment.replace(eda=eda)
    return finetune, augment


def capped(spec: BaseModel, steps: int | None) -> BaseModel:
    """The round's spec trained for at most `steps` steps, its warmup shortened in proportion (the schedule then ends
    where training does, as round 1's would have had max_steps been `steps`)."""
    train = spec.finetune.train
    if steps is None or steps >= train.max_steps:
        return spec
    warmup = round(train.warmup_steps * steps / train.max_steps)
    return spec.replace(finetune=spec.finetune.replace(train=train.replace(max_steps=steps, warmup_steps=warmup)))


def trained_steps(model: str) -> int | None:
    """The optimizer steps the stage that registered `model` trained to (tasks/train logs train_seconds at its last
    step, also after a resume); None when it did not train."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(tracking.resolve_version(model).run_id, "train_seconds")
    return max((m.step for m in history), default=None) or None


def check(spec: BaseModel) -> None:
    """Every strategy (or the search space's corners) yields a valid round: raise ValueError naming the first that does
    not (before anything trains)."""
    if spec.rounds.search:
        if spec.rounds.match_first_steps:
            raise ValueError(
                "rounds.match_first_steps caps the strategies' rounds, but rounds.search proposes every round's steps: "
                "set match_first_steps to false, or give the search a max_steps range instead"
            )
        search.check(spec)
    for i, strategy in enumerate(spec.rounds.planned()):
        try:
            adjusted(spec, strategy)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = {"TrainSpec": "finetune.train.", "EdaSpec": "augment.eda."}.get(exc.title, "")
            field = where + ".".join(str(p) for p in err["loc"])
            raise ValueError(
                f"rounds.strategies[{i}] ({strategy.describe()}) gives round {i + 2} an invalid {field} "
                f"({err['input']!r}: {err['msg'].removeprefix('Value error, ')}): change that strategy or the preset's value"
            ) from None


def validation_metric(task: str) -> tuple[str, int]:
    """The version metric a round is judged by, and +1 when higher is better."""
    return ("validation_accuracy", 1) if task == "classification" else ("validation_loss", -1)


def adjust_and_retry(spec: BaseModel, tune: Tune, parent_run_id: str) -> str:
    """Rounds of fine-tuning, each under the next strategy (or the search's proposal); stop after `patience` rounds
    without a better validation score."""
    metric, sign = validation_metric(spec.labeled.task)
    if spec.rounds.search:
        return search.search_rounds(spec, tune, parent_run_id, metric, sign)
    best, best_score, stale, first_steps = None, None, 0, None
    for r in range(1, spec.rounds.max_rounds + 1):
        strategy = spec.rounds.strategy(r)
        adjusted = capped(apply(spec, strategy), first_steps)
        teacher = best if strategy.pseudo_refresh else (adjusted.augment.teacher if adjusted.augment else None)
        model = tune(adjusted, teacher, r)
        if r == 1 and spec.rounds.match_first_steps:
            first_steps = trained_steps(model)
            print(
                f"rounds: round 1 trained {first_steps} steps; later rounds train at most as many"
                if first_steps
                else "rounds: round 1 did not train (max_steps 0 or a cached model without steps); later rounds keep max_steps"
            )
        said = strategy.describe()
        if adjusted.finetune.train.max_steps < spec.finetune.train.max_steps:
            said += f", {adjusted.finetune.train.max_steps} steps (round 1's)"
        score = registry.metric(model, metric)
        tracking.log_round(parent_run_id, r, metric, score, said, model)
        print(f"round {r} ({said}): {metric} {score:.4f} → {model}")
        if best is None or sign * (score - best_score) > spec.rounds.min_delta:
            best, best_score, stale = model, score, 0
        else:
            stale += 1
            if stale >= spec.rounds.patience:
                print(
                    f"rounds: {stale} round(s) without a better {metric} than {best_score:.4f}; stopping, {best} is the challenger"
                )
                break
    return best


def self_train(spec: BaseModel, tune: Tune) -> str:
    """The augmented student; with model-driven augmentation, teacher → student rounds while a student's validation
    accuracy beats its teacher's by `augment.min_gain`. Returns the best model."""
    augment = spec.augment
    first = 1 if augment.teacher else 0
    teacher = tune(spec, augment.teacher, first)
    if not augment.model_driven or augment.unguarded:  # unguarded: the prompt teacher labeled the first student's rows
        return teacher
    for round in range(first + 1, augment.rounds + 1):
        student = tune(spec, teacher, round)
        before, after = registry.metric(teacher, "validation_accuracy"), registry.metric(student, "validation_accuracy")
        if before is None:  # a given teacher that no multistep stage scored: the first student simply takes over
            teacher = student
            continue
        print(
            f"self-training round {round}: validation accuracy {before:.4f} (teacher {teacher}) → {after:.4f} (student {student})"
        )
        if after - before < augment.min_gain or after <= before:
            print(
                f"self-training: stopping, the student did not beat its teacher by augment.min_gain ({augment.min_gain}); keeping {teacher}"
            )
            return teacher
        teacher = student
    return teacher
