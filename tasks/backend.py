"""The MLflow backend store this process tracks to (runs, metrics, the registry): the embedded SQLite store under
MULTISTEP_HOME, or the server MLFLOW_TRACKING_URI names; checked, created once, and made MLflow's. Artifacts have a store
of their own (tasks/storage.py)."""

import functools
import os
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tasks import dbtemplate
from tasks.errors import UserError

# The experiment tag MLflow's UI reads to open an experiment as model training (runs, metrics, the registry) rather than
# in its GenAI mode (traces, evaluations); tasks/links.py adds the URL parameter that does the same for a page.
KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"


def home() -> Path:
    """Where the embedded stack keeps its state (`MULTISTEP_HOME`, default `.multistep`)."""
    return Path(os.environ.get("MULTISTEP_HOME", ".multistep")).resolve()


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store under `.multistep/`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def configure(experiment: str) -> str:
    """Point MLflow at the tracking store, check that it answers, and return the experiment id."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        from tasks.storage import serve_artifacts_directly

        serve_artifacts_directly()
    elif uri.startswith("sqlite:///"):
        _create_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        if exp.tags.get(KIND) != TRAINING:  # made before this setting, or by hand: MLflow would open it in GenAI mode
            MlflowClient().set_experiment_tag(exp.experiment_id, KIND, TRAINING)
        return exp.experiment_id
    # The embedded store keeps artifacts beside its database; a server decides for itself.
    location = (home() / "artifacts").as_uri() if uri.startswith("sqlite:") else None
    try:
        return mlflow.create_experiment(experiment, artifact_location=location, tags={KIND: TRAINING})
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent stage
        return mlflow.get_experiment_by_name(experiment).experiment_id


@functools.cache
def _create_sqlite_store(uri: str) -> None:
    """Create (or upgrade) the embedded store's tables once, under a file lock: two first runs migrating at once broke each other."""
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        fresh = not db.exists() and not dbtemplate.seed(db, "mlflow")
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the tracking store's tables, and its Default experiment
        client.search_registered_models(max_results=1)  # the registry's, which its own store creates
        if fresh:  # migrated just now: the next fresh home copies it, without the Default experiment's path in this one
            dbtemplate.keep(db, "mlflow", clear="DELETE FROM experiments;")


def check_server(uri: str) -> None:
    """Fail with one sentence when the tracking server does not answer."""
    # MLflow's own client retries for minutes before giving up; one short probe says it at once.
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"The MLflow tracking server at {uri} is unreachable ({reason}): start it (`make ui`) "
            "or unset MLFLOW_TRACKING_URI to use the embedded store under .multistep/."
        ) from None
