"""Links between the UIs, built from the configured servers, and names that say what a run is."""

import re

import mlflow
from mlflow.tracking import MlflowClient

from flows.pipeline import name_for
from flows.spec import PipelineSpec
from tasks import links
from tasks.backend import configure


def test_links_point_at_the_configured_servers_and_open_mlflow_in_training_mode(monkeypatch):
    monkeypatch.delenv("MULTISTEP_MLFLOW_UI", raising=False)
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # The embedded stores: what `make ui` serves.
    assert links.run("3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert links.flow_run("f-1") == "http://127.0.0.1:4200/runs/flow-run/f-1"
    # A team stack: the servers the environment names.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000/")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
    assert links.experiment("3") == "http://mlflow.internal:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert links.flow_run("f-1") == "http://prefect.internal:4200/runs/flow-run/f-1"
    assert (
        links.model_uri("models:/sst2 minilm/4")
        == "http://mlflow.internal:5000/#/models/sst2%20minilm/versions/4?workflowType=machine_learning"
    )
    assert links.model_uri("runs:/abc/model") == "runs:/abc/model"
    # Behind a proxy the UIs have addresses of their own.
    monkeypatch.setenv("MULTISTEP_MLFLOW_UI", "https://ml.example.com")
    monkeypatch.setenv("PREFECT_UI_URL", "https://flows.example.com/")
    assert links.model("m") == "https://ml.example.com/#/models/m?workflowType=machine_learning"
    assert links.flow_run("f-1") == "https://flows.example.com/runs/flow-run/f-1"


def test_experiments_are_marked_as_model_training_new_or_old(home):
    new = configure("fresh")
    client = MlflowClient()
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    old = mlflow.create_experiment("made-before")  # by hand, or by an older multistep: MLflow opens it in GenAI mode
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert configure("made-before") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_pipeline_run_keeps_a_typed_name_and_names_itself_otherwise():
    spec = PipelineSpec(name="sst2-minilm")
    assert name_for("lr 3e-4 trial", spec) == "lr 3e-4 trial"  # typed in the Prefect form
    assert name_for("none seed 1", spec) == "none seed 1"  # a sweep's cell
    # Prefect's own random two words, or no name yet: the pipeline's name and the time.
    assert re.fullmatch(r"sst2-minilm-\d{4}-\d{4}", name_for("classy-jackalope", spec))
    assert re.fullmatch(r"sst2-minilm-\d{4}-\d{4}", name_for(None, spec.model_dump(mode="json")))
