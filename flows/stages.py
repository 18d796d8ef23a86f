"""Stage flows, and the one stage table that the pipeline, dispatch, the spec's checks and the deployments' test read.

Each flow opens its stage's MLflow run (`stage_run`: cache hit, resume, lineage) and, unless the run is a cache hit,
calls the stage's body.

A worker runs each stage flow in a fresh process that first imports this module, so at the top it imports only specs and
light helpers (tests/flows/test_imports.py); each flow imports its stage's body, which loads torch and transformers,
inside the flow, where a cache hit never reaches it.
"""

from dataclasses import dataclass
from typing import Literal

from prefect import Flow, flow

from tasks.augment.spec import AugmentSpec
from tasks.data import sources
from tasks.data.labeled import read
from tasks.data.labeled.spec import LabeledSpec
from tasks.data.spec import PrepareSpec
from tasks.evaluate.spec import EvaluateSpec
from tasks.finetune.spec import FinetuneSpec, SoupSpec
from tasks.gate import promotion
from tasks.gate.spec import GateSpec
from tasks.pretrain.spec import PretrainSpec
from tasks.spec import OptionalInt, OptionalStr
from tasks.tracking import digest, stage_run
from tasks.transfer.spec import TransferSpec

OUTPUT_KEY = "multistep-output"  # the Prefect artifact in which a stage flow run leaves its result URI


def record_output(output: str) -> str:
    """Leave a stage flow run's result URI where the dispatcher (and the Prefect UI) can read it; returns it."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    if flow_run.id:
        create_markdown_artifact(f"`{output}`", key=OUTPUT_KEY, description="The URI this stage returned")
    return output


@flow(name="prepare", log_prints=True)
def prepare_stage(
    spec: PrepareSpec,
    tokenizer_from: OptionalStr = None,
    experiment: str = "multistep",
    parent_run_id: OptionalStr = None,
    objective: OptionalStr = None,
) -> str:
    """Read, validate, clean, deduplicate, split, tokenize and pack the sources; returns a dataset URI.

    `objective` is the pretraining objective the data is for: not part of the dataset (nor of its cache key), it lets a
    model that tokenizer_from names be refused for it before the corpus is read."""
    found = sources.source_digests(spec)  # validates every source before any run is opened
    inputs = {f"source{i}": uri for i, uri in enumerate(spec.sources)}
    digests = {f"source{i}": found[uri] for i, uri in enumerate(spec.sources)}
    if tokenizer_from:
        inputs["tokenizer_from"], digests["tokenizer_from"] = tokenizer_from, digest(tokenizer_from)
    with stage_run(
        "prepare",
        spec,
        inputs,
        code=STAGES["prepare"].code,
        experiment=experiment,
        parent_run_id=parent_run_id,
        digests=digests,
    ) as ctx:
        if not ctx.cached:
            from tasks.data import prepare

            ctx.output = prepare.run(spec, tokenizer_from, ctx, objective)
    return record_output(ctx.output)


@flow(name="pretrain", log_prints=True)
def pretrain_stage(
    spec: PretrainSpec, dataset: str, name: str, experiment: str = "multistep", parent_run_id: OptionalStr = None
) -> str:
    """Pretrain a causal LM on a dataset URI and register it as `<name>-base`; returns the model version URI."""
    register_as = name + spec.register_suffix
    inputs = {"dataset": dataset, **({"init": spec.init} if spec.init else {})}
    params = {"register_as": register_as}
    with stage_run(
        "pretrain",
        spec,
        inputs,
        code=STAGES["pretrain"].code,
        experiment=experiment,
        parent_run_id=parent_run_id,
        params=params,
    ) as ctx:
        if not ctx.cached:
            from tasks.pretrain import stage as pretrain

            ctx.output = pretrain.run(spec, dataset, register_as, ctx)
    return record_output(ctx.output)


@flow(name="evaluate", log_prints=True)
def evaluate_stage(
    spec: EvaluateSpec, model: str, dataset: str, experiment: str = "multistep", parent_run_id: OptionalStr = None
) -> str:
    """Score a model URI on a dataset URI; returns the evaluation report URI."""
    inputs = {"model": model, "dataset": dataset}
    with stage_run(
        "evaluate", spec, inputs, code=STAGES["evaluate"].code, experiment=experiment, parent_run_id=parent_run_id
    ) as ctx:
        if not ctx.cached:
            from tasks.evaluate import stage as evaluate

            ctx.output = evaluate.run(spec, model, dataset, ctx)
    return record_output(ctx.output)


@flow(name="transfer", log_prints=True)
def transfer_stage(
    spec: TransferSpec, model: str, name: str, experiment: str = "multistep", parent_run_id: OptionalStr = None
) -> str:
    """Structure surgery on a model URI (drop/insert blocks, add tokens, new head); returns the new version's URI."""
    register_as = name + spec.register_suffix
    params = {"register_as": register_as}
    with stage_run(
        "transfer",
        spec,
        {"model": model},
        code=STAGES["transfer"].code,
        experiment=experiment,
        parent_run_id=parent_run_id,
        params=params,
    ) as ctx:
        if not ctx.cached:
            from tasks.transfer import surgery

            ctx.output = surgery.run(spec, model, register_as, ctx)
    return record_output(ctx.output)


