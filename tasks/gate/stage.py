"""The gate stage's body: mark the challenger, score it and the champion on the same test rows (with no champion, the
trivial baseline on those rows), decide, promote, and record the decision (metrics, report, figures, a Prefect artifact)."""

import dataclasses
import re
from dataclasses import asdict

import mlflow
import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from prefect.artifacts import create_markdown_artifact
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run

from tasks import metrics, registry
from tasks.errors import UserError
from tasks.evaluate import scoring
from tasks.gate import baseline
from tasks.gate.promotion import Decision, decide, decide_alone, holder, promote
from tasks.gate.spec import AUTO, GateSpec
from tasks.tracking import log_metrics, resolve_version


def run(spec: GateSpec, challenger: str, dataset: str, ctx) -> str:
    """Mark the challenger, score it and the champion (or, with none, the trivial baseline) on the same test rows, decide,
    promote; returns the decision's URI."""
    version = resolve_version(challenger)
    name, challenger = version.name, f"models:/{version.name}/{version.version}"
    # Both models are scored with the lengths the challenger was fine-tuned with (its version says; defaults otherwise).
    max_length = int(version.tags.get(registry.MAX_LENGTH, 128))
    max_new_tokens = int(version.tags.get(registry.MAX_NEW_TOKENS, 48))
    if not spec.report_only:
        MlflowClient().set_registered_model_alias(name, "challenger", version.version)
    scored: dict[str, scoring.Scored] = {}
    found: list[baseline.Baseline] = []

    def scores(uri: str) -> scoring.Scored:
        if uri not in scored:
            scored[uri] = scoring.score(
                uri, dataset, max_rows=spec.max_rows, max_length=max_length, max_new_tokens=max_new_tokens
            )
        return scored[uri]

    def alone(metric: str, value: float, why: str) -> Decision:
        """Judged without a champion: against the trivial baseline on the same rows (measured once), and the threshold."""
        if spec.baseline and not found:
            found.append(baseline.measure(dataset, spec.max_rows))
        bar = (found[0].name, found[0].metrics[metric]) if spec.baseline else None
        return decide_alone(spec, metric, challenger, value, bar, why)

    def judge(champion: str | None) -> Decision:
        mine = scores(challenger)
        metric = spec.metric if spec.metric != "auto" else AUTO[mine.task]
        if metric not in mine.metrics:
            # the spec validator prevents this
            raise ValueError(f"gate.metric {metric} is not measured for {mine.task} models")
        if champion == challenger:
            return Decision(
                False,
                f"{challenger} already holds @{spec.alias}",
                metric,
                challenger,
                champion,
                mine.metrics[metric],
                mine.metrics[metric],
                0.0,
            )
        if champion is None:
            print(
                f"gate: no version of {name} holds @{spec.alias} (never promoted, or its version was deleted); "
                + _bar(spec)
            )
            return alone(metric, mine.metrics[metric], "no champion")
        try:
            theirs = scores(champion)
        except UserError as exc:  # e.g. a champion trained on another label set: the test rows cannot score it
            print(f"gate: the champion {champion} cannot be scored on these test rows ({exc}); " + _bar(spec))
            return alone(metric, mine.metrics[metric], f"the champion {champion} cannot be scored on these test rows")
        # macro-F1 has no per-example score: its interval is accuracy's
        per = "accuracy" if metric == "macro_f1" else metric
        interval = metrics.paired_bootstrap(
            mine.per_example[per], theirs.per_example[per], samples=spec.bootstrap_samples, confidence=spec.confidence
        )
        return decide(
            spec,
            metric,
            challenger,
            champion,
            {challenger: mine.metrics, champion: theirs.metrics},
            interval if per == metric else None,
        )

    if spec.report_only:  # judged against the holder of the moment, without the lock: nothing will move
        decision = dataclasses.replace(judge(holder(name, spec.alias)), report_only=True)
    else:
        decision = promote(name, spec.alias, challenger, judge)
    _record(decision, scored, found[0] if decision.baseline else None, ctx, spec)
    registry.replace_tags(challenger, "gate.", decision.tags())
    print(f"gate: {decision.verdict} — {decision.reason}")  # log_prints: a line of the gate flow run's logs
    if flow_run.id:  # sent now, not with the log worker's next batch: a gate run alone in its process may end first
        APILogHandler().flush()
    return f"runs:/{ctx.run_id}/gate"


def _bars(spec: GateSpec) -> list[str]:
    """What a challenger judged alone must do, in the log's words."""
    return (["beat the task's trivial baseline"] if spec.baseline else []) + (
        [f"reach gate.threshold {spec.threshold:g}"] if spec.threshold is not None else []
    )


