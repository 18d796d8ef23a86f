"""sweep: conditions × grid points × seeds, one llm_pipeline per cell, then a significance table against the baseline.

Cells that share a stage key share the stage: the data preparation, or a pretraining that only fine-tune seeds differ
on, runs once (locally the next cell finds the finished run in MLflow; in pools mode one cell dispatches it and the
others wait for that flow run, flows/shared.py). In pools mode the cells run side by side, each a thread of this flow
run that dispatches its own stages to the pools; no cell takes a worker slot while it waits, and no more gpu stages
are dispatched at once than the gpu pool has cards (slots.pool_slots).
"""

import contextvars
import copy
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prefect import flow
from pydantic import ValidationError

from flows import dispatch, shared, slots
from flows.pipeline import llm_pipeline, planned
from flows.spec import PipelineSpec, check_key, explain, set_key
from flows.spec import load as load_pipeline
from flows.sweep_spec import SweepSpec
from tasks import sweep as results
from tasks import sweep_report
from tasks.errors import UserError


@dataclass(frozen=True)
class Cell:
    """One pipeline of the sweep: a condition at a grid point, with one seed."""

    condition: str
    point: tuple[tuple[str, Any], ...]  # the grid point: (dotted key, value) pairs
    seed: int
    spec: PipelineSpec

    @property
    def row(self) -> str:
        """The table row the cell belongs to: its condition and grid point."""
        return row_name(self.condition, self.point)


def row_name(condition: str, point: tuple[tuple[str, Any], ...]) -> str:
    return " ".join([condition, *(f"{k}={v}" for k, v in point)])


@dataclass
class Plan:
    """What a sweep will run and how it will report it; made before anything runs, so that bad input runs nothing."""

    name: str
    cells: list[Cell]
    baseline: str
    reference: dict[str, str]  # row → the row it is compared with (itself for a baseline row)
    task: str
    metric: str
    split: str
    warnings: list[str] = field(default_factory=list)


@flow(name="sweep", log_prints=True)
def sweep(spec: SweepSpec) -> dict:
    """Run one llm_pipeline per cell (condition × grid point × seed) and report each condition against the baseline: mean ± std, paired 95% CI, McNemar p.

    Args:
        spec: The sweep: the base pipeline, the conditions, the seeds, the grid and the metric reported.
    """
    found = plan(spec)
    for warning in found.warnings:
        print(f"sweep: warning: {warning}")
    execution = found.cells[0].spec.execution
    dispatch.prepare(sorted({stage for cell in found.cells for stage in planned(cell.spec)}), execution)
    parallel, cards, how = 1, 1, "one after another"
    if execution.mode == "pools":
        # More cells in flight than cards, each gpu stage dispatched when a card is free: a cell's subflow start and its
        # (cached) preparation then overlap another cell's training, and a card that comes free is taken at once.
        cards = min(spec.max_parallel, dispatch.pool_limit(execution.pools.gpu) or spec.max_parallel)
        parallel = min(spec.max_parallel, len(found.cells))
        how = f"{parallel} in flight, {cards} gpu stage(s) at a time"
    print(
        f"sweep {found.name}: {len(found.cells)} cells, {how}; {found.metric} on {found.split}, baseline {found.baseline}"
    )
    started = time.perf_counter()
    with (
        results.sweep_run(found.name, spec, execution.experiment) as parent,
        slots.pool_slots({execution.pools.gpu: cards}),
        shared.scope(),
    ):
        outcomes = run_cells(found.cells, parent, parallel)
        report = results.report(found, outcomes, parent, wall_s=time.perf_counter() - started)
        sweep_report.record(report, parent)
    print(
        f"sweep {found.name}: done in {report['wall_s']:.1f} s; the table is on MLflow run {parent} and in the Prefect artifact"
    )
    return report


def run_cells(cells: list[Cell], parent: str, parallel: int) -> list[results.Outcome]:
    """Every cell's pipeline as a subflow: one after another, or `parallel` at once in threads (each with this flow run's context)."""
    if parallel == 1:
        return [run_cell(cell, parent) for cell in cells]
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep-cell") as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, _ranked, i, cell, parent) for i, cell in enumerate(cells)
        ]
        return [f.result() for f in futures]


def _ranked(rank: int, cell: Cell, parent: str) -> results.Outcome:
    """run_cell in its own context, where the cell's place in the plan decides who takes a free card first."""
    slots.cell_rank.set(rank)
    try:
        return run_cell(cell, parent)
    finally:
        slots.leave_slots(rank)