@flow(name="prepare-labeled", log_prints=True)
def prepare_labeled_stage(spec: LabeledSpec, experiment: str = "multistep", parent_run_id: OptionalStr = None) -> str:
    """Read, validate and split labeled data for fine-tuning; returns a dataset URI."""
    digests = read.source_digests(spec)  # validates that every source exists before any run is opened
    inputs = read.source_names(spec)
    code = STAGES["prepare-labeled"].code
    with stage_run(
        "prepare-labeled", spec, inputs, code=code, experiment=experiment, parent_run_id=parent_run_id, digests=digests
    ) as ctx:
        if not ctx.cached:
            from tasks.data.labeled import stage as labeled

            ctx.output = labeled.run(spec, ctx)
    return record_output(ctx.output)


@flow(name="augment", log_prints=True)
def augment_stage(
    spec: AugmentSpec,
    dataset: str,
    teacher: OptionalStr = None,
    synonym_model: OptionalStr = None,
    round: OptionalInt = None,
    experiment: str = "multistep",
    parent_run_id: OptionalStr = None,
) -> str:
    """Add EDA edits, pseudo-labels and adversarial examples to a labeled dataset URI's training rows; returns the new dataset URI."""
    inputs = {
        "dataset": dataset,
        **({"teacher": teacher} if teacher else {}),
        **({"synonym_model": synonym_model} if synonym_model else {}),
    }
    digests = {name: digest(uri) for name, uri in inputs.items()}
    if spec.pseudo and (teacher or spec.unguarded):  # the pool is read only when a teacher labels it
        for i, src in enumerate(spec.pseudo.pool):
            inputs[f"pool{i}"], digests[f"pool{i}"] = src, sources.digest(src, spec.pseudo)
        for name, uri in spec.labelers().items():  # an alias that moves to another version labels anew
            inputs[name], digests[name] = uri, digest(uri)
    with stage_run(
        "augment",
        spec,
        inputs,
        code=STAGES["augment"].code,
        experiment=experiment,
        parent_run_id=parent_run_id,
        digests=digests,
        params={"hardware": spec.hardware},
        round=round,
    ) as ctx:
        if not ctx.cached:
            from tasks.augment import stage as augment

            ctx.output = augment.run(spec, dataset, teacher, synonym_model, ctx)
    return record_output(ctx.output)