def _bar(spec: GateSpec) -> str:
    """The log line's end when the challenger is judged alone."""
    bars = _bars(spec)
    return f"the challenger must {' and '.join(bars)}" if bars else "the challenger is promoted"


def _record(decision: Decision, scored: dict, base: baseline.Baseline | None, ctx, spec: GateSpec) -> None:
    """The decision on the gate run: metrics, a JSON report, per-example predictions, figures, and a Prefect artifact."""
    roles = {decision.challenger: "challenger", **({decision.champion: "champion"} if decision.champion else {})}
    values = {}
    for uri, role in roles.items():
        if uri in scored:
            values.update({f"{role}_{k}": v for k, v in scored[uri].metrics.items()})
            mlflow.log_table(pd.DataFrame(scored[uri].predictions), f"gate/{role}_predictions.json")
            report = scored[uri].report
            if report:
                labels = list(report["per_class"])
                mlflow.log_figure(
                    metrics.confusion_figure(report["confusion"], labels, f"{role} {uri}"), f"gate/{role}_confusion.png"
                )
    if base is not None:
        values.update({f"baseline_{k}": v for k, v in base.metrics.items()})
        mlflow.log_dict({"name": base.name, "described": base.described, "metrics": base.metrics}, "gate/baseline.json")
    values.update(
        {
            k: v
            for k, v in (
                ("delta", decision.delta),
                ("ci_low", decision.low),
                ("ci_high", decision.high),
                ("p_value", decision.p_value),
            )
            if v is not None
        }
    )
    values["promoted"] = float(decision.promote and not decision.report_only)
    mlflow.log_figure(_figure(decision, spec), "gate/decision.png")
    log_metrics(ctx.run_id, values)
    mlflow.log_dict(asdict(decision), "gate/decision.json")
    markdown = _markdown(decision, spec, base)
    mlflow.log_text(markdown, "gate/decision.md")
    if flow_run.id:
        # Prefect keys: a-z, 0-9, dashes
        key = "gate-" + re.sub(r"[^a-z0-9-]+", "-", decision.challenger.split("/")[1].lower())
        create_markdown_artifact(
            markdown, key=key[:100], description=f"Champion/challenger decision for {decision.challenger}"
        )


def _figure(d: Decision, spec: GateSpec):
    """The two values side by side, and the difference with its interval: the decision at a glance."""
    fig = Figure(figsize=(7, 3))
    left, right = fig.subplots(1, 2)
    bars = {"challenger": d.challenger_value, "champion": d.champion_value, f"{d.baseline} baseline": d.baseline_value}
    bars = {k: v for k, v in bars.items() if v is not None}
    left.bar(
        list(bars),
        list(bars.values()),
        color=[{"challenger": "tab:blue", "champion": "tab:gray"}.get(k, "tab:orange") for k in bars],
    )
    left.set_title(d.metric)
    if d.delta is not None:
        err = [[d.delta - d.low], [d.high - d.delta]] if d.low is not None else None
        right.errorbar([0], [d.delta], yerr=err, fmt="o", capsize=8)
        right.axhline(0, color="gray", lw=1)
        right.axhline(spec.min_delta, color="tab:red", lw=1, ls="--", label=f"min_delta {spec.min_delta:g}")
        right.set_xticks([])
        right.set_title(f"difference ({spec.confidence:.0%} CI)")
        right.legend(loc="best", fontsize=8)
    else:
        right.axis("off")
    fig.suptitle(f"{d.verdict}: {d.challenger}", fontsize=9)
    fig.tight_layout()
    return fig


def _markdown(d: Decision, spec: GateSpec, base: baseline.Baseline | None) -> str:
    fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [
        f"# Gate: {d.verdict}",
        "",
        d.reason,
        "",
        "| | model | " + d.metric + " |",
        "|---|---|---:|",
        f"| challenger | `{d.challenger}` | {fmt(d.challenger_value)} |",
        f"| champion (@{spec.alias}) | `{d.champion or 'none'}` | {fmt(d.champion_value)} |",
    ]
    if base is not None:
        lines.append(f"| baseline | {base.name}: {base.described} | {fmt(d.baseline_value)} |")
    if d.delta is not None:
        lines += [
            "",
            f"Difference (positive = challenger better): {d.delta:+.4f}"
            + (
                f", {spec.confidence:.0%} paired-bootstrap interval [{d.low:+.4f}, {d.high:+.4f}], p = {d.p_value:.3g}"
                if d.low is not None
                else ""
            ),
        ]
    lines += [
        "",
        f"Policy: min_delta {spec.min_delta:g}, significance {'required' if spec.require_significance else 'not required'}, "
        f"must not regress: {', '.join(spec.must_not_regress) or 'nothing'}; without a champion: "
        + (" and ".join(_bars(spec)) or "the first challenger is promoted"),
    ]
    return "\n".join(lines) + "\n"
