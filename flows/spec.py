"""PipelineSpec, the run form: it only composes the stage specs, which sit beside their stages."""

import difflib
import re
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from flows.stages import STAGES
from tasks import rounds as rounds_
from tasks.augment.spec import AugmentSpec
from tasks.data.labeled.spec import LabeledSpec
from tasks.data.spec import PrepareSpec
from tasks.errors import UserError
from tasks.evaluate.spec import EvaluateSpec
from tasks.finetune.spec import FinetuneSpec, SoupSpec
from tasks.gate.spec import GateSpec
from tasks.pretrain.spec import PretrainSpec
from tasks.rounds import RoundsSpec
from tasks.spec import Spec
from tasks.transfer.spec import TransferSpec


class PoolsSpec(Spec):
    cpu: str = Field("cpu", min_length=1)
    """Work pool for data preparation and EDA augmentation (stage deployments `<stage>-on-<pool>`)."""
    gpu: str = Field("gpu", min_length=1)
    """Work pool for stages that run a model: pretraining, transfer, fine-tuning, evaluation, the gate, model-driven augmentation."""


class ExecutionSpec(Spec):
    mode: Literal["local", "pools"] = "local"
    """`local`: every stage runs in this process as a Prefect subflow. `pools`: each stage runs as a deployment on its work pool (needs `make stack` and `make deploy`, or a team stack)."""
    experiment: str = Field("multistep", min_length=1)
    """MLflow experiment that holds the pipeline's runs."""
    stage_retries: int = Field(1, ge=0, le=10)
    """Times a stage that failed with an unexpected error, crashed or timed out is run again (it resumes from its checkpoint); input errors are not retried."""
    pools: PoolsSpec = PoolsSpec()
    """pools mode: which work pool takes CPU stages and which GPU stages."""
    stage_timeout_s: int = Field(24 * 3600, ge=10)
    """pools mode: seconds a dispatched stage may run before it is cancelled and dispatched again."""
    stage_timeouts: dict[str, int] = {}
    """pools mode: per-stage overrides of stage_timeout_s, e.g. {pretrain: 172800, prepare: 3600}."""
    start_timeout_s: int = Field(600, ge=5)
    """pools mode: seconds a dispatched stage may wait for a worker of its pool before the pipeline stops with an error."""
    s3_secret: str | None = Field(None, min_length=1)
    """Name of a Prefect Secret block with S3 credentials (JSON: aws_access_key_id, aws_secret_access_key, optional endpoint_url); empty: the workers' environment."""

    @model_validator(mode="after")
    def _known_stages(self):
        unknown = sorted(set(self.stage_timeouts) - set(STAGES))
        if unknown:
            raise ValueError(f"stage_timeouts names unknown stages {unknown}: use {', '.join(STAGES)}")
        if any(v < 10 for v in self.stage_timeouts.values()):
            raise ValueError("stage_timeouts values are seconds, at least 10")
        return self


