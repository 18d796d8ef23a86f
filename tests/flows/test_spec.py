"""The spec is the run form: presets validate, overrides are typed, mistakes are named, the UI shows every field's help."""

from pathlib import Path

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from flows.pipeline import llm_pipeline
from flows.spec import PipelineSpec, load
from tasks.errors import UserError

PRESETS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_validates_and_starts_with_its_command(preset):
    spec = load(preset)
    assert isinstance(spec, PipelineSpec)
    assert preset.read_text().splitlines()[0].startswith("# ") and f"multistep run {preset}" in preset.read_text().splitlines()[0]


def test_overrides_are_parsed_as_yaml_values():
    spec = load("configs/default.yaml", ["pretrain.train.max_steps=5", "data.sources=[a.txt, b.txt]", "pretrain.train.lr=3e-4", "name=x"])
    assert spec.pretrain.train.max_steps == 5
    assert spec.data.sources == ["a.txt", "b.txt"]
    assert spec.pretrain.train.lr == pytest.approx(3e-4)
    assert spec.name == "x"


def test_spec_is_frozen():
    spec = load("configs/default.yaml")
    with pytest.raises(ValidationError, match="Instance is frozen") as caught:
        spec.pretrain.train.max_steps = 3
    assert [(e["type"], e["loc"]) for e in caught.value.errors()] == [("frozen_instance", ("max_steps",))]
    assert spec.pretrain.train.max_steps == load("configs/default.yaml").pretrain.train.max_steps


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["data.sorces=[a]"], ["unknown key `data.sorces`", "did you mean `sources`"]),
        (["pretrain.zzz=1"], ["unknown key `pretrain.zzz`", "valid keys here are init, mlm_probability, model, objective"]),
        (["pretrain.train.lr=-1"], ["`pretrain.train.lr`", "greater than 0"]),
        (["data.tokenizer.kind=words"], ["`data.tokenizer.kind`", "'bpe', 'char' or 'model'"]),
        (["data.block_size=512"], ["data.block_size (512) is larger than pretrain.model.n_positions (128)"]),
        (["pretrain.model.n_embd=130"], ["must be a multiple of model.n_head"]),
        (["data.split.validation=0.6", "data.split.test=0.5"], ["below 1"]),
        (["max_steps"], ["--set 'max_steps' is not of the form key.path=value"]),
        (["name.first=x"], ["name is not a section"]),
    ],
)
def test_mistakes_name_the_key_and_the_fix(overrides, needles):
    with pytest.raises(UserError) as caught:
        load("configs/default.yaml", overrides)
    for needle in needles:
        assert needle in str(caught.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  sources: [a\n  block_size: 3\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: not valid YAML"):
        load(bad)


def _definitions(schema: dict) -> dict:
    return schema.get("definitions") or schema.get("$defs") or {}


def test_run_form_shows_help_for_every_field():
    """Prefect builds the run form from this schema: every field, nested ones too, carries its docstring."""
    schema = parameter_schema(llm_pipeline).model_dump()
    assert list(schema["properties"]) == ["spec"]
    models = _definitions(schema)
    assert {"PipelineSpec", "PrepareSpec", "CleanSpec", "SplitSpec", "TokenizerSpec", "PretrainSpec", "ModelSpec", "TrainSpec", "EvaluateSpec", "ExecutionSpec"} <= set(models)
    missing = [f"{name}.{field}" for name, model in models.items() for field, prop in model["properties"].items() if not prop.get("description")]
    assert missing == []
    assert models["TrainSpec"]["properties"]["max_steps"]["description"].startswith("Optimizer steps to train for")
    assert models["TokenizerSpec"]["properties"]["kind"]["enum"] == ["bpe", "char", "model"]
    assert all(m.get("additionalProperties") is False for m in models.values())
