"""The model registry: idempotent registration keyed by stage key, version tags."""

import time

import mlflow
from mlflow.tracking import MlflowClient

from tasks import descriptions
from tasks.errors import UserError
from tasks.tracking import STAGE_KEY, StageRun, resolve_version

# The lengths a fine-tuned version was trained and scored with, so the gate scores it alike without the pipeline passing them.
MAX_LENGTH, MAX_NEW_TOKENS = "multistep.max_length", "multistep.max_new_tokens"


def find_version(name: str, key: str) -> str | None:
    """The version of `name` registered by a stage with this key, if any."""
    try:
        found = MlflowClient().search_model_versions(f"name = '{name}' and tags.`{STAGE_KEY}` = '{key}'")
    except mlflow.exceptions.MlflowException:  # no such registered model yet
        return None
    return f"models:/{name}/{min(int(v.version) for v in found)}" if found else None


def register(
    model_uri: str, name: str, ctx: StageRun, tags: dict[str, str] | None = None, task: str | None = None
) -> str:
    """Register a logged model (`models:/m-…`) or a folder of files in the run's artifacts, once per stage key;
    `task`: the mlflow.transformers task it was logged for (its description says what it is and how to load it)."""
    existing = find_version(name, ctx.key)
    if existing:
        return existing
    tags = {**ctx.lineage(), **(tags or {}), **({descriptions.TASK: task} if task else {})}
    tags = {k: v for k, v in tags.items() if v != ""}  # the registry UI shows empty ones
    client = MlflowClient()
    if model_uri.startswith("models:/"):
        version = mlflow.register_model(model_uri, name, tags=tags)
    else:  # plain files (a LoRA adapter): register_model only knows logged models
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException:  # it exists
            pass
        version = client.create_model_version(name, source=model_uri, run_id=ctx.run_id, tags=tags)
    # File and SQL stores answer READY at once; a server may take a moment to copy artifacts.
    deadline = time.monotonic() + 300
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.get_model_version(name, version.version)
    describe(f"models:/{name}/{version.version}", model=True)
    return f"models:/{name}/{version.version}"


def set_tags(version_uri: str, tags: dict[str, str | float]) -> None:
    """Tag a registered version (metrics and decisions ride on versions so the registry UI shows them) and rewrite its
    description, which is built from its tags."""
    name, version = version_uri.removeprefix("models:/").split("/")
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))
    describe(version_uri)


def describe(version_uri: str, model: bool = False) -> None:
    """Rewrite a version's description from its tags (the gate's `gate.*` included); with `model`, the registered
    model's too, unless a person replaced it with their own text."""
    version = resolve_version(version_uri)
    client = MlflowClient()
    client.update_model_version(version.name, version.version, description=descriptions.version_text(version))
    if model:
        current = client.get_registered_model(version.name).description or ""
        if not current.strip() or current.rstrip().endswith(descriptions.MARK):
            client.update_registered_model(version.name, description=descriptions.model_text(version))


def replace_tags(version_uri: str, prefix: str, tags: dict[str, str]) -> None:
    """Set `tags`, all named `<prefix>…`, and delete the version's other `<prefix>…` tags (left by an earlier decision)."""
    name, version = version_uri.removeprefix("models:/").split("/")
    client = MlflowClient()
    for stale in set(client.get_model_version(name, version).tags) - set(tags):
        if stale.startswith(prefix):
            client.delete_model_version_tag(name, version, stale)
    set_tags(version_uri, tags)


def metric(version_uri: str, name: str) -> float | None:
    """A metric the registering stage put on the version (`metric.<name>` tag), or None."""
    value = resolve_version(version_uri).tags.get(f"metric.{name}")
    return float(value) if value is not None else None


def retraining_start(name: str, alias: str, dataset: str, fallback: str | None) -> str:
    """Where scheduled retraining fine-tunes from: the alias's version, or, when that version already learned from
    `dataset`, the model it started from, so that unchanged data reruns the champion's own recipe (a cache hit)."""
    try:
        holder = MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        if fallback:
            print(f"retrain: models:/{name}@{alias} does not exist yet; fine-tuning from finetune.init ({fallback})")
            return fallback
        raise UserError(
            f"retraining starts from models:/{name}@{alias}, which does not exist: run the pipeline once so the gate names a "
            "champion, or set finetune.init to start from"
        ) from None
    learned = holder.tags.get("multistep.input.dataset", "")
    if dataset in (learned, _dataset_input(learned)) and holder.tags.get("multistep.input.model"):
        start = holder.tags["multistep.input.model"]
        print(
            f"retrain: models:/{name}/{holder.version} (@{alias}) already learned from {dataset}; repeating its recipe from {start}"
        )
        return start
    print(f"retrain: fine-tuning models:/{name}/{holder.version} (@{alias}) on {dataset}")
    return f"models:/{name}/{holder.version}"


def _dataset_input(uri: str) -> str | None:
    """The dataset an augmented dataset was made from (one augment hop), or None."""
    if not uri.startswith("runs:/"):
        return None
    run_id = uri.removeprefix("runs:/").split("/", 1)[0]
    try:
        return MlflowClient().get_run(run_id).data.tags.get("multistep.input.dataset")
    except mlflow.exceptions.MlflowException:
        return None
