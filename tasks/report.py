"""The end-of-run summary: what ran, what was reused, where results are, how to browse them."""

import os
from collections.abc import Iterable

from mlflow.tracking import MlflowClient

from tasks.backend import tracking_uri
from tasks.tracking import STAGE


def pipeline_summary(result: dict[str, str], wall_seconds: float, stages: Iterable[str]) -> str:
    """A few lines for the terminal, read back from MLflow so they show what was recorded; `stages` in the DAG's order."""
    client = MlflowClient()
    parent = client.get_run(result["pipeline_run"])
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    ran = {}
    for r in sorted(children, key=lambda r: r.info.start_time):  # self-training rounds run a stage more than once
        ran.setdefault(r.data.tags.get(STAGE), []).append(r)
    lines = [
        f"multistep: pipeline {parent.data.tags.get('multistep.pipeline')} finished in {wall_seconds:.1f} s",
        "stages:",
    ]
    train_seconds = 0.0
    for stage in stages:
        for run in ran.get(stage, []):
            # A resumed run was opened by an earlier attempt: show the part of it that this pipeline run spent.
            resumed = run.info.start_time < parent.info.start_time
            start = max(run.info.start_time, parent.info.start_time)
            took = max(0, (run.info.end_time or start) - start) / 1000
            lines.append(
                f"  {run.info.run_name:<15} {'resumed' if resumed else 'ran':<7} {took:6.1f} s  MLflow run {run.info.run_id}"
            )
            train_seconds += run.data.metrics.get("train_seconds", 0.0)
        if stage not in ran and f"multistep.reused.{stage}" in parent.data.tags:
            lines.append(
                f"  {stage:<15} reused  (cache hit) MLflow run {parent.data.tags[f'multistep.reused.{stage}']}"
            )
    lines.append(
        f"MLflow:     pipeline run {parent.info.run_id}, experiment id {parent.info.experiment_id}, store {tracking_uri()}"
    )
    lines.append(f"registered: {', '.join(result[k] for k in ('base', 'transferred', 'finetuned') if k in result)}")
    evaluation = (
        client.get_run(result["evaluation"].removeprefix("runs:/").split("/")[0]).data.metrics
        if "evaluation" in result
        else {}
    )
    for split in ("validation", "test"):
        if f"{split}_perplexity" in evaluation:
            lines.append(
                f"{split:<11} perplexity {evaluation[f'{split}_perplexity']:.2f}   "
                f"(unigram baseline {evaluation[f'{split}_unigram_perplexity']:.2f})"
            )
    if "finetuned" in result:
        name, version = result["finetuned"].removeprefix("models:/").split("/")
        tags = client.get_model_version(name, version).tags
        shown = [
            f"{k.removeprefix('metric.')} {float(v):.4g}"
            for k, v in sorted(tags.items())
            if k.startswith("metric.") and "loss" not in k
        ]
        lines.append(f"finetuned:  {', '.join(shown)}")
    if "gate" in result:
        name, version = result["model"].removeprefix("models:/").split("/")
        tags = client.get_model_version(name, version).tags
        if "gate.decision" in tags:
            lines.append(f"gate:       {tags['gate.decision']} — {tags.get('gate.reason', '')}")
    if train_seconds:
        lines.append(f"time:       {train_seconds:.1f} s training of {wall_seconds:.1f} s wall")
    lines += [
        _browse(),
        f"            python -c \"import mlflow; print(mlflow.transformers.load_model('{result['model']}'))\"",
    ]
    return "\n".join(lines)


def _browse() -> str:
    """Where to look: the servers this run used, or `make ui` for the embedded stores."""
    prefect, mlflow_uri = os.environ.get("PREFECT_API_URL"), os.environ.get("MLFLOW_TRACKING_URI", "")
    if prefect and mlflow_uri.startswith("http"):
        return f"browse:     Prefect {prefect.removesuffix('/api')} and MLflow {mlflow_uri}"
    return "browse:     make ui   → Prefect http://127.0.0.1:4200 and MLflow http://127.0.0.1:5000"
