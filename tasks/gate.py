"""Champion vs challenger: score both on the same test rows, decide by a policy, move `@champion` by compare-and-set.

MLflow has no atomic compare-and-set on aliases, so promotion takes a lock first: a registered model named
`<name>.promotion-lock`, whose creation every backend (SQL store or server) makes atomic through its unique name. Under
the lock the holder is read again; if it changed since the decision, the caller decides again against the new holder.
"""

import contextlib
import dataclasses
import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import mlflow
from mlflow.tracking import MlflowClient
from pydantic import Field, model_validator

from tasks.errors import UserError
from tasks.spec import Spec

LOWER_IS_BETTER = {"perplexity", "loss", "ece", "nll"}


class GateSpec(Spec):
    metric: Literal["auto", "accuracy", "macro_f1", "exact_match", "chrf", "perplexity"] = "auto"
    """Test metric that decides; auto: accuracy for classification, chrf for SFT, perplexity for a language model."""
    min_delta: float = Field(0.0, ge=0)
    """The challenger must beat the champion by more than this (in the metric's units: 0.01 = one accuracy point; perplexity compares mean log-loss)."""
    require_significance: bool = False
    """Promote only when the paired-bootstrap confidence interval of the difference excludes zero."""
    confidence: float = Field(0.95, gt=0.5, lt=1)
    """Confidence level of the bootstrap interval."""
    bootstrap_samples: int = Field(1000, ge=100, le=100000)
    """Resamples of the test rows for the interval."""
    must_not_regress: list[Literal["accuracy", "macro_f1", "ece", "exact_match", "chrf", "bleu"]] = []
    """Other metrics the challenger may not lose on (beyond regress_tolerance), e.g. macro_f1 when accuracy decides."""
    regress_tolerance: float = Field(0.0, ge=0)
    """How much a must_not_regress metric may drop before it blocks promotion."""
    threshold: float | None = None
    """With no champion yet: promote only when the challenger's metric reaches this (e.g. 0.8 accuracy, 50 perplexity); empty promotes the first challenger."""
    alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    """The alias that marks the promoted version; the candidate gets `challenger` (unless report_only)."""
    max_rows: int | None = Field(None, ge=10)
    """Score at most this many test rows (blocks for a language model), chosen by content hash; empty scores all."""
    report_only: bool = False
    """Score and record the decision but move no alias (neither `challenger` nor the promoted one): what the cells of a sweep do."""

    @model_validator(mode="after")
    def _alias_is_not_challenger(self):
        if self.alias == "challenger":
            raise ValueError("gate.alias cannot be `challenger`: that alias marks every candidate; use e.g. champion")
        return self


