"""Links between the two UIs, built from the configured servers: MLflow pages that open in its training mode, and Prefect
flow-run pages.

MLflow 3.17 opens in its GenAI mode (traces, evaluations, no model registry in the sidebar). Two settings switch it: the
`workflowType` query parameter of a page, and the experiment tag `mlflow.experimentKind`, which every experiment this
project creates carries (tasks/backend.py).
"""

import os
import urllib.parse

from mlflow.tracking import MlflowClient

from tasks.backend import tracking_uri

TRAINING_MODE = "workflowType=machine_learning"

# What `make ui` serves for the embedded stores; the servers of `make stack` or a team stack are read from the environment.
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"
LOCAL_PREFECT_UI = "http://127.0.0.1:4200"


def mlflow_ui() -> str:
    """The MLflow UI: `MULTISTEP_MLFLOW_UI`, else the tracking server, else what `make ui` serves for the embedded store."""
    uri = tracking_uri()
    served = uri if uri.startswith(("http://", "https://")) else LOCAL_MLFLOW_UI
    return os.environ.get("MULTISTEP_MLFLOW_UI", served).rstrip("/")


def prefect_ui() -> str:
    """The Prefect UI: `PREFECT_UI_URL`, else the API server's own UI, else what `make ui` serves for the embedded store."""
    api = os.environ.get("PREFECT_API_URL", "")
    served = api.rstrip("/").removesuffix("/api") if api else LOCAL_PREFECT_UI
    return os.environ.get("PREFECT_UI_URL", served).rstrip("/")


def experiment(experiment_id: str) -> str:
    """The experiment's runs table."""
    return f"{mlflow_ui()}/#/experiments/{experiment_id}/runs?{TRAINING_MODE}"


def run(experiment_id: str, run_id: str) -> str:
    """One MLflow run's page: params, metrics, artifacts, description."""
    return f"{mlflow_ui()}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_MODE}"


def model(name: str, version: str | None = None) -> str:
    """A registered model (its versions and aliases), or one version of it."""
    path = f"models/{urllib.parse.quote(name, safe='')}"
    return f"{mlflow_ui()}/#/{path}{f'/versions/{version}' if version else ''}?{TRAINING_MODE}"


def model_uri(uri: str) -> str:
    """The page of a `models:/name/version` URI (other URIs are returned as they are)."""
    if not uri.startswith("models:/"):
        return uri
    name, _, version = uri.removeprefix("models:/").partition("/")
    return model(name, version or None)


def flow_run(flow_run_id: str) -> str:
    """A Prefect flow run's page: its logs, artifacts, sub-flow runs."""
    return f"{prefect_ui()}/runs/flow-run/{flow_run_id}"


def prefect_tags() -> dict[str, str]:
    """The current Prefect flow run as MLflow tags (none outside a flow run)."""
    from prefect.runtime import flow_run as this

    return {"prefect.flow_run_id": this.id, "prefect.flow_run_name": this.name} if this.id else {}


def tag_flow_run(mlflow_run_id: str) -> None:
    """Tag the current Prefect flow run with the MLflow run and leave a link artifact to its page, the other half of the
    two-way link (the MLflow run carries `prefect.flow_run_id` and a description that links back)."""
    from prefect import get_client
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run as this

    if not this.id:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(this.id)
        client.update_flow_run(this.id, tags=[*current.tags, f"mlflow-run:{mlflow_run_id}"])
    found = MlflowClient().get_run(mlflow_run_id)
    create_link_artifact(
        run(found.info.experiment_id, mlflow_run_id),
        link_text=f"MLflow run {found.info.run_name}",
        key="mlflow-run",
        description="This flow run's MLflow run: params, metrics, artifacts, the registered model",
    )
    MlflowClient().set_tag(mlflow_run_id, "mlflow.note.content", f"Prefect flow run [{this.name}]({flow_run(this.id)})")
