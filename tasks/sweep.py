"""A sweep's results: each cell's metric, per-row test scores and cost read back from MLflow, and the paired statistics
against the baseline (flows/sweep.py runs the cells; tasks/sweep_report.py turns the numbers into a table and chart)."""

import json
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from tasks import answers, links
from tasks.backend import configure
from tasks.gate.spec import AUTO
from tasks.tracking import REUSED, git_commit, public, resolve_version

# What each task's versions carry as `metric.<split>_<name>` (SFT's and math's generation scores as `metric.<name>`).
METRICS = {
    "classification": ("accuracy", "macro_f1", "ece", "nll", "robust_accuracy", "attack_success_rate"),
    "sft": ("chrf", "bleu", "exact_match", "loss"),
    "extractive-qa": ("f1", "exact_match"),
    "math": ("answer_accuracy", "voted_answer_accuracy", "no_answer_rate", "loss"),
    "lm": ("perplexity", "loss"),
}
GATE_METRIC = AUTO
LOWER_IS_BETTER = {"ece", "nll", "perplexity", "loss", "attack_success_rate", "no_answer_rate"}
BOOTSTRAP_SAMPLES, CONFIDENCE = 2000, 0.95
SWEEP = "multistep.sweep"


@dataclass
class Outcome:
    """What running one cell gave: the pipeline's result URIs, or the error that stopped it."""

    row: str
    seed: int
    wall_s: float
    outputs: dict | None = None
    error: str | None = None


@dataclass
class PerRow:
    """A cell's score on each test row: `keys` identify the rows (in order), `values` [n] score them."""

    keys: list
    values: np.ndarray


@contextmanager
def sweep_run(name: str, spec, experiment: str) -> Iterator[str]:
    """The sweep's MLflow run, parent of the cells' pipeline runs. Never the active run: each cell opens its own, in any thread."""
    experiment_id = configure(experiment)
    client = MlflowClient()
    run_id = client.create_run(
        experiment_id, run_name=name, tags={SWEEP: name, "git.commit": git_commit(), **links.prefect_tags()}
    ).info.run_id
    client.log_dict(run_id, public(spec), "sweep/spec.json")
    links.tag_flow_run(run_id)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)


def report(plan, outcomes: list[Outcome], parent: str, wall_s: float) -> dict:
    """Per row: n, mean ± std, min/max, wall time, and the paired difference to its reference row pooled over seeds."""
    cells, per_row = [], {}
    for o in outcomes:
        cell = {
            "row": o.row,
            "seed": o.seed,
            "status": "failed" if o.error else "completed",
            "wall_s": round(o.wall_s, 1),
            "error": o.error,
        }
        if o.outputs:
            try:
                cell["alone_s"] = round(o.wall_s + _reused_seconds(o.outputs["pipeline_run"]), 1)
            except mlflow.exceptions.MlflowException:  # a reused run deleted since: the table goes on without it
                pass
            version = resolve_version(o.outputs["model"])
            value = _value(version.tags, plan.task, plan.metric, plan.split)
            cell.update(model=o.outputs["model"], pipeline_run=o.outputs["pipeline_run"], value=value)
            try:
                found = _per_row(plan, o.outputs, version)
            except (
                mlflow.exceptions.MlflowException,
                OSError,
                KeyError,
                ValueError,
            ) as exc:  # one unreadable cell must not lose the table
                found = f"its per-row scores could not be read ({type(exc).__name__}: {exc})"
            if isinstance(found, PerRow):
                per_row[o.row, o.seed] = found
            else:
                cell["no_per_row"] = found
        cells.append(cell)
    seeds = sorted({o.seed for o in outcomes})
    rows = []
    for row in dict.fromkeys(o.row for o in outcomes):  # in the plan's order
        mine = [c for c in cells if c["row"] == row]
        values = [c["value"] for c in mine if c.get("value") is not None]
        entry = {
            "row": row, "n": len(values), "failed": sum(c["status"] == "failed" for c in mine),
            "mean": statistics.fmean(values) if values else None, "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values, default=None), "max": max(values, default=None),
            "wall_s": round(statistics.fmean(c["wall_s"] for c in mine), 1), "reference": plan.reference[row],
            "alone_s": round(statistics.fmean(alone), 1) if (alone := [c["alone_s"] for c in mine if "alone_s" in c]) else None,
        }  # fmt: skip
        if plan.reference[row] != row:
            entry.update(paired(row, plan.reference[row], per_row, seeds, plan.metric, mine))
        rows.append(entry)
    return {
        "name": plan.name, "sweep_run": parent, "task": plan.task, "metric": plan.metric, "split": plan.split,
        "baseline": plan.baseline, "seeds": seeds, "wall_s": round(wall_s, 1), "rows": rows, "cells": cells, "warnings": plan.warnings,
    }  # fmt: skip