@flow(name="finetune", log_prints=True)
def finetune_stage(
    spec: FinetuneSpec,
    model: str,
    dataset: str,
    name: str,
    round: OptionalInt = None,
    experiment: str = "multistep",
    parent_run_id: OptionalStr = None,
) -> str:
    """Fine-tune a model URI on a labeled dataset URI and register the best checkpoint as `<name>`."""
    register_as = name + spec.register_suffix
    with stage_run(
        "finetune",
        spec,
        {"model": model, "dataset": dataset},
        code=STAGES["finetune"].code,
        experiment=experiment,
        parent_run_id=parent_run_id,
        params={"register_as": register_as},
        round=round,
    ) as ctx:
        if not ctx.cached:
            from tasks.finetune import stage as finetune

            ctx.output = finetune.body(dataset).run(spec, model, dataset, register_as, ctx)  # classify or sft
    return record_output(ctx.output)


@flow(name="soup", log_prints=True)
def soup_stage(
    spec: SoupSpec, models: list[str], dataset: str, experiment: str = "multistep", parent_run_id: OptionalStr = None
) -> str:
    """Average fine-tuned versions of one model and one initialisation (a uniform or greedy model soup) and register the
    soup as a new version of that model."""
    inputs = {**{f"ingredient{i}": uri for i, uri in enumerate(models)}, "dataset": dataset}
    with stage_run(
        "soup", spec, inputs, code=STAGES["soup"].code, experiment=experiment, parent_run_id=parent_run_id
    ) as ctx:
        if not ctx.cached:
            from tasks.finetune import soup

            ctx.output = soup.run(spec, models, dataset, ctx)
    return record_output(ctx.output)


@flow(name="gate", log_prints=True)
def gate_stage(
    spec: GateSpec, model: str, dataset: str, experiment: str = "multistep", parent_run_id: OptionalStr = None
) -> str:
    """Score the challenger and the current champion on the dataset's test rows and move the champion alias if the policy says so."""
    inputs = promotion.inputs(spec, model, dataset, experiment)
    with stage_run(
        "gate", spec, inputs, code=STAGES["gate"].code, experiment=experiment, parent_run_id=parent_run_id
    ) as ctx:
        if not ctx.cached:
            from tasks.gate import stage as gate

            ctx.output = gate.run(spec, model, dataset, ctx)
    return record_output(ctx.output)


@dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    flow: Flow
    hardware: Literal["cpu", "gpu", "spec"]
    """The work pool it needs (DESIGN §4): data work on CPUs, anything that runs a model on a GPU; `spec`: its spec says."""
    field: str
    """The PipelineSpec field that holds its settings."""
    runs_if: str
    """The PipelineSpec field whose presence runs it (data is prepared for pretraining, labeled data for fine-tuning)."""
    code: str
    """The module its body runs: that module's import closure is the stage's code version (tasks/code.py)."""
    inputs: tuple[str, ...]
    """Its URI parameters."""
    output: str
    """What the URI it returns names."""


# The order is the DAG's (DESIGN §2).
STAGES: dict[str, Stage] = {
    s.flow.name: s
    for s in (
        Stage(prepare_stage, "cpu", "data", "pretrain", "tasks.data.prepare", ("tokenizer_from",), "dataset"),
        Stage(pretrain_stage, "gpu", "pretrain", "pretrain", "tasks.pretrain.stage", ("dataset",), "model"),
        Stage(
            evaluate_stage, "gpu", "evaluate", "evaluate", "tasks.evaluate.stage", ("model", "dataset"), "evaluation"
        ),
        Stage(transfer_stage, "gpu", "transfer", "transfer", "tasks.transfer.surgery", ("model",), "model"),
        Stage(prepare_labeled_stage, "cpu", "labeled", "finetune", "tasks.data.labeled.stage", (), "dataset"),
        Stage(
            augment_stage,
            "spec",
            "augment",
            "augment",
            "tasks.augment.stage",
            ("dataset", "teacher", "synonym_model"),
            "dataset",
        ),
        Stage(finetune_stage, "gpu", "finetune", "finetune", "tasks.finetune.stage", ("model", "dataset"), "model"),
        Stage(soup_stage, "gpu", "soup", "soup", "tasks.finetune.soup", ("models", "dataset"), "model"),
        Stage(gate_stage, "gpu", "gate", "gate", "tasks.gate.stage", ("model", "dataset"), "decision"),
    )
}
