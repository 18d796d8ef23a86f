"""What a user reads after a tiny pipeline (issue 14): the registry's model and version descriptions, and the training
progress, checkpoints, evaluation and gate decision as lines in the Prefect flow runs' logs."""

import re

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks import descriptions, links, registry, tracking

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_a_tiny_pipeline_describes_its_model_and_logs_its_progress(home, corpus, tiny_overrides, flow_run_logs):
    # 7 steps, logged and checkpointed every 3: lines at 3 and 6, and at 7, the last step, which is no multiple of 3
    overrides = tiny_overrides(corpus, steps=7) + ["pretrain.train.log_every=3", "pretrain.train.checkpoint_every=3"]
    result = llm_pipeline(load("configs/default.yaml", overrides))
    client = MlflowClient()
    parent = client.get_run(result["pipeline_run"])
    runs = {
        r.data.tags[tracking.STAGE]: r
        for r in client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    }
    pretrain, prepare = runs["pretrain"], runs["prepare"]

    # Prefect: the pretrain flow run's log has the loss at each log_every step and the last, and every checkpoint.
    said = flow_run_logs(pretrain.data.tags[tracking.PREFECT_FLOW_RUN])
    losses = [m for m in said if re.fullmatch(r"pretrain: step \d+/7 loss \d+\.\d{4}, lr \S+", m)]
    assert [int(m.split()[2].split("/")[0]) for m in losses] == [3, 6, 7]
    history = client.get_metric_history(pretrain.info.run_id, "loss")
    assert [m.step for m in history] == [3, 6, 7]
    assert losses[-1].startswith(f"pretrain: step 7/7 loss {history[-1].value:.4f}")  # the value MLflow holds
    store = f"{pretrain.info.artifact_uri}/checkpoints"  # beside the run's artifacts
    saved = [m for m in said if " saved checkpoint-" in m]
    assert saved == [f"pretrain: step {s}/7 saved checkpoint-{s} to {store}/checkpoint-{s}" for s in (3, 6, 7)]
    # The evaluate flow run's log has its results, with the values on its MLflow run; the gate's has the decision.
    evaluation = runs["evaluate"].data.metrics
    assert (
        f"evaluate: test perplexity {evaluation['test_perplexity']:.2f} "
        f"(unigram baseline {evaluation['test_unigram_perplexity']:.2f})"
    ) in flow_run_logs(runs["evaluate"].data.tags[tracking.PREFECT_FLOW_RUN])
    version = client.get_model_version("tiny-base", "1")
    gate_said = flow_run_logs(runs["gate"].data.tags[tracking.PREFECT_FLOW_RUN])
    assert any(m.startswith(f"gate: {version.tags['gate.decision']}") for m in gate_said)

    # The version's description: family, preset, source run, dataset run, Prefect flow run, metrics, gate, load.
    text = version.description
    assert text.startswith("**models:/tiny-base/1**: causal LM pretrained from scratch.")
    assert f"**Pipeline (preset):** `tiny`, run [{parent.info.run_name}]" in text
    assert (
        f"**Stage:** `pretrain`, source run [tiny/pretrain]"
        f"({links.run(parent.info.experiment_id, pretrain.info.run_id)}) (`{pretrain.info.run_id}`)"
    ) in text
    assert "**Started from:** scratch" in text
    assert f"**Dataset:** `{result['dataset']}`, made by run [tiny/prepare]" in text
    assert result["dataset"].startswith(f"runs:/{prepare.info.run_id}/") and f"(`{prepare.info.run_id}`)" in text
    assert links.flow_run(pretrain.data.tags[tracking.PREFECT_FLOW_RUN]) in text
    assert f"**Test metrics:** test_loss {float(version.tags['metric.test_loss']):.4g}, test_perplexity" in text
    assert (
        f"**Gate:** {version.tags['gate.decision']} — {version.tags['gate.reason']} "
        f"(`{version.tags['gate.metric']}` this version {float(version.tags['gate.challenger_value']):.4g}"
    ) in text
    assert 'pipe = mlflow.transformers.load_model("models:/tiny-base/1")' in text
    assert all(v != "" for v in version.tags.values())  # the registry shows empty tags as clutter

    # The registered model's description: what the name is, how aliases are used, how to load the champion.
    model = client.get_registered_model("tiny-base").description
    assert model.startswith(
        "**tiny-base**: causal LM pretrained from scratch; each version is one run of the `pretrain`"
    )
    assert "`@champion` is the version the gate promoted" in model
    assert 'pipe = mlflow.transformers.load_model("models:/tiny-base@champion")' in model
    assert links.experiment(parent.info.experiment_id) in model and model.endswith(descriptions.MARK)

    # A description a person wrote stays; an emptied one is written again.
    client.update_registered_model("tiny-base", description="Our team's notes")
    registry.describe("models:/tiny-base/1", model=True)
    assert client.get_registered_model("tiny-base").description == "Our team's notes"
    client.update_registered_model("tiny-base", description="")
    registry.describe("models:/tiny-base/1", model=True)
    assert client.get_registered_model("tiny-base").description == model
