"""Champion vs challenger: the policy that decides (`decide`; `decide_alone` with no champion: the trivial baseline and
the threshold), and `@champion` moved by compare-and-set.

MLflow has no atomic compare-and-set on aliases, so promotion takes a lock first: a registered model named
`<name>.promotion-lock`, whose creation every backend (SQL store or server) makes atomic through its unique name. Under
the lock the holder is read again; if it changed since the decision, the caller decides again against the new holder.
"""

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import mlflow
from mlflow.tracking import MlflowClient

from tasks.backend import configure
from tasks.gate.spec import GateSpec
from tasks.tracking import resolve_version

LOWER_IS_BETTER = {"perplexity", "loss", "ece", "nll"}


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
    baseline: str | None = None  # with no champion: the trivial baseline the challenger had to beat, and its value
    baseline_value: float | None = None

    @property
    def verdict(self) -> str:
        """The words the log, the registry tag and the run summary use."""
        if self.report_only:
            return "would promote (report only)" if self.promote else "would reject (report only)"
        return "promoted" if self.promote else "rejected"

    def tags(self) -> dict[str, str]:
        """The decision as version tags; what does not apply (no champion, no interval) is left out, not written empty."""
        out = {
            f"gate.{k}": json.dumps(v) if isinstance(v, dict) else f"{v:.6g}" if isinstance(v, float) else str(v)
            for k, v in asdict(self).items()
            if v is not None and v != {}
        }
        out["gate.decision"] = self.verdict
        return out


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is."""
    return -1 if metric in LOWER_IS_BETTER else 1


def decide(
    spec: GateSpec,
    metric: str,
    challenger: str,
    champion: str,
    values: dict[str, dict[str, float]],
    interval: dict | None,
) -> Decision:
    """The policy: min_delta, significance and no regressions against the champion. `values[model][metric]`."""
    mine = values[challenger][metric]
    theirs = values[champion][metric]
    # The interval is on the difference of per-example scores (log-loss for perplexity), signed so that positive is better.
    delta = interval["delta"] if interval else direction(metric) * (mine - theirs)
    low, high, p = (interval["low"], interval["high"], interval["p_value"]) if interval else (None, None, None)
    regressions = {
        m: values[challenger][m] - values[champion][m]
        for m in spec.must_not_regress
        if m in values[challenger]
        and m in values[champion]
        and direction(m) * (values[challenger][m] - values[champion][m]) < -spec.regress_tolerance
    }
    base = dict(
        metric=metric,
        challenger=challenger,
        champion=champion,
        challenger_value=mine,
        champion_value=theirs,
        delta=delta,
        low=low,
        high=high,
        p_value=p,
        regressions=regressions,
    )
    ci = f" ({spec.confidence:.0%} CI {low:+.4f} to {high:+.4f}, p={p:.3g})" if interval else ""
    if delta <= spec.min_delta:
        return Decision(
            False,
            f"{metric} {mine:.4g} vs champion {theirs:.4g}: gain {delta:+.4f}{ci} is not above min_delta {spec.min_delta:g}",
            **base,
        )
    if spec.require_significance and not (low is not None and low > 0):
        return Decision(
            False, f"{metric} {mine:.4g} vs champion {theirs:.4g}: gain {delta:+.4f}{ci} is not significant", **base
        )
    if regressions:
        worse = ", ".join(f"{m} {d:+.4f}" for m, d in regressions.items())
        return Decision(
            False, f"{metric} gains {delta:+.4f}{ci} but {worse} regress beyond {spec.regress_tolerance:g}", **base
        )
    return Decision(True, f"{metric} {mine:.4g} vs champion {theirs:.4g}: gain {delta:+.4f}{ci}", **base)


def decide_alone(
    spec: GateSpec, metric: str, challenger: str, mine: float, baseline: tuple[str, float] | None, why: str
) -> Decision:
    """The policy without a champion (`why` says why there is none): beat the trivial baseline (name, value) when one
    was measured, and reach gate.threshold when one is set."""
    said = f"{why}; the challenger's {metric} {mine:.4g}"
    name, value = baseline or (None, None)
    base = dict(metric=metric, challenger=challenger, champion=None, challenger_value=mine)
    base.update(baseline=name, baseline_value=value)
    if baseline is not None:
        gain = direction(metric) * (mine - value)
        if gain <= 0:  # a tie is not a gain: the challenger learnt nothing the baseline does not know
            verb = "is worse than" if gain < 0 else "only equals"
            return Decision(False, f"{said} {verb} the {name} baseline's {value:.4g}", **base)
        said += f" beats the {name} baseline's {value:.4g}"
    if spec.threshold is None:
        if baseline is None:
            return Decision(True, f"{why}, no baseline and no threshold: the first challenger is promoted", **base)
        return Decision(True, said, **base)
    ok = direction(metric) * (mine - spec.threshold) >= 0
    joint = ("" if baseline is None else " and" if ok else " but") + (" reaches" if ok else " misses")
    return Decision(ok, f"{said}{joint} the threshold {spec.threshold:g}", **base)


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
            client.create_registered_model(
                lock,
                tags={"multistep.lock_owner": owner, "multistep.lock_time": f"{time.time():.0f}"},
                description="held while multistep moves an alias of " + name,
            )
            break
        except mlflow.exceptions.MlflowException:
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                held = client.get_registered_model(lock)
                # its owner died holding it
                if time.time() - float(held.tags.get("multistep.lock_time", "0")) > stale_after_s:
                    client.delete_registered_model(lock)
                    continue
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{lock} has been held for over {wait_s:.0f} s; if no promotion is running, delete that registered model"
                )
            time.sleep(0.2)
    try:
        yield
    finally:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.delete_registered_model(lock)


def promote(
    name: str, alias: str, challenger: str, judge: Callable[[str | None], Decision], attempts: int = 5
) -> Decision:
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
    inputs = {"model": model, "dataset": dataset}
    configure(experiment)
    version = resolve_version(model)
    champion = holder(version.name, spec.alias)
    # Another holder is another decision, so it enters the stage key; a challenger that already holds the alias (a rerun
    # after its promotion) keeps the key of the decision that promoted it, and the rerun is a cache hit.
    if champion and champion != f"models:/{version.name}/{version.version}":
        inputs["champion"] = champion
    return inputs
