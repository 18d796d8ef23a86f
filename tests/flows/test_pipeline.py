"""The walking skeleton end to end, in-process against a real Prefect API and an embedded MLflow store."""

import json
import re
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks import code, links, tracking
from tasks.data import prepared

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def run(tiny_overrides):
    def run(corpus: Path, *extra: str, name: str = "tiny") -> dict[str, str]:
        return llm_pipeline(load("configs/default.yaml", tiny_overrides(corpus, name) + list(extra)))

    return run


def stage_runs(pipeline_run_id: str) -> dict[str, mlflow.entities.Run]:
    client = MlflowClient()
    parent = client.get_run(pipeline_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{pipeline_run_id}'")
    return {r.data.tags[tracking.STAGE]: r for r in children}


def test_pipeline_registers_a_loadable_model_with_lineage_and_metrics(home, corpus, run):
    result = run(corpus)
    assert result["model"] == "models:/tiny-base/1"

    # One nested MLflow run per stage, each linked both ways with its Prefect flow run.
    stages = stage_runs(result["pipeline_run"])
    assert set(stages) == {"prepare", "pretrain", "evaluate", "gate"}
    from prefect import get_client

    with get_client(sync_client=True) as prefect:
        for run_ in stages.values():
            flow_run = prefect.read_flow_run(run_.data.tags[tracking.PREFECT_FLOW_RUN])
            assert f"mlflow-run:{run_.info.run_id}" in flow_run.tags

    # The dataset behind the URI: splits, card, tokenizer.
    card = prepared.card(result["dataset"])
    assert card["filters"]["rows_in"] >= card["filters"]["rows_out"] > 0
    assert all(card["splits"][s]["blocks"] > 0 for s in ("train", "validation", "test"))
    assert (
        card["contamination"]["ngram"] == 13
        and card["contamination"]["test"]["eval_rows"] == card["splits"]["test"]["rows"]
    )
    assert prepared.load_blocks(result["dataset"], "train").shape[1] == 32
    assert any(i.dataset.name == "prepare-train" for i in stages["prepare"].inputs.dataset_inputs)

    # Training metrics in the stage run.
    history = MlflowClient().get_metric_history(stages["pretrain"].info.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert stages["pretrain"].data.metrics["tokens_per_second"] > 0

    # Lineage and evaluation on the version.
    version = MlflowClient().get_model_version("tiny-base", "1")
    tags = version.tags
    assert tags[tracking.STAGE] == "pretrain"
    assert tags[tracking.STAGE_KEY] == stages["pretrain"].data.tags[tracking.STAGE_KEY]
    assert tags["multistep.input.dataset"] == result["dataset"]
    assert tags["multistep.pipeline_run"] == result["pipeline_run"]
    assert tags[tracking.PREFECT_FLOW_RUN] and tags["git.commit"]
    # the code pretraining runs, not the whole package
    assert tags["multistep.code_version"] == code.version("tasks.pretrain.stage")
    evaluation = MlflowClient().get_run(stages["evaluate"].info.run_id).data.metrics
    assert float(tags["metric.validation_perplexity"]) == pytest.approx(evaluation["validation_perplexity"], rel=1e-4)
    assert evaluation["test_unigram_perplexity"] > 1

    # Loadable three ways: from_pretrained on the files, the transformers flavour, pyfunc.
    root = Path(mlflow.artifacts.download_artifacts(result["model"]))
    assert list((root / "model").glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(root / "model", use_safetensors=True)
    flavour = mlflow.transformers.load_model(result["model"], return_type="components")
    for (name, a), b in zip(model.state_dict().items(), flavour["model"].state_dict().values()):
        assert torch.equal(a, b), name
    generated = mlflow.pyfunc.load_model(result["model"]).predict(["The "])
    assert isinstance(generated[0], str) and generated[0]
    # The logged model behind the version is named like the registered model (not "model"), in MLflow's model list.
    source = MlflowClient().get_model_version("tiny-base", "1").source
    assert mlflow.get_logged_model(source.removeprefix("models:/")).name == "tiny-base"

    check_the_uis_name_summarise_and_link(result, stages)


def check_the_uis_name_summarise_and_link(result: dict[str, str], stages: dict[str, mlflow.entities.Run]) -> None:
    """Issue 14: names that say what a run is, a pipeline run that summarises, links both ways, training mode."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    client = MlflowClient()
    parent = client.get_run(result["pipeline_run"])
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow opens it as training
    with get_client(sync_client=True) as prefect:
        pipeline_flow_run = prefect.read_flow_run(parent.data.tags[tracking.PREFECT_FLOW_RUN])
        assert re.fullmatch(r"tiny-\d{4}-\d{4}", pipeline_flow_run.name)
        assert parent.info.run_name == pipeline_flow_run.name  # the Prefect name carried into MLflow
        for stage, run_ in stages.items():
            assert run_.info.run_name == f"tiny/{stage}"
            stage_flow_run = prefect.read_flow_run(run_.data.tags[tracking.PREFECT_FLOW_RUN])
            assert stage_flow_run.name == f"{pipeline_flow_run.name} · {stage}"
            [link] = prefect.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["mlflow-run"])),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[stage_flow_run.id])),
            )
            assert links.run(parent.info.experiment_id, run_.info.run_id) in link.data
            assert links.flow_run(str(stage_flow_run.id)) in run_.data.tags["mlflow.note.content"]
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[pipeline_flow_run.id])))
        assert any("stages:" in log.message and "registered: models:/tiny-base/1" in log.message for log in logs)
        [summary] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline_flow_run.id])),
        )
    # The pipeline's MLflow run summarises: the spec as params, the final model's metrics, output URIs, the summary.
    data = parent.data
    assert data.params["pretrain.train.max_steps"] == "6" and data.params["name"] == "tiny"
    version_metrics = {
        k.removeprefix("metric."): float(v)
        for k, v in client.get_model_version("tiny-base", "1").tags.items()
        if k.startswith("metric.")
    }
    assert version_metrics and data.metrics == pytest.approx(version_metrics)
    assert data.tags["multistep.output.model"] == result["model"] == data.tags["multistep.output.base"]
    assert data.tags["multistep.output.dataset"] == result["dataset"]
    assert (
        data.tags["gate.decision"] == "rejected"
    )  # six steps do not beat the unigram baseline (tests/flows/test_gate.py)
    description = data.tags["mlflow.note.content"]
    assert links.flow_run(str(pipeline_flow_run.id)) in description and links.model("tiny-base", "1") in description
    assert "stages:" in description and "registered: models:/tiny-base/1" in description
    assert links.run(parent.info.experiment_id, parent.info.run_id) in summary.data and "stages:" in summary.data


def test_unchanged_rerun_reuses_every_stage(home, corpus, caplog, run):
    first = run(corpus)
    caplog.clear()
    second = run(corpus)
    assert {k: second[k] for k in ("dataset", "model", "evaluation")} == {
        k: first[k] for k in ("dataset", "model", "evaluation")
    }
    assert stage_runs(second["pipeline_run"]) == {}  # nothing ran again
    said = caplog.text  # flows log their prints
    assert all(f"{stage}: cache hit" in said for stage in ("prepare", "pretrain", "evaluate", "gate"))
    tags = MlflowClient().get_run(second["pipeline_run"]).data.tags
    assert {
        "multistep.reused.prepare",
        "multistep.reused.pretrain",
        "multistep.reused.evaluate",
        "multistep.reused.gate",
    } <= set(tags)
    assert len(MlflowClient().search_model_versions("name = 'tiny-base'")) == 1


def test_changed_file_under_the_same_path_misses_the_cache(home, corpus, run):
    first = run(corpus)
    corpus.write_text(corpus.read_text() + "\n\nOne more paragraph about the data model and its objects.\n")
    second = run(corpus)
    assert second["dataset"] != first["dataset"]
    assert set(stage_runs(second["pipeline_run"])) == {"prepare", "pretrain", "evaluate", "gate"}
    assert second["model"] == "models:/tiny-base/2"


def test_changed_spec_misses_only_the_stages_it_reaches(home, corpus, run):
    first = run(corpus)
    second = run(corpus, "evaluate.max_blocks=8")
    assert second["model"] == first["model"]
    assert set(stage_runs(second["pipeline_run"])) == {"evaluate"}


def test_registration_is_idempotent_for_a_stage_key(home, corpus, run):
    from tasks import registry

    result = run(corpus)
    pretrain_run = stage_runs(result["pipeline_run"])["pretrain"]
    ctx = tracking.StageRun(
        "pretrain",
        pretrain_run.info.run_id,
        pretrain_run.data.tags[tracking.STAGE_KEY],
        code.version("tasks.pretrain.stage"),
        {},
        {},
        None,
        resumed=True,
    )
    source = MlflowClient().get_model_version("tiny-base", "1").source
    assert registry.register(source, "tiny-base", ctx) == "models:/tiny-base/1"
    assert len(MlflowClient().search_model_versions("name = 'tiny-base'")) == 1


def test_spec_is_logged_without_changes(home, corpus, run):
    result = run(corpus)
    logged = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{result['pipeline_run']}/spec.json")).read_text()
    )
    assert logged["name"] == "tiny" and logged["data"]["block_size"] == 32


def test_continued_pretraining_from_a_registered_version(home, corpus, run):
    from tasks.errors import UserError

    base = run(corpus)
    # log_every 4 of 6 steps: the last step's loss is logged too, so that the curve reaches the end of a short run
    more = run(
        corpus, f"pretrain.init={base['model']}", "data.tokenizer.kind=model", "pretrain.train.log_every=4", name="more"
    )
    assert more["model"] == "models:/more-base/1"
    more_run = MlflowClient().get_model_version("more-base", "1").run_id
    assert [m.step for m in MlflowClient().get_metric_history(more_run, "loss")] == [4, 6]
    version = MlflowClient().get_model_version("more-base", "1")
    assert version.tags["multistep.parent_model"] == base["model"]
    assert version.tags["multistep.input.init"] == base["model"]
    # The dataset was encoded with the parent's tokenizer, so the vocabularies agree.
    assert prepared.card(more["dataset"])["tokenizer"]["from"] == base["model"]

    with pytest.raises(
        UserError, match=r"data.block_size \(64\) is larger than the 32 positions of models:/tiny-base/1"
    ):
        run(corpus, f"pretrain.init={base['model']}", "data.tokenizer.kind=model", "data.block_size=64", name="long")
    assert MlflowClient().search_model_versions("name = 'long-base'") == []
