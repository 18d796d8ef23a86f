"""The end-of-run summary: what ran, what was reused, where results are, how to browse them."""

import logging
import time
from collections.abc import Iterable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from tasks import links
from tasks.backend import tracking_uri
from tasks.descriptions import load_command
from tasks.errors import UserError
from tasks.tracking import (
    PIPELINE,
    PREFECT_FLOW_RUN,
    REUSED,
    ROUND,
    STAGE,
    flatten,
    public,
    resolve_version,
    reused_stage,
)


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
        entries = []  # (round, line): a rounds loop may reuse some rounds and run others
        for run in ran.get(stage, []):
            # A resumed run was opened by an earlier attempt: show the part of it that this pipeline run spent.
            resumed = run.info.start_time < parent.info.start_time
            start = max(run.info.start_time, parent.info.start_time)
            took = max(0, (run.info.end_time or start) - start) / 1000
            name, how = run.info.run_name.rpartition("/")[2], "resumed" if resumed else "ran"
            entries.append(
                (int(run.data.tags.get(ROUND, 0)), f"  {name:<15} {how:<7} {took:6.1f} s  MLflow run {run.info.run_id}")
            )
            train_seconds += run.data.metrics.get("train_seconds", 0.0)
        for tag, run_id in parent.data.tags.items():
            if (reused := reused_stage(tag)) and reused[0] == stage:
                entries.append((reused[1], f"  {tag.removeprefix(REUSED):<15} reused  (cache hit) MLflow run {run_id}"))
        lines += [line for _, line in sorted(entries, key=lambda entry: entry[0])]
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
        *_browse(parent.info.experiment_id, parent.info.run_id, result["model"]),
        f"load:       {_load(result['model'])}",
    ]
    return "\n".join(lines)


def _load(model: str) -> str:
    """How to load the final model: the transformers flavour, or the project's loader for an adapter or a span head."""
    try:
        tags = resolve_version(model).tags if model.startswith("models:/") else {}
    except UserError:  # deleted since: the flavour's line is the likelier one
        tags = {}
    return load_command(model, tags)


def _browse(experiment_id: str, run_id: str, model: str) -> list[str]:
    """Where to look: pages of the servers this run used, or of `make ui` for the embedded stores (MLflow in training mode)."""
    embedded = not tracking_uri().startswith(("http://", "https://"))
    return [
        "browse:     " + ("make ui, then open" if embedded else f"Prefect {links.prefect_ui()}"),
        f"  runs      {links.experiment(experiment_id)}",
        f"  pipeline  {links.run(experiment_id, run_id)}",
        f"  model     {links.model_uri(model)}",
    ]


def publish(result: dict[str, str], wall_seconds: float, stages: Iterable[str], spec: BaseModel) -> str:
    """Put the summary where each UI shows it, and return it: on the pipeline's MLflow run (description, the spec as
    params, the final model's metrics, output URIs as tags) and as a Prefect markdown artifact."""
    text = pipeline_summary(result, wall_seconds, stages)
    client, run_id = MlflowClient(), result["pipeline_run"]
    parent = client.get_run(run_id)
    tags = {f"multistep.output.{k}": v for k, v in result.items() if k != "pipeline_run" and v}
    metrics = {}
    if result.get("model", "").startswith("models:/"):
        name, version = result["model"].removeprefix("models:/").split("/")
        found = client.get_model_version(name, version).tags
        metrics = {k.removeprefix("metric."): float(v) for k, v in found.items() if k.startswith("metric.")}
        tags["multistep.model_page"] = links.model(name, version)
        tags.update({k: v for k, v in found.items() if k == "gate.decision"})
    flow_run = parent.data.tags.get(PREFECT_FLOW_RUN)
    heading = f"Pipeline **{parent.data.tags.get(PIPELINE)}**" + (
        f" — Prefect flow run [{parent.info.run_name}]({links.flow_run(flow_run)})" if flow_run else ""
    )
    model = f"\n\nModel: [{result['model']}]({links.model_uri(result['model'])})" if result.get("model") else ""
    tags["mlflow.note.content"] = f"{heading}{model}\n\n```\n{text}\n```"
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in flatten(public(spec)).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    if flow_run:
        from prefect.artifacts import create_markdown_artifact

        experiment = parent.info.experiment_id
        create_markdown_artifact(
            f"{heading}\n\nMLflow run [{run_id}]({links.run(experiment, run_id)}){model}\n\n```\n{text}\n```",
            key="pipeline-summary",
            description="What ran, what was reused, the final model and where to browse it",
        )
        _prefect_log(text)
    return text


def _prefect_log(text: str) -> None:
    """The summary in the Prefect run's logs only: the terminal gets it from the CLI, unprefixed and on stdout."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger("multistep.summary")
    if not logger.handlers:
        logger.addHandler(APILogHandler())
        logger.propagate, logger.level = False, logging.INFO  # not to Prefect's console handler
    logger.info(text)
    logger.handlers[0].flush()  # sent now, not whenever the background worker's next batch goes: the run may end first