@dataclass
class Decision:
    """What the gate decided and the numbers behind it; stored as `gate.*` version tags."""

    promote: bool
    reason: str
    metric: str
    challenger: str
    champion: str | None
    challenger_value: float
    champion_value: float | None = None
    delta: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    regressions: dict[str, float] = field(default_factory=dict)
    report_only: bool = False  # the policy's verdict, not carried out: no alias moved

    @property
    def verdict(self) -> str:
        """The words the log, the registry tag and the run summary use."""
        if self.report_only:
            return "would promote (report only)" if self.promote else "would reject (report only)"
        return "promoted" if self.promote else "rejected"

    def tags(self) -> dict[str, str]:
        out = {f"gate.{k}": ("" if v is None else json.dumps(v) if isinstance(v, dict) else f"{v:.6g}" if isinstance(v, float) else str(v))
               for k, v in asdict(self).items()}
        out["gate.decision"] = self.verdict
        return out


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is."""
    return -1 if metric in LOWER_IS_BETTER else 1


def decide(spec: GateSpec, metric: str, challenger: str, champion: str | None, values: dict[str, dict[str, float]],
           interval: dict | None) -> Decision:
    """The policy: threshold without a champion; else min_delta, significance and no regressions. `values[model][metric]`."""
    mine = values[challenger][metric]
    if champion is None:
        if spec.threshold is None:
            return Decision(True, "no champion yet and no threshold: the first challenger is promoted", metric, challenger, None, mine)
        ok = direction(metric) * (mine - spec.threshold) >= 0
        verb = "reaches" if ok else "misses"
        return Decision(ok, f"no champion yet; the challenger's {metric} {mine:.4g} {verb} the threshold {spec.threshold:g}", metric, challenger, None, mine)
    theirs = values[champion][metric]
    # The interval is on the difference of per-example scores (log-loss for perplexity), signed so that positive is better.
    delta = interval["delta"] if interval else direction(metric) * (mine - theirs)
    low, high, p = (interval["low"], interval["high"], interval["p_value"]) if interval else (None, None, None)
    regressions = {
        m: values[challenger][m] - values[champion][m]
        for m in spec.must_not_regress
        if m in values[challenger] and m in values[champion]
        and direction(m) * (values[challenger][m] - values[champion][m]) < -spec.regress_tolerance
    }
    base = dict(metric=metric, challenger=challenger, champion=champion, challenger_value=mine, champion_value=theirs,
                delta=delta, low=low, high=high, p_value=p, regressions=regressions)
    ci = f" ({spec.confidence:.0%} CI {low:+.4f} to {high:+.4f}, p={p:.3g})" if interval else ""
    if delta <= spec.min_delta:
        return Decision(False, f"{metric} {mine:.4g} vs champion {theirs:.4g}: gain {delta:+.4f}{ci} is not above min_delta {spec.min_delta:g}", **base)
    if spec.require_significance and not (low is not None and low > 0):
        return Decision(False, f"{metric} {mine:.4g} vs champion {theirs:.4g}: gain {delta:+.4f}{ci} is not significant", **base)
    if regressions:
        worse = ", ".join(f"{m} {d:+.4f}" for m, d in regressions.items())
        return Decision(False, f"{metric} gains {delta:+.4f}{ci} but {worse} regress beyond {spec.regress_tolerance:g}", **base)
    return Decision(True, f"{metric} {mine:.4g} vs champion {theirs:.4g}: gain {delta:+.4f}{ci}", **base)


def holder(name: str, alias: str) -> str | None:
    """`models:/name/version` holding the alias, or None (never set, or its version was deleted, which drops the alias)."""
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return f"models:/{name}/{version.version}"


@contextlib.contextmanager
def promotion_lock(name: str, stale_after_s: float = 600, wait_s: float = 120) -> Iterator[None]:
    """Exclusive across processes and machines: creating a registered model with a given name succeeds only once."""
    client, lock = MlflowClient(), f"{name}.promotion-lock"
    owner = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, tags={"multistep.lock_owner": owner, "multistep.lock_time": f"{time.time():.0f}"},
                                           description="held while multistep moves an alias of " + name)
            break
        except mlflow.exceptions.MlflowException:
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                held = client.get_registered_model(lock)
                if time.time() - float(held.tags.get("multistep.lock_time", "0")) > stale_after_s:  # its owner died holding it
                    client.delete_registered_model(lock)
                    continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{lock} has been held for over {wait_s:.0f} s; if no promotion is running, delete that registered model")
            time.sleep(0.2)
    try:
        yield
    finally:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.delete_registered_model(lock)


def promote(name: str, alias: str, challenger: str, judge: Callable[[str | None], Decision], attempts: int = 5) -> Decision:
    """Decide against the current holder, then move the alias only if the holder is still the one judged against."""
    current = holder(name, alias)
    for _ in range(attempts):
        decision = judge(current)
        with promotion_lock(name):
            now = holder(name, alias)
            if now == current:
                if decision.promote:
                    MlflowClient().set_registered_model_alias(name, alias, challenger.rsplit("/", 1)[1])
                return decision
        print(f"gate: @{alias} moved from {current or 'nobody'} to {now} while deciding; deciding again")
        current = now
    raise RuntimeError(f"@{alias} of {name} kept moving during {attempts} decisions; run the gate again")


def inputs(spec: GateSpec, model: str, dataset: str, experiment: str) -> dict[str, str]:
    """The gate's stage inputs: the challenger, the test rows, and the current holder of the alias."""
    from tasks.tracking import configure, resolve_version

    inputs = {"model": model, "dataset": dataset}
    configure(experiment)
    version = resolve_version(model)
    champion = holder(version.name, spec.alias)
    # Another holder is another decision, so it enters the stage key; a challenger that already holds the alias (a rerun
    # after its promotion) keeps the key of the decision that promoted it, and the rerun is a cache hit.
    if champion and champion != f"models:/{version.name}/{version.version}":
        inputs["champion"] = champion
    return inputs


