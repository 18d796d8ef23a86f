"""What the registry says (MLflow renders it as markdown): for a model name, what it is, how its aliases are used and how
to load it; for each version, where it came from, what it scored and what the gate decided. Built from version tags."""

import json

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from tasks import links
from tasks.tracking import PIPELINE, PREFECT_FLOW_RUN, STAGE

TASK = "multistep.task"  # the mlflow.transformers task a version was logged for: what it is and what loads it
ADAPTER_BASE = "multistep.adapter_base"
# The last line of a model description written here; a description without it is a person's and is left alone.
MARK = "<!-- written by multistep from the newest version; delete this line to keep your own text -->"

# What a model logged for each task is, and the Auto class that loads it with its head.
KINDS = {
    "text-generation": ("causal LM", "AutoModelForCausalLM"),
    "fill-mask": ("masked LM", "AutoModelForMaskedLM"),
    "text-classification": ("classifier", "AutoModelForSequenceClassification"),
    "feature-extraction": ("encoder", "AutoModel"),
}
# Fine-tuning says more: what the model was tuned for.
TUNED = {
    "text-generation": ("instruction-tuned causal LM (SFT)", "AutoModelForCausalLM"),
    "feature-extraction": ("extractive-QA span model", "AutoModelForQuestionAnswering"),
}


def family(tags: dict[str, str]) -> str:
    """What the model is, in a few words: e.g. `classifier fine-tuned from package:minilm`."""
    stage, task, parent = tags.get(STAGE, "?"), tags.get(TASK, ""), tags.get("multistep.parent_model")
    if stage == "pretrain":
        kind = "masked LM" if tags.get("multistep.objective") == "mlm" else "causal LM"
        return f"{kind} pretrained from scratch" if not parent else f"{kind}, pretraining continued from {parent}"
    kind = _kind(stage, task)[0]
    if stage == "transfer":
        ops = [op["op"] for op in json.loads(tags.get("multistep.operations", "[]"))]
        return f"{kind} made from {parent} by model surgery ({', '.join(ops) or 'no operations'})"
    if stage == "finetune":
        base, method = tags.get(ADAPTER_BASE), tags.get("multistep.method")
        if base:  # the adapter alone: loading it loads its base first
            return f"{kind}, a LoRA adapter on {base}" + (f" (fine-tuned from {parent})" if parent != base else "")
        return f"{kind} fine-tuned from {parent}" + (f" ({method})" if method else "")
    return f"{kind} registered by the {stage} stage"


def loader(uri: str, tags: dict[str, str], quote: str = '"') -> tuple[list[str], str]:
    """The imports and the expression that load `uri`: the transformers flavour (a pipeline), or the project's loader
    (model, tokenizer) where the flavour cannot: a LoRA adapter, which goes on top of its base; a span head, which no
    pipeline serves."""
    auto = _kind(tags.get(STAGE, ""), tags.get(TASK, ""))[1]
    if ADAPTER_BASE in tags or tags.get(TASK) == "feature-extraction":
        return [
            f"from transformers import {auto}",
            "from tasks.model import load",
        ], f"load({quote}{uri}{quote}, auto={auto})"
    return ["import mlflow"], f"mlflow.transformers.load_model({quote}{uri}{quote})"


def load_command(uri: str, tags: dict[str, str]) -> str:
    """A shell line that loads `uri` and prints it."""
    imports, expression = loader(uri, tags, quote="'")
    return f'python -c "{"; ".join(imports)}; print({expression})"'


def _load_block(uri: str, tags: dict[str, str]) -> list[str]:
    imports, expression = loader(uri, tags)
    project = imports[-1] == "from tasks.model import load"
    return [
        "```python",
        *imports,
        f"{'model, tokenizer' if project else 'pipe'} = {expression}",
        "```",
        "The project's loader (`pip install multistep`) reads safetensors only and puts an adapter on its base."
        if project
        else '`return_type="components"` gives the model and tokenizer instead of a pipeline.',
    ]


