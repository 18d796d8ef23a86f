"""A sweep's report as people read it: the Markdown table the CLI prints, the bar chart, and both kept on the sweep's
MLflow run and as a Prefect artifact (tasks/sweep.py computes the numbers)."""

import numpy as np
from mlflow.tracking import MlflowClient

from tasks.sweep import CONFIDENCE, LOWER_IS_BETTER


def render(r: dict) -> str:
    """The report as Markdown: the CLI prints it, MLflow and Prefect keep it."""
    f = lambda v, fmt=".4f": "—" if v is None else format(v, fmt)  # noqa: E731
    better = "lower" if r["metric"] in LOWER_IS_BETTER else "higher"
    lines = [
        f"# Sweep {r['name']}: {r['split']} {r['metric']} ({better} is better), seeds {', '.join(map(str, r['seeds']))}", "",
        f"Baseline `{r['baseline']}`; Δ is a row minus its baseline on the same test rows, pooled over seeds, with a paired-bootstrap "
        f"{CONFIDENCE:.0%} interval. MLflow run `{r['sweep_run']}`, {r['wall_s']:.1f} s in all.", "",
        f"| condition | n | {r['metric']} mean ± std | min | max | Δ vs baseline [{CONFIDENCE:.0%} CI] | McNemar p | wall s/cell | alone s/cell |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]  # fmt: skip
    for row in r["rows"]:
        n = f"{row['n']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        if row["reference"] == row["row"]:
            delta = "baseline"
        elif row.get("delta") is None:
            delta = "—"
        else:
            delta = f"{row['delta']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
        lines.append(f"| {row['row']} | {n} | {f(row['mean'])} ± {f(row['std'])} | {f(row['min'])} | {f(row['max'])} | {delta} "
                     f"| {f(row.get('mcnemar_p'), '.3g')} | {row['wall_s']:.1f} | {f(row.get('alone_s'), '.1f')} |")  # fmt: skip
    lines += ["", "| cell | seed | status | model | value | wall s | alone s |", "|---|---:|---|---|---:|---:|---:|"]
    for c in r["cells"]:
        # one table row, however long the error
        what = c.get("model") or " ".join(c["error"].split())[:300].replace("|", "\\|")
        lines.append(
            f"| {c['row']} | {c['seed']} | {c['status']} | {what} | {f(c.get('value'))} | {c['wall_s']:.1f} | {f(c.get('alone_s'), '.1f')} |"
        )
    notes = [
        "alone: a cell's wall time plus that of the stages it reused from other cells or earlier runs (cache hits)"
    ]
    notes += [f"{row['row']}: {row['note']}" for row in r["rows"] if row.get("note")] + [
        f"warning: {w}" for w in r["warnings"]
    ]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def record(r: dict, parent: str) -> None:
    """On the sweep's MLflow run: the report (Markdown, JSON), the table, a bar chart, per-row metrics; and a Prefect artifact."""
    import pandas as pd

    from tasks.metrics import metric_name
    from tasks.tracking import log_metrics

    client, markdown = MlflowClient(), render(r)
    client.log_text(parent, markdown, "sweep/report.md")
    client.log_dict(parent, r, "sweep/report.json")
    client.log_table(parent, pd.DataFrame([{k: v for k, v in row.items()} for row in r["rows"]]), "sweep/table.json")
    client.log_figure(parent, figure(r), "sweep/chart.png")
    values = {
        f"{metric_name(row['row'])}.{stat}": row[stat]
        for row in r["rows"]
        for stat in ("mean", "std", "delta")
        if row.get(stat) is not None
    }
    if values:
        log_metrics(parent, values)
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    if flow_run.id:
        key = "sweep-" + "".join(c if c.isalnum() else "-" for c in r["name"].lower())  # Prefect keys: a-z, 0-9, dashes
        create_markdown_artifact(
            markdown,
            key=key[:100],
            description=f"Sweep {r['name']}: {r['metric']} per condition against {r['baseline']}",
        )


def figure(r: dict):
    """Left: each row's mean with its std over seeds; right: each Δ with its interval. The sweep at a glance."""
    from matplotlib.figure import Figure

    rows = r["rows"]
    fig = Figure(figsize=(10, 0.5 * len(rows) + 2.5), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))
    means = [row["mean"] if row["mean"] is not None else np.nan for row in rows]
    left.barh(y, means, xerr=[row["std"] or 0 for row in rows], capsize=4,
              color=["tab:gray" if row["reference"] == row["row"] else "tab:blue" for row in rows])  # fmt: skip
    left.set_yticks(y, [row["row"] for row in rows])
    left.invert_yaxis()
    left.set_xlabel(f"{r['split']} {r['metric']} (mean ± std over seeds)")
    for i, row in enumerate(rows):
        if row.get("delta") is not None:
            right.errorbar(
                [row["delta"]],
                [i],
                xerr=[[row["delta"] - row["ci_low"]], [row["ci_high"] - row["delta"]]],
                fmt="o",
                capsize=4,
                color="tab:blue",
            )
    right.axvline(0, color="gray", lw=1)
    right.set_xlabel(f"Δ vs baseline ({CONFIDENCE:.0%} paired CI)")
    fig.suptitle(f"sweep {r['name']}", fontsize=10)
    return fig
