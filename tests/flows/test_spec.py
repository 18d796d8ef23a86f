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
    assert (
        preset.read_text().splitlines()[0].startswith("# ")
        and f"multistep run {preset}" in preset.read_text().splitlines()[0]
    )


def test_overrides_are_parsed_as_yaml_values():
    spec = load(
        "configs/default.yaml",
        ["pretrain.train.max_steps=5", "data.sources=[a.txt, b.txt]", "pretrain.train.lr=3e-4", "name=x"],
    )
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
        (
            ["pretrain.zzz=1"],
            ["unknown key `pretrain.zzz`", "valid keys here are init, mlm_probability, model, objective"],
        ),
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


def refusal(overrides, config="configs/default.yaml") -> str:
    with pytest.raises(UserError) as caught:
        load(config, overrides)
    return str(caught.value)


def test_a_malformed_set_value_is_one_sentence_naming_the_set():
    assert refusal(["data.sources=[a.txt,b.txt"]) == (
        "--set data.sources=[a.txt,b.txt: the value is not valid YAML (expected ',' or ']', but got '<stream end>'): "
        "close its brackets and quotes (a list is written [a, b])."
    )


def test_set_mistakes_name_the_set_not_the_config_file(tmp_path):
    assert (
        refusal(["pretrain.train.max_step=3"])
        == "--set pretrain.train.max_step=3: unknown key `pretrain.train.max_step`: did you mean `max_steps`?"
    )
    assert (
        refusal(["pretrain.train.lr=-1"])
        == "--set pretrain.train.lr=-1: `pretrain.train.lr` Input should be greater than 0 (got -1): fix the value."
    )
    assert refusal(["pretrain={zzz: 1}"]).startswith("--set pretrain={zzz: 1}: unknown key `pretrain.zzz`")
    typo = tmp_path / "typo.yaml"
    typo.write_text("pretrain:\n  train:\n    max_step: 3\n")  # the same typo, in the file
    assert refusal(["name=x"], typo) == f"{typo}: unknown key `pretrain.train.max_step`: did you mean `max_steps`?"


def test_a_cross_field_mistake_has_a_short_label_and_no_dump_of_the_input(tmp_path):
    assert refusal(["data.block_size=512", "name=x"]) == (
        "configs/default.yaml with --set data.block_size=512: data.block_size (512) is larger than pretrain.model.n_positions (128): "
        "lower data.block_size or raise pretrain.model.n_positions."
    )
    assert refusal(["data.split.validation=0.6", "data.split.test=0.5"]) == (
        "configs/default.yaml with --set data.split.validation=0.6 and --set data.split.test=0.5: `data.split`: "
        "split.validation + split.test must be below 1 so that rows remain for training: lower them."
    )
    both = tmp_path / "both.yaml"
    both.write_text("finetune: {}\n")
    assert (
        refusal([], both)
        == f"{both}: finetune and labeled go together: set both (the model to tune and its labeled data) or neither."
    )


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
    assert list(schema["properties"]) == ["spec", "parent_run_id"]
    assert schema["properties"]["parent_run_id"]["description"].startswith(
        "MLflow run to nest this pipeline's run under"
    )
    models = _definitions(schema)
    assert {
        "PipelineSpec",
        "PrepareSpec",
        "CleanSpec",
        "SplitSpec",
        "TokenizerSpec",
        "PretrainSpec",
        "ModelSpec",
        "TrainSpec",
        "EvaluateSpec",
        "ExecutionSpec",
    } <= set(models)
    missing = [
        f"{name}.{field}"
        for name, model in models.items()
        for field, prop in model["properties"].items()
        if not prop.get("description")
    ]
    assert missing == []
    assert models["TrainSpec"]["properties"]["max_steps"]["description"].startswith("Optimizer steps to train for")
    assert models["TokenizerSpec"]["properties"]["kind"]["enum"] == ["bpe", "char", "model"]
    assert all(m.get("additionalProperties") is False for m in models.values())


def test_a_rounds_strategy_that_pushes_a_setting_out_of_bounds_is_refused_before_anything_runs():
    # lr 0.5 × 100 = 50 breaks finetune.train.lr's `le=1`: an unvalidated copy would hand the Trainer lr 50 in round 2.
    overrides = [
        "labeled={train: [x.tsv]}",
        "finetune={init: package:minilm, train: {lr: 0.5}}",
        "pretrain=null",
        "evaluate=null",
        "data=null",
        "rounds={strategies: [{lr_factor: 1}, {lr_factor: 100}]}",
    ]
    with pytest.raises(UserError) as caught:
        load("configs/default.yaml", overrides)
    said = str(caught.value)
    assert "rounds.strategies[1] (lr ×100) gives round 3 an invalid finetune.train.lr (50.0" in said
    assert "less than or equal to 1" in said


def test_a_round_capped_at_round_1s_steps_scales_its_warmup_and_a_longer_round_1_caps_nothing():
    from tasks import rounds

    spec = load(
        "configs/default.yaml",
        ["labeled={train: [x.tsv]}", "finetune={init: package:minilm, train: {max_steps: 600, warmup_steps: 60}}"]
        + ["pretrain=null", "evaluate=null", "data=null"],
    )
    train = rounds.capped(spec, 450).finetune.train
    assert (train.max_steps, train.warmup_steps) == (450, 45)
    assert rounds.capped(spec, 600) is spec and rounds.capped(spec, None) is spec


def test_derived_specs_are_validated_again():
    from tasks import rounds
    from tasks.rounds import StrategySpec
    from tasks.spec import TrainSpec

    with pytest.raises(ValidationError, match="lr\n  Input should be less than or equal to 1"):
        TrainSpec(lr=0.5).replace(lr=50.0)
    spec = load(
        "configs/default.yaml",
        [
            "labeled={train: [x.tsv]}",
            "finetune={init: package:minilm, train: {lr: 0.01}}",
            "pretrain=null",
            "evaluate=null",
            "data=null",
        ],
    )
    adjusted = rounds.apply(spec, StrategySpec(lr_factor=2.0, seed_offset=3))
    assert (adjusted.finetune.train.lr, adjusted.finetune.train.seed) == (
        pytest.approx(0.02),
        spec.finetune.train.seed + 3,
    )
    assert spec.finetune.train.lr == 0.01  # the original is untouched
    assert adjusted.finetune.seed_of_new_weights == spec.finetune.train.seed + 3  # best-of-k: another head too
    # A soup's rounds draw their heads alike (averaged heads of different draws shrink every logit), data order apart
    soup = spec.replace(rounds={"max_rounds": 2, "strategies": [{"seed_offset": 3}]}, soup={"method": "uniform"})
    souped = rounds.apply(soup, soup.rounds.strategy(2))
    assert souped.finetune.train.seed == spec.finetune.train.seed + 3
    assert souped.finetune.seed_of_new_weights == spec.finetune.train.seed