def run(spec: GateSpec, challenger: str, dataset: str, ctx) -> str:
    """Mark the challenger, score it and the champion on the same test rows, decide, promote; returns the decision's URI."""
    from tasks import evaluate, metrics, registry  # local: these pull in torch and transformers
    from tasks.tracking import resolve_version

    version = resolve_version(challenger)
    name, challenger = version.name, f"models:/{version.name}/{version.version}"
    # Both models are scored with the lengths the challenger was fine-tuned with (its version says; defaults otherwise).
    max_length = int(version.tags.get(registry.MAX_LENGTH, 128))
    max_new_tokens = int(version.tags.get(registry.MAX_NEW_TOKENS, 48))
    if not spec.report_only:
        MlflowClient().set_registered_model_alias(name, "challenger", version.version)
    scored: dict[str, evaluate.Scored] = {}

    def scores(uri: str) -> evaluate.Scored:
        if uri not in scored:
            scored[uri] = evaluate.score(uri, dataset, max_rows=spec.max_rows, max_length=max_length, max_new_tokens=max_new_tokens)
        return scored[uri]

    def judge(champion: str | None) -> Decision:
        mine = scores(challenger)
        metric = spec.metric if spec.metric != "auto" else {"classification": "accuracy", "sft": "chrf", "lm": "perplexity"}[mine.task]
        if metric not in mine.metrics:
            raise ValueError(f"gate.metric {metric} is not measured for {mine.task} models")  # the spec validator prevents this
        if champion == challenger:
            return Decision(False, f"{challenger} already holds @{spec.alias}", metric, challenger, champion, mine.metrics[metric], mine.metrics[metric], 0.0)
        if champion is None:
            print(f"gate: no version of {name} holds @{spec.alias} (never promoted, or its version was deleted); "
                  + (f"the challenger must reach gate.threshold {spec.threshold}" if spec.threshold is not None else "the challenger is promoted"))
            return decide(spec, metric, challenger, None, {challenger: mine.metrics}, None)
        try:
            theirs = scores(champion)
        except UserError as exc:  # e.g. a champion trained on another label set: the test rows cannot score it
            print(f"gate: the champion {champion} cannot be scored on these test rows ({exc}); judging the challenger on its own")
            return decide(spec, metric, challenger, None, {challenger: mine.metrics}, None)
        per = "accuracy" if metric == "macro_f1" else metric  # macro-F1 has no per-example score: its interval is accuracy's
        interval = metrics.paired_bootstrap(mine.per_example[per], theirs.per_example[per], samples=spec.bootstrap_samples, confidence=spec.confidence)
        return decide(spec, metric, challenger, champion, {challenger: mine.metrics, champion: theirs.metrics}, interval if per == metric else None)

    if spec.report_only:  # judged against the holder of the moment, without the lock: nothing will move
        decision = dataclasses.replace(judge(holder(name, spec.alias)), report_only=True)
    else:
        decision = promote(name, spec.alias, challenger, judge)
    _record(decision, scored, ctx, spec)
    registry.set_tags(challenger, decision.tags())
    print(f"gate: {decision.verdict} — {decision.reason}")
    return f"runs:/{ctx.run_id}/gate"


def _record(decision: Decision, scored: dict, ctx, spec: GateSpec) -> None:
    """The decision on the gate run: metrics, a JSON report, per-example predictions, figures, and a Prefect artifact."""
    from tasks import metrics
    from tasks.tracking import log_metrics

    import pandas as pd

    roles = {decision.challenger: "challenger", **({decision.champion: "champion"} if decision.champion else {})}
    values = {}
    for uri, role in roles.items():
        if uri in scored:
            values.update({f"{role}_{k}": v for k, v in scored[uri].metrics.items()})
            mlflow.log_table(pd.DataFrame(scored[uri].predictions), f"gate/{role}_predictions.json")
            report = scored[uri].report
            if report:
                labels = list(report["per_class"])
                mlflow.log_figure(metrics.confusion_figure(report["confusion"], labels, f"{role} {uri}"), f"gate/{role}_confusion.png")
    values.update({k: v for k, v in (("delta", decision.delta), ("ci_low", decision.low), ("ci_high", decision.high), ("p_value", decision.p_value)) if v is not None})
    values["promoted"] = float(decision.promote and not decision.report_only)
    mlflow.log_figure(_figure(decision, spec), "gate/decision.png")
    log_metrics(ctx.run_id, values)
    mlflow.log_dict(asdict(decision), "gate/decision.json")
    markdown = _markdown(decision, spec)
    mlflow.log_text(markdown, "gate/decision.md")
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    if flow_run.id:
        key = "gate-" + re.sub(r"[^a-z0-9-]+", "-", decision.challenger.split("/")[1].lower())  # Prefect keys: a-z, 0-9, dashes
        create_markdown_artifact(markdown, key=key[:100], description=f"Champion/challenger decision for {decision.challenger}")


def _figure(d: Decision, spec: GateSpec):
    """The two values side by side, and the difference with its interval: the decision at a glance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3))
    left, right = fig.subplots(1, 2)
    names = ["challenger"] + (["champion"] if d.champion_value is not None else [])
    left.bar(names, [d.challenger_value] + ([d.champion_value] if d.champion_value is not None else []), color=["tab:blue", "tab:gray"][: len(names)])
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


def _markdown(d: Decision, spec: GateSpec) -> str:
    fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [
        f"# Gate: {d.verdict}", "", d.reason, "",
        "| | model | " + d.metric + " |", "|---|---|---:|",
        f"| challenger | `{d.challenger}` | {fmt(d.challenger_value)} |",
        f"| champion (@{spec.alias}) | `{d.champion or 'none'}` | {fmt(d.champion_value)} |",
    ]
    if d.delta is not None:
        lines += ["", f"Difference (positive = challenger better): {d.delta:+.4f}"
                  + (f", {spec.confidence:.0%} paired-bootstrap interval [{d.low:+.4f}, {d.high:+.4f}], p = {d.p_value:.3g}" if d.low is not None else "")]
    lines += ["", f"Policy: min_delta {spec.min_delta:g}, significance {'required' if spec.require_significance else 'not required'}, "
              f"must not regress: {', '.join(spec.must_not_regress) or 'nothing'}"]
    return "\n".join(lines) + "\n"
