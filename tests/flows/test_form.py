"""The Prefect run form as its JSON schema builds it (the schema Prefect makes of the pipeline flow's parameters): named
empty choices, every default pre-filled, a title on every field."""

import pytest
from prefect.utilities.callables import parameter_schema

from flows.pipeline import llm_pipeline
from flows.retrain import retrain
from flows.stages import STAGES
from flows.sweep import sweep

SCHEMA = parameter_schema(llm_pipeline).model_dump_for_openapi()
DEFS = SCHEMA["definitions"]
FLOWS = [llm_pipeline, sweep, retrain, *(s.flow for s in STAGES.values())]  # each deployment's form is one of these


def properties(schema: dict) -> list[tuple[str, dict]]:
    """(`Model.field`, its property) for every field of every model in the form, and the flow's own parameters."""
    found = [(f"Parameters.{k}", p) for k, p in schema["properties"].items()]
    return found + [
        (f"{m}.{k}", p) for m, d in schema.get("definitions", {}).items() for k, p in d["properties"].items()
    ]


def required(schema: dict) -> set[str]:
    """The fields without a default: the only ones a user must fill in."""
    found = {f"Parameters.{k}" for k in schema.get("required", [])}
    return found | {f"{m}.{k}" for m, d in schema.get("definitions", {}).items() for k in d.get("required", [])}


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_empty_choice_is_named_and_says_what_it_means(flow):
    # Prefect labels an untitled {"type": "null"} choice "None" and shows `Property is type "None"` under it.
    schema = parameter_schema(flow).model_dump_for_openapi()
    nulls = {name: b for name, p in properties(schema) for b in p.get("anyOf", []) if b.get("type") == "null"}
    assert nulls, "every flow has an empty choice (parent_run_id at least)"
    assert {name: b for name, b in nulls.items() if not (b.get("title") and b.get("description"))} == {}


def test_sections_are_on_or_off_and_values_set_or_empty():
    sections = DEFS["PipelineSpec"]["properties"]["pretrain"]["anyOf"]
    assert [b.get("title") for b in sections] == ["on", "off"]
    assert sections[1]["description"] == "Off (null): the pipeline leaves this section out."
    value = DEFS["CleanSpec"]["properties"]["max_chars"]["anyOf"]
    assert [b.get("title") for b in value] == [None, "empty"]  # the value's own choice keeps Prefect's label (int)
    assert value[1]["description"] == "Empty (null): the help text above says what that means."
    assert [b.get("title") for b in SCHEMA["properties"]["parent_run_id"]["anyOf"]] == [None, "empty"]


def test_a_default_made_by_a_factory_is_prefilled_like_any_other():
    # A field without `default` in the schema starts empty in the form ("No items selected" for a list) whenever the
    # deployment's preset leaves it out, as the default preset does with evaluate.splits.
    assert DEFS["EvaluateSpec"]["properties"]["splits"]["default"] == ["validation", "test"]
    assert DEFS["PrepareSpec"]["properties"]["sources"]["default"] == ["package:pydoc-topics"]
    assert [s["lr_factor"] for s in DEFS["RoundsSpec"]["properties"]["strategies"]["default"]] == [0.5, 2.0]
    assert required(SCHEMA) == {
        "LabeledSpec.train",
        "PseudoLabelSpec.pool",
        "PromptTeacherSpec.prompt",
        "PromptTeacherSpec.label_words",
    }
    found = parameter_schema(sweep).model_dump_for_openapi()["definitions"]["SweepSpec"]["properties"]
    assert found["seeds"]["default"] == [0, 1, 2] and found["conditions"]["default"] == {"baseline": {}}


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_field_a_user_need_not_fill_in_has_its_default_in_the_form(flow):
    schema = parameter_schema(flow).model_dump_for_openapi()
    assert [name for name, p in properties(schema) if "default" not in p and name not in required(schema)] == []


def test_every_field_has_a_readable_title():
    untitled = [name for name, p in properties(SCHEMA) if not p.get("title")]
    assert untitled == []  # pydantic leaves nested sections (data, pretrain, execution, ...) without one
    pipeline = DEFS["PipelineSpec"]["properties"]
    assert [pipeline[k]["title"] for k in ("data", "pretrain", "execution")] == ["Data", "Pretrain", "Execution"]
    assert DEFS["FinetuneSpec"]["properties"]["self_consistency"]["title"] == "Self Consistency"
    titles = {
        k: p["title"]
        for m in ("TrainSpec", "FinetuneSpec", "ExecutionSpec", "PoolsSpec")
        for k, p in DEFS[m]["properties"].items()
    }
    assert titles["lr"] == "LR" and titles["lora_rank"] == "LoRA Rank" and titles["cpu"] == "CPU"
    assert titles["stage_timeout_s"] == "Stage Timeout (s)"
    assert DEFS["CleanSpec"]["properties"]["minhash_permutations"]["title"] == "MinHash Permutations"