class PipelineSpec(Spec):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    """Model family name: pretraining registers `<name>-base`, transfer `<name>-transfer`, fine-tuning `<name>`."""
    data: PrepareSpec | None = PrepareSpec()
    """Corpus preparation for pretraining: sources, cleaning, split, tokenizer, packing."""
    pretrain: PretrainSpec | None = PretrainSpec()
    """Language-model pretraining, from scratch or continued from a model URI; empty skips it."""
    evaluate: EvaluateSpec | None = EvaluateSpec()
    """Perplexity of the pretrained model on the corpus's validation and test splits; empty skips it."""
    transfer: TransferSpec | None = None
    """Structure surgery on the model so far (or transfer.init): drop or insert blocks, add tokens, a new head; empty skips it."""
    labeled: LabeledSpec | None = None
    """Labeled data for fine-tuning (classification or prompt/response pairs); needed by finetune."""
    augment: AugmentSpec | None = None
    """More training rows before fine-tuning: EDA edits, pseudo-labels from a teacher, adversarial examples; empty skips it."""
    finetune: FinetuneSpec | None = None
    """Fine-tuning for classification or instruction following, full, LoRA or head-only; empty skips it."""
    rounds: RoundsSpec | None = None
    """Evaluate, adjust and retry: fine-tune up to max_rounds times, each round changing the strategy, keeping the best validation score; empty fine-tunes once."""
    soup: SoupSpec | None = None
    """After the rounds, average their models' weights (a model soup, Wortsman et al. 2022; classification) and register the soup as the next version, which the gate then judges; empty takes the best round."""
    gate: GateSpec | None = GateSpec()
    """Champion/challenger: the final model and the current `@champion` are scored on the same test rows, and the alias moves only if the policy says so (with no champion yet, the model must beat the task's trivial baseline); empty skips it."""
    execution: ExecutionSpec = ExecutionSpec()
    """Where and how the stages run."""

    @model_validator(mode="after")
    def _stages_fit_together(self):
        if self.pretrain and not self.data:
            raise ValueError("pretrain needs a corpus: set data (its sources), or set pretrain to null")
        if (
            self.pretrain
            and self.pretrain.init
            and self.pretrain.objective == "mlm"
            and self.data.tokenizer.kind != "model"
        ):
            raise ValueError(
                "pretrain.objective mlm continues pretrain.init with the mask token of its own tokenizer, which a tokenizer "
                "trained here has not: set data.tokenizer.kind to model"
            )
        if self.evaluate and not (self.pretrain and self.pretrain.objective == "clm"):
            raise ValueError(
                "evaluate scores a causal LM's perplexity on the corpus: pretrain one (objective clm), or set evaluate to null"
            )
        if bool(self.finetune) != bool(self.labeled):
            raise ValueError(
                "finetune and labeled go together: set both (the model to tune and its labeled data) or neither"
            )
        if self.augment and not self.finetune:
            raise ValueError(
                "augment makes training rows for fine-tuning: set finetune and labeled, or set augment to null"
            )
        if self.augment and self.labeled.task != "classification":
            raise ValueError(
                "augment works on classification data: set labeled.task to classification, or set augment to null"
            )
        if self.finetune and self.finetune.attack and self.labeled.task != "classification":
            raise ValueError(
                "finetune.attack measures a classifier's robust accuracy: set labeled.task to classification, or set finetune.attack to null"
            )
        if self.rounds:
            if not self.finetune:
                raise ValueError("rounds repeats fine-tuning: set finetune and labeled, or set rounds to null")
            if self.augment and self.augment.rounds > 1:
                raise ValueError(
                    "rounds and augment.rounds are two loops: set augment.rounds to 1 and use a rounds strategy with pseudo_refresh"
                )
            if any(s.pseudo_refresh for s in self.rounds.planned()) and not (self.augment and self.augment.pseudo):
                raise ValueError(
                    "a rounds strategy asks for pseudo_refresh but augment.pseudo is not set: set it (its pool), or drop pseudo_refresh"
                )
            if any(s.augment or s.eda_copies for s in self.rounds.planned()) and not self.augment:
                raise ValueError(
                    "a rounds strategy turns augmentation on or sets eda_copies, but augment is not set: give augment its settings"
                )
            rounds_.check(self)
        if self.soup and (misfit := self.soup.misfit(self)):
            raise ValueError(misfit)
        if self.gate:
            task = self.labeled.task if self.finetune else "lm"
            allowed = {
                "classification": ("auto", "accuracy", "macro_f1"),
                "sft": ("auto", "exact_match", "chrf"),
                "extractive-qa": ("auto", "f1", "exact_match"),
                "math": ("auto", "answer_accuracy"),
                "lm": ("auto", "perplexity"),
            }[task]
            if self.gate.metric not in allowed:
                raise ValueError(
                    f"gate.metric {self.gate.metric} is not measured for {task} models: use one of {', '.join(allowed)}"
                )
            if not (self.finetune or (self.pretrain and self.pretrain.objective == "clm")):
                raise ValueError(
                    "gate scores the final model on a test set, and this pipeline has none (no finetune, no causal-LM pretraining): set gate to null"
                )
        if self.transfer and not (self.transfer.init or self.pretrain):
            raise ValueError("transfer needs a model: set transfer.init or pretrain")
        if self.finetune and not (self.finetune.init or self.transfer or self.pretrain):
            raise ValueError("finetune needs a model: set finetune.init (e.g. package:minilm), or pretrain")
        if not (self.pretrain or self.transfer or self.finetune):
            raise ValueError("the pipeline has no stage that makes a model: set pretrain, transfer or finetune")
        if self.pretrain and self.pretrain.init is None and self.data.block_size > self.pretrain.model.n_positions:
            raise ValueError(
                f"data.block_size ({self.data.block_size}) is larger than pretrain.model.n_positions "
                f"({self.pretrain.model.n_positions}): lower data.block_size or raise pretrain.model.n_positions"
            )
        return self