def _reused_seconds(pipeline_run: str) -> float:
    """Seconds the stage runs that a cell took from the cache (run by another cell or an earlier run) took to run: a
    cell's wall time plus these is what it costs alone. A sweep's later conditions often reuse the baseline's stages
    (the data, a first round), so their wall time alone understates what they cost a user who runs only them. A
    reused run that was resumed counts from its first attempt's start."""
    client = MlflowClient()
    runs = [
        client.get_run(run_id)
        for key, run_id in client.get_run(pipeline_run).data.tags.items()
        if key.startswith(REUSED)
    ]
    return sum((r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time)


def _value(tags: dict, task: str, metric: str, split: str) -> float | None:
    """The metric the registering stage put on the version: the numbers of the table are the registry's."""
    name = metric if task in ("sft", "math") and metric != "loss" else f"{split}_{metric}"
    value = tags.get(f"metric.{name}")
    return float(value) if value is not None else None


def _per_row(plan, outputs: dict, version) -> PerRow | str:
    """The cell's per-row scores of the metric on the reported split's rows, or why there are none."""
    if plan.split != "test":
        return f"no per-row scores are kept for {plan.split}"
    if plan.task == "classification" and plan.metric == "accuracy":
        table = _table(version.run_id, "evaluation/test_predictions.json")
        return PerRow(
            [(r["text"], str(r["label"])) for r in table],
            np.array([float(str(r["predicted"]) == str(r["label"])) for r in table]),
        )
    if plan.task == "sft" and plan.metric in ("exact_match", "chrf"):
        from tasks import metrics

        table = _table(version.run_id, "generations.json")
        hyps, refs = [r["after"] for r in table], [r["reference"] for r in table]
        scores = (
            np.array([float(h.strip() == r.strip()) for h, r in zip(hyps, refs)])
            if plan.metric == "exact_match"
            else metrics.generation_per_example(hyps, refs)
        )
        return PerRow([(r["prompt"], r["reference"]) for r in table], scores)
    if plan.task == "extractive-qa":
        table = _table(version.run_id, "evaluation/test_predictions.json")
        return PerRow([(r["question"], r["gold"]) for r in table], np.array([float(r[plan.metric]) for r in table]))
    if plan.task == "math" and plan.metric == "answer_accuracy":
        table = _table(version.run_id, "generations.json")
        hits = [answers.hit(r["after_answer"], r["reference"]) for r in table]
        return PerRow([(r["prompt"], r["reference"]) for r in table], np.array(hits, dtype=float))
    if plan.task == "lm" and "gate" in outputs:  # the gate scored the final model's test blocks one by one
        table = _table(outputs["gate"].removeprefix("runs:/").split("/")[0], "gate/challenger_predictions.json")
        return PerRow([(outputs["dataset"], r["block"]) for r in table], np.array([float(r["loss"]) for r in table]))
    return f"no per-row {plan.metric} is kept" + (" (the gate is off)" if plan.task == "lm" else "")


def _table(run_id: str, path: str) -> list[dict]:
    """An MLflow table artifact ({"columns": [...], "data": [[...]]}) as row dicts."""
    with open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)) as f:
        found = json.load(f)
    return [dict(zip(found["columns"], values)) for values in found["data"]]


def paired(row: str, ref: str, per_row: dict, seeds: list[int], metric: str, mine: list[dict]) -> dict:
    """row − reference on the same test rows, each seed against the same seed, pooled: paired bootstrap, McNemar for accuracy."""
    from tasks import metrics

    a, b, notes = [], [], []
    for seed in seeds:
        mine_, theirs = per_row.get((row, seed)), per_row.get((ref, seed))
        if mine_ is None or theirs is None:
            continue
        if mine_.keys != theirs.keys:  # different rows (or order): a difference of means would not be paired
            notes.append(
                f"seed {seed}: the test rows differ from {ref}'s ({len(mine_.keys)} vs {len(theirs.keys)} rows), so it is left out of the paired statistics"
            )
            continue
        a.append(mine_.values)
        b.append(theirs.values)
    reasons = {c["no_per_row"] for c in mine if "no_per_row" in c}
    if not a:
        return {"delta": None, "note": "; ".join([*notes, *reasons]) or f"no seed completed in both {row} and {ref}"}
    a, b = np.concatenate(a), np.concatenate(b)
    boot = metrics.paired_bootstrap(a, b, samples=BOOTSTRAP_SAMPLES, confidence=CONFIDENCE)
    out = {
        "delta": boot["delta"],
        "ci_low": boot["low"],
        "ci_high": boot["high"],
        "p_bootstrap": boot["p_value"],
        "paired_rows": int(len(a)),
    }
    # 0/1 per row: McNemar's exact test on the rows exactly one of the two got right
    if metric in ("accuracy", "exact_match"):
        out["mcnemar_p"] = metrics.mcnemar(a, b)["p_value"]
    scale = {"chrf": "per-row sentence chrF", "perplexity": "mean block log-loss", "loss": "mean block log-loss"}.get(
        metric
    )
    notes += [f"the interval is on the {scale}"] if scale else []
    return {**out, "note": "; ".join(notes)} if notes else out