def run_cell(cell: Cell, parent: str) -> results.Outcome:
    """One cell's pipeline; its failure is a row in the table, not the end of the sweep."""
    start = time.perf_counter()
    try:
        out = llm_pipeline.with_options(flow_run_name=f"{cell.row} seed {cell.seed}")(cell.spec, parent_run_id=parent)
    except Exception as exc:  # noqa: BLE001 — whatever broke the cell, the other cells go on and the table says what it was
        print(f"sweep: cell {cell.row} seed {cell.seed} failed: {type(exc).__name__}: {exc}")
        return results.Outcome(cell.row, cell.seed, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")
    return results.Outcome(cell.row, cell.seed, time.perf_counter() - start, outputs=out)


def plan(spec: SweepSpec, source: str = "sweep") -> Plan:
    """The cells, each a validated PipelineSpec, and the metric; every input mistake is one UserError sentence."""
    base = (load_pipeline(spec.base) if isinstance(spec.base, str) else spec.base).model_dump(mode="json")
    for key, value in spec.overrides.items():
        check_key(key, f"{source}: overrides")
        set_key(base, key, value, f"{source}: overrides")
    for name, overrides in spec.conditions.items():
        for key in overrides:
            check_key(key, f"{source}: condition {name}")
    for key in spec.grid:
        check_key(key, f"{source}: grid")
    baseline = "baseline" if "baseline" in spec.conditions else next(iter(spec.conditions))
    points = [tuple(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())]
    cells, unseeded, reference, warnings = [], {}, {}, []
    for point in points:
        for condition, overrides in spec.conditions.items():
            where = f"{source}: condition {condition}" + "".join(f", {k}={v}" for k, v in point)
            data = copy.deepcopy(base)
            for key, value in [*overrides.items(), *point]:
                set_key(data, key, value, where)
            unseeded[condition, point] = _validate(data, where)
            for seed in spec.seeds:
                cells.append(
                    Cell(
                        condition, point, seed, _seeded(data, unseeded[condition, point], seed, spec.seed_fields, where)
                    )
                )
        for (
            condition
        ) in spec.conditions:  # compared with the baseline at the same point; a lone condition, with the first point
            reference[row_name(condition, point)] = row_name(baseline, point if len(spec.conditions) > 1 else points[0])
            same = f"condition {condition} gives the same pipeline as the baseline {baseline}: its cells will reuse the baseline's runs and differ by exactly 0"
            if (
                condition != baseline
                and unseeded[condition, point] == unseeded[baseline, point]
                and same not in warnings
            ):
                warnings.append(same)
    if any(c.spec.execution != cells[0].spec.execution for c in cells):
        raise UserError(
            f"{source}: a condition or the grid changes execution, which every cell shares: set it in base or overrides"
        )
    task, metric, split = _metric(spec, [c.spec for c in cells], source)
    name = spec.name or f"{cells[0].spec.name}-sweep"
    return Plan(name, cells, baseline, reference, task, metric, split, warnings)


def _validate(data: dict, where: str) -> PipelineSpec:
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(explain(exc, where)) from None


def _seeded(data: dict, spec: PipelineSpec, seed: int, fields: list[str], where: str) -> PipelineSpec:
    """The cell's spec: the seed in every seed field its pipeline has, and a gate that reports without promoting."""
    data = copy.deepcopy(data)
    for path in fields:
        *sections, _ = path.split(".")
        node = spec
        for part in sections:
            node = getattr(node, part) if node is not None else None
        if node is not None:  # e.g. no augment.eda in this condition: nothing to seed there
            set_key(data, path, seed, where)
    if spec.gate:
        set_key(data, "gate.report_only", True, where)
    return _validate(data, where)


def _metric(spec: SweepSpec, cells: list[PipelineSpec], source: str) -> tuple[str, str, str]:
    """(task, metric, split) that every cell reports, or a UserError naming the setting to change."""
    tasks = {c.labeled.task if c.finetune else "lm" for c in cells}
    if len(tasks) > 1:
        raise UserError(
            f"{source}: the conditions make {' and '.join(sorted(tasks))} models, which share no metric: sweep one kind of model"
        )
    (task,) = tasks
    first = cells[0]
    metric = spec.metric
    if metric == "auto":
        metric = first.gate.metric if first.gate and first.gate.metric != "auto" else results.GATE_METRIC[task]
    if metric not in results.METRICS[task]:
        raise UserError(
            f"{source}: metric {metric} is not measured for {task} models: use one of {', '.join(results.METRICS[task])}"
        )
    if metric in ("robust_accuracy", "attack_success_rate") and not all(c.finetune.attack for c in cells):
        raise UserError(
            f"{source}: metric {metric} is measured by finetune.attack, which not every cell sets: set base.finetune.attack"
        )
    if spec.test == "validation" and task != "lm":
        raise UserError(
            f"{source}: test validation is the split fine-tuning picks its checkpoints on, so its scores are biased: report test"
        )
    if task == "lm" and not all(c.evaluate and spec.test in c.evaluate.splits for c in cells):
        raise UserError(
            f"{source}: {metric} on {spec.test} comes from the evaluate stage: set base.evaluate with {spec.test} in its splits"
        )
    return task, metric, spec.test
