"""The sweep's form (SweepSpec, the Prefect run form of the `sweep` flow) and its YAML file with `--set` and `--seeds`."""

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import Field, ValidationError, field_validator

from flows.spec import PipelineSpec, _apply, explain
from flows.spec import load as load_pipeline
from tasks.errors import UserError
from tasks.spec import Spec

# Every seed a pipeline has; the split salts (data.split.salt, labeled.split.salt) are not seeds: every cell sees the same rows.
SeedField = Literal[
    "pretrain.train.seed",
    "transfer.seed",
    "augment.eda.seed",
    "augment.pseudo.seed",
    "augment.adversarial.seed",
    "finetune.train.seed",
]
SEED_FIELDS = get_args(SeedField)
Metric = Literal[
    "auto",
    "accuracy",
    "macro_f1",
    "ece",
    "nll",
    "robust_accuracy",
    "attack_success_rate",
    "chrf",
    "bleu",
    "exact_match",
    "perplexity",
    "loss",
]


class SweepSpec(Spec):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    """Name of the sweep's MLflow run and Prefect artifact; empty: `<base name>-sweep`."""
    base: str | PipelineSpec
    """The pipeline every cell starts from: a preset path (e.g. configs/sst2-augment.yaml, relative to the working directory) or the pipeline spec itself."""
    overrides: dict[str, Any] = {}
    """Dotted overrides of the base that every cell gets before its condition's, e.g. {finetune.attack.rows: 200, execution.mode: pools}."""
    conditions: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"baseline": {}}, min_length=1)
    """Named overrides of the base with dotted keys, e.g. {none: {augment: null}, eda: {augment.pseudo: null}}; the one named `baseline`, else the first, is what the others are compared with."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    """One cell per seed and condition; a seed sets every seed of seed_fields that the cell's pipeline has (the split salts stay fixed, so every cell sees the same rows)."""
    seed_fields: list[SeedField] = Field(default_factory=lambda: list(SEED_FIELDS), min_length=1)
    """The seeds a sweep seed sets: all by default; leave pretrain.train.seed out to pretrain once and share it across the seeds."""
    grid: dict[str, list[Any]] = {}
    """A small hyper-parameter grid crossed with the conditions: dotted keys with lists of values, e.g. {finetune.train.lr: [5e-5, 1e-4]}; each condition is compared with the baseline at the same grid point (with one condition, with the first point)."""
    metric: Metric = "auto"
    """The metric reported; auto: the gate's (gate.metric, else accuracy for classification, chrf for SFT, perplexity for a language model)."""
    test: Literal["test", "validation"] = "test"
    """The split whose scores are reported; validation only for pipelines that do not fine-tune (fine-tuning picks its checkpoints, rounds and students on validation, so those scores are biased upwards)."""
    max_parallel: int = Field(4, ge=1, le=64)
    """pools mode (execution.mode of the cells): cells in flight at once, and at most this many of their gpu stages at once (fewer if the gpu pool's concurrency limit says so); local mode runs the cells one after another."""

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("is empty: give at least one seed, e.g. seeds: [0, 1, 2]")
        if len(set(seeds)) != len(seeds):
            raise ValueError("repeats a seed: a repeated seed is the same cell again (a cache hit), so list each once")
        return seeds

    @field_validator("grid")
    @classmethod
    def _some_values(cls, grid: dict[str, list]) -> dict[str, list]:
        empty = [k for k, values in grid.items() if not values]
        if empty:
            raise ValueError(f"key {empty[0]} has no values: give it a list of at least one value, or drop it")
        return grid


def load(path: str | Path, overrides: list[str] = (), seeds: list[int] | None = None) -> SweepSpec:
    """A sweep YAML file plus `a.b=c` overrides (base.… reaches into the base pipeline) and --seeds, validated."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Sweep file {path} does not exist: pass one of configs/sweeps/*.yaml or your own YAML file.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(
            f"{f'{path}:{mark.line + 1}' if mark else path}: not valid YAML ({getattr(exc, 'problem', exc)}): fix the syntax."
        ) from None
    if not isinstance(data, dict) or "base" not in data:
        raise UserError(
            f"{path} must hold a mapping with at least `base` (a preset path or a pipeline spec), `conditions` and `seeds`."
        )
    # inlined, so that --set base.… reaches it and the logged spec is the whole recipe
    if isinstance(data["base"], str):
        data["base"] = load_pipeline(data["base"]).model_dump(mode="json", exclude_unset=True)
    for item in overrides:
        _set(data, item)
    if seeds is not None:
        data["seeds"] = seeds
    try:
        base = PipelineSpec.model_validate(data["base"])
    except ValidationError as exc:
        raise UserError(explain(exc, f"{path} (base)")) from None
    try:
        return SweepSpec.model_validate({**data, "base": base})
    except ValidationError as exc:
        raise UserError(explain(exc, str(path), SweepSpec)) from None


def _set(data: dict, item: str) -> None:
    """One --set: under overrides, grid and a condition the rest of the key stays one dotted key, as those maps hold them
    (`conditions.eda.augment.pseudo=null` drops eda's pseudo-labels and keeps its EDA); elsewhere it is a path."""
    key, sep, raw = item.partition("=")
    parts = key.split(".")
    depth = {"overrides": 1, "grid": 1, "conditions": 2}.get(parts[0])
    if not sep or depth is None or len(parts) <= depth:
        return _apply(data, item)
    node = data
    for part in parts[:depth]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[".".join(parts[depth:])] = yaml.safe_load(raw) if raw else ""