def model_text(version: ModelVersion) -> str:
    """The registered model's description, from its newest version."""
    tags, champion = version.tags, f"models:/{version.name}@champion"
    source = _run(tags.get("multistep.stage_run") or version.run_id)
    pipeline = _run(tags.get("multistep.pipeline_run"))
    preset = f" of pipeline `{pipeline.data.tags[PIPELINE]}`" if pipeline and PIPELINE in pipeline.data.tags else ""
    lines = [
        f"**{version.name}**: {family(tags)}; each version is one run of the `{tags.get(STAGE, '?')}` stage{preset}, "
        "and its own description says what it started from, its data, metrics and the gate's decision.",
        "",
        "Aliases: `@champion` is the version the gate promoted, the one to use; `@challenger` is the one the gate "
        "judged last. A model that never reached the gate (the base of a longer pipeline) has neither: load a version "
        "by number.",
        "",
        "Load the champion:",
        *_load_block(champion, tags),
        "",
        f"Lineage: `multistep lineage {champion}`",
    ]
    if source:
        experiment = MlflowClient().get_experiment(source.info.experiment_id)
        lines[-1] += f" · runs: [experiment {experiment.name}]({links.experiment(experiment.experiment_id)})"
    return "\n".join([*lines, "", MARK])


def version_text(version: ModelVersion) -> str:
    """A version's description: family, pipeline (preset), stage and source run, start, data, Prefect flow run,
    headline metrics, the gate's decision, how to load it."""
    tags, uri = version.tags, f"models:/{version.name}/{version.version}"
    source = _run(tags.get("multistep.stage_run") or version.run_id)
    pipeline = _run(tags.get("multistep.pipeline_run"))
    facts = []
    if pipeline:
        facts.append(f"**Pipeline (preset):** `{pipeline.data.tags.get(PIPELINE, '?')}`, run {_run_link(pipeline)}")
    facts.append(f"**Stage:** `{tags.get(STAGE, '?')}`, source run {_run_link(source) if source else version.run_id}")
    parent = tags.get("multistep.parent_model")
    facts.append(f"**Started from:** {_uri_link(parent) if parent else 'scratch (a freshly initialised model)'}")
    dataset = tags.get("multistep.input.dataset")
    if dataset:
        found = _run(dataset.removeprefix("runs:/").split("/")[0]) if dataset.startswith("runs:/") else None
        facts.append(f"**Dataset:** `{dataset}`" + (f", made by run {_run_link(found)}" if found else ""))
    flow_run = tags.get(PREFECT_FLOW_RUN)
    if flow_run:
        name = source.data.tags.get("prefect.flow_run_name", flow_run) if source else flow_run
        facts.append(f"**Prefect flow run:** [{name}]({links.flow_run(flow_run)})")
    split, metrics = _headline(tags)
    if metrics:
        facts.append(f"**{split.capitalize()} metrics:** {metrics}")
    if "gate.decision" in tags:
        facts.append(f"**Gate:** {gate_line(tags)}")
    return "\n".join(
        [
            f"**{uri}**: {family(tags)}.",
            "",
            *(f"- {fact}" for fact in facts),
            "",
            "Load this version:",
            *_load_block(uri, tags),
            "",
            f"Lineage: `multistep lineage {uri}`",
        ]
    )


def gate_line(tags: dict[str, str]) -> str:
    """The gate's decision from `gate.*` tags: verdict, reason, the metric's values."""
    metric = tags.get("gate.metric", "?")
    values = f"`{metric}` this version {_number(tags, 'gate.challenger_value')}"
    if "gate.champion" in tags:
        values += f", champion {tags['gate.champion']} {_number(tags, 'gate.champion_value')}"
    if "gate.delta" in tags:
        values += f", difference {float(tags['gate.delta']):+.4g}"
    return f"{tags['gate.decision']} — {tags.get('gate.reason', '')} ({values})"


def _number(tags: dict[str, str], key: str) -> str:
    return f"{float(tags[key]):.4g}" if key in tags else "?"


def _headline(tags: dict[str, str]) -> tuple[str, str]:
    """The split and its metrics on the version: test, or validation when it has no test split; at most eight."""
    found = {k.removeprefix("metric."): v for k, v in sorted(tags.items()) if k.startswith("metric.")}
    split = "test" if any(k.startswith("test_") for k in found) else "validation"
    return split, ", ".join([f"{k} {float(v):.4g}" for k, v in found.items() if k.startswith(f"{split}_")][:8])


def _kind(stage: str, task: str) -> tuple[str, str]:
    return (TUNED.get(task) if stage == "finetune" else None) or KINDS.get(task, ("model", "AutoModel"))


def _run(run_id: str | None):
    """The MLflow run, or None (no id, or deleted)."""
    if not run_id:
        return None
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def _run_link(run) -> str:
    return f"[{run.info.run_name}]({links.run(run.info.experiment_id, run.info.run_id)}) (`{run.info.run_id}`)"


def _uri_link(uri: str) -> str:
    return f"[`{uri}`]({links.model_uri(uri)})" if uri.startswith("models:/") else f"`{uri}`"