def load(path: str | Path, overrides: list[str] = ()) -> PipelineSpec:
    """A preset YAML file plus `a.b=c` overrides, validated; every mistake is one UserError sentence."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"Config file {path} does not exist: pass one of the presets in configs/ or your own YAML file."
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}): fix the syntax.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of spec keys (name, data, ...), not {type(data).__name__}.")
    for item in overrides:
        _apply(data, item)
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(explain(exc, str(path), overrides=overrides)) from None


def _apply(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(
            f"--set {item!r} is not of the form key.path=value: write e.g. --set pretrain.train.max_steps=50."
        )
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(
            f"--set {item}: the value is not valid YAML ({problem}): close its brackets and quotes (a list is written [a, b])."
        ) from None
    set_key(data, key, value, f"--set {item}")


def set_key(data: dict, key: str, value, source: str) -> None:
    """Set the dotted `key` of a nested mapping to `value`, making the sections on the way (a null section becomes one)."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise UserError(f"{source}: {part} is not a section, so it has no key {leaf}: check the key path.")
    node[leaf] = value


def explain(exc: ValidationError, source: str, root: type[Spec] | None = None, overrides: list[str] = ()) -> str:
    """One sentence per spec mistake, naming where it came from (the file or a --set), the key, what is wrong and the fix
    (keys are paths in `root`, PipelineSpec by default)."""
    sets = {tuple(item.partition("=")[0].split(".")): item for item in overrides}  # a later --set of a key wins
    sentences = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = ".".join(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            *parent, key = err["loc"]
            fields = _fields_at([p for p in parent if isinstance(p, str)], root or PipelineSpec)
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"valid keys here are {', '.join(fields)}."
            sentences.append(f"{_origin(loc, msg, source, sets)}: unknown key `{where}`: {hint}")
        elif isinstance(err.get("input"), dict) and err["type"] == "value_error":
            # A check across fields: its input is the whole section, and its message names the fields and the fix.
            label = f"`{where}`: " if loc else ""
            sentences.append(f"{_origin(loc, msg, source, sets)}: {label}{msg}.")
        else:
            got = repr(err.get("input"))
            got = got if len(got) <= 80 else got[:77] + "..."
            sentences.append(f"{_origin(loc, msg, source, sets)}: `{where}` {msg} (got {got}): fix the value.")
    return " ".join(sentences)


def _origin(loc: tuple[str, ...], msg: str, source: str, sets: dict[tuple[str, ...], str]) -> str:
    """The --set that set this key (or a section around it), else the file, with the --set items a cross-field check names."""
    for key, item in sets.items():
        if loc[: len(key)] == key:
            return f"--set {item}"
    # A check on a section: the --set items inside it whose key its message mentions took part.
    named = [
        f"--set {item}"
        for key, item in sets.items()
        if key[: len(loc)] == loc and re.search(rf"\b{re.escape(key[-1])}\b", msg)
    ]
    return f"{source} with {' and '.join(named)}" if named else source


def check_key(key: str, source: str, root: type[Spec] | None = None) -> None:
    """A dotted key must name a field of the spec (PipelineSpec by default), whatever the sections on the way hold now."""
    model, parts = root or PipelineSpec, key.split(".")
    for i, part in enumerate(parts):
        if part not in model.model_fields:
            fields = sorted(model.model_fields)
            close = difflib.get_close_matches(part, fields, n=1)
            hint = (
                f"did you mean `{'.'.join([*parts[:i], close[0]])}`?"
                if close
                else f"valid keys here are {', '.join(fields)}."
            )
            raise UserError(f"{source}: unknown key `{key}`: {hint}")
        annotation = model.model_fields[part].annotation
        model = _spec_in(annotation)
        if model is None:
            # a dict field takes any key
            if i < len(parts) - 1 and dict not in (typing.get_origin(annotation), annotation):
                raise UserError(
                    f"{source}: `{'.'.join(parts[: i + 1])}` is a value, not a section, so `{key}` does not exist: check the key path."
                )
            return


def _spec_in(annotation) -> type[Spec] | None:
    """The spec class an annotation holds (`X`, `X | None`), or None for a plain value."""
    return next(
        (a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type) and issubclass(a, Spec)),
        None,
    )


def _fields_at(path: list[str], model: type[Spec]) -> list[str]:
    for part in path:
        model = _spec_in(model.model_fields[part].annotation) if part in model.model_fields else None
        if model is None:
            return []
    return sorted(model.model_fields)
