"""Stage flows: each wraps one stage function in its own MLflow run (cache hit, resume, lineage).

A worker runs each stage flow in a fresh process that first imports this module, so only light modules are imported
here: a stage module loads torch and transformers inside the functions that run the stage (tests/flows/test_imports.py).
"""

from prefect import flow

from flows.dispatch import record_output

from tasks import augment, evaluate, finetune, gate, pretrain, transfer
from tasks.augment import AugmentSpec
from tasks.data import labeled, sources
from tasks.data.labeled import LabeledSpec
from tasks.data.spec import PrepareSpec
from tasks.evaluate import EvaluateSpec
from tasks.finetune import FinetuneSpec
from tasks.gate import GateSpec
from tasks.pretrain import PretrainSpec
from tasks.transfer import TransferSpec
from tasks.tracking import configure, digest, resolve_version, run_stage


@flow(name="prepare", log_prints=True)
def prepare_stage(spec: PrepareSpec, tokenizer_from: str | None = None, experiment: str = "multistep", parent_run_id: str | None = None) -> str:
    """Read, validate, clean, deduplicate, split, tokenize and pack the sources; returns a dataset URI."""
    from tasks.data import prepare  # here: unlike the stage modules above, this is the body itself, and imports transformers

    found = sources.source_digests(spec)  # validates every source before any run is opened
    inputs = {f"source{i}": uri for i, uri in enumerate(spec.sources)}
    digests = {f"source{i}": found[uri] for i, uri in enumerate(spec.sources)}
    if tokenizer_from:
        inputs["tokenizer_from"], digests["tokenizer_from"] = tokenizer_from, digest(tokenizer_from)
    return record_output(run_stage(
        "prepare", spec, inputs, lambda ctx: prepare.run(spec, tokenizer_from, ctx),
        experiment=experiment, parent_run_id=parent_run_id, digests=digests,
    ))


@flow(name="pretrain", log_prints=True)
def pretrain_stage(spec: PretrainSpec, dataset: str, name: str, experiment: str = "multistep", parent_run_id: str | None = None) -> str:
    """Pretrain a causal LM on a dataset URI and register it as `<name>-base`; returns the model version URI."""
    register_as = name + spec.register_suffix
    inputs = {"dataset": dataset, **({"init": spec.init} if spec.init else {})}
    return record_output(run_stage(
        "pretrain", spec, inputs, lambda ctx: pretrain.run(spec, dataset, register_as, ctx),
        experiment=experiment, parent_run_id=parent_run_id, params={"register_as": register_as},
    ))


@flow(name="evaluate", log_prints=True)
def evaluate_stage(spec: EvaluateSpec, model: str, dataset: str, experiment: str = "multistep", parent_run_id: str | None = None) -> str:
    """Score a model URI on a dataset URI; returns the evaluation report URI."""
    return record_output(run_stage(
        "evaluate", spec, {"model": model, "dataset": dataset}, lambda ctx: evaluate.run(spec, model, dataset, ctx),
        experiment=experiment, parent_run_id=parent_run_id,
    ))


@flow(name="transfer", log_prints=True)
def transfer_stage(spec: TransferSpec, model: str, name: str, experiment: str = "multistep", parent_run_id: str | None = None) -> str:
    """Structure surgery on a model URI (drop/insert blocks, add tokens, new head); returns the new version's URI."""
    register_as = name + spec.register_suffix
    return record_output(run_stage(
        "transfer", spec, {"model": model}, lambda ctx: transfer.run(spec, model, register_as, ctx),
        experiment=experiment, parent_run_id=parent_run_id, params={"register_as": register_as},
    ))


@flow(name="prepare-labeled", log_prints=True)
def prepare_labeled_stage(spec: LabeledSpec, experiment: str = "multistep", parent_run_id: str | None = None) -> str:
    """Read, validate and split labeled data for fine-tuning; returns a dataset URI."""
    digests = labeled.source_digests(spec)  # validates that every source exists before any run is opened
    inputs = {name: uri for name, uri in labeled.source_names(spec).items()}
    return record_output(run_stage(
        "prepare-labeled", spec, inputs, lambda ctx: labeled.run(spec, ctx),
        experiment=experiment, parent_run_id=parent_run_id, digests=digests,
    ))


@flow(name="augment", log_prints=True)
def augment_stage(
    spec: AugmentSpec, dataset: str, teacher: str | None = None, synonym_model: str | None = None, round: int | None = None,
    experiment: str = "multistep", parent_run_id: str | None = None,
) -> str:
    """Add EDA edits, pseudo-labels and adversarial examples to a labeled dataset URI's training rows; returns the new dataset URI."""
    inputs = {"dataset": dataset, **({"teacher": teacher} if teacher else {}), **({"synonym_model": synonym_model} if synonym_model else {})}
    digests = {name: digest(uri) for name, uri in inputs.items()}
    if spec.pseudo and teacher:  # the pool is read only when there is a teacher to label it
        for i, src in enumerate(spec.pseudo.pool):
            inputs[f"pool{i}"], digests[f"pool{i}"] = src, sources.digest(src, spec.pseudo)
    return record_output(run_stage(
        "augment", spec, inputs, lambda ctx: augment.run(spec, dataset, teacher, synonym_model, ctx),
        experiment=experiment, parent_run_id=parent_run_id, digests=digests, params={"hardware": spec.hardware}, round=round,
    ))


@flow(name="finetune", log_prints=True)
def finetune_stage(
    spec: FinetuneSpec, model: str, dataset: str, name: str, round: int | None = None,
    experiment: str = "multistep", parent_run_id: str | None = None,
) -> str:
    """Fine-tune a model URI on a labeled dataset URI and register the best checkpoint as `<name>`."""
    register_as = name + spec.register_suffix
    return record_output(run_stage(
        "finetune", spec, {"model": model, "dataset": dataset}, lambda ctx: finetune.run(spec, model, dataset, register_as, ctx),
        experiment=experiment, parent_run_id=parent_run_id, params={"register_as": register_as}, round=round,
    ))


@flow(name="gate", log_prints=True)
def gate_stage(
    spec: GateSpec, model: str, dataset: str, max_length: int = 128, max_new_tokens: int = 48, experiment: str = "multistep", parent_run_id: str | None = None,
) -> str:
    """Score the challenger and the current champion on the dataset's test rows and move the champion alias if the policy says so."""
    inputs = {"model": model, "dataset": dataset}
    configure(experiment)
    version = resolve_version(model)
    champion = gate.holder(version.name, spec.alias)
    # Another holder is another decision, so it enters the stage key; a challenger that already holds the alias (a rerun
    # after its promotion) keeps the key of the decision that promoted it, and the rerun is a cache hit.
    if champion and champion != f"models:/{version.name}/{version.version}":
        inputs["champion"] = champion
    return record_output(run_stage(
        "gate", spec, inputs, lambda ctx: gate.run(spec, model, dataset, ctx, max_length, max_new_tokens),
        experiment=experiment, parent_run_id=parent_run_id,
    ))
