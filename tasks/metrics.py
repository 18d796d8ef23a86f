"""Evaluation metrics, figures and paired significance tests: pure functions on arrays, no MLflow calls."""

import math
import re

import numpy as np
import sacrebleu
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

try:
    from scipy.stats import binomtest
except ImportError:  # scipy is optional; mcnemar falls back to the exact binomial sum below
    binomtest = None

NLL_FLOOR = 1e-12  # probabilities are clipped here so one confidently wrong example gives a large, finite NLL
BOOTSTRAP_CELLS = 2_000_000  # resampled indices held at once: [chunk, n] int64 + float64 ≈ 32 MB whatever n is


def _check_probs(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=float)
    if probs.ndim != 2 or y_true.ndim != 1 or len(y_true) != len(probs) or len(y_true) == 0:
        raise ValueError(
            f"metrics: expected y_true [n] and probs [n, k] with n > 0, got shapes {y_true.shape} and {probs.shape}; "
            "pass one row of class probabilities per example."
        )
    if y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise ValueError(
            f"metrics: y_true holds ids outside 0..{probs.shape[1] - 1}; pass label ids that index the columns of probs."
        )
    return y_true.astype(int), probs


def _bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each confidence, equal-width bins on [0, 1]: bin i holds (i/bins, (i+1)/bins], bin 0 also holds 0."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def _reliability(y_true: np.ndarray, probs: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: example count, mean top-1 confidence and accuracy (0 where a bin is empty), each [bins]."""
    confidence, hit = probs.max(axis=1), (probs.argmax(axis=1) == y_true).astype(float)
    which = _bins(confidence, bins)
    count = np.bincount(which, minlength=bins)
    seen = np.maximum(count, 1)
    return count, np.bincount(which, confidence, bins) / seen, np.bincount(which, hit, bins) / seen


def expected_calibration_error(y_true, probs, bins: int = 15) -> float:
    """ECE on the top-1 confidence: sum over equal-width bins of (bin size / n) · |accuracy − mean confidence|."""
    # sklearn has no ECE (calibration_curve is per-class and drops the weights), so it is written here.
    y_true, probs = _check_probs(y_true, probs)
    count, confidence, accuracy = _reliability(y_true, probs, bins)
    return float(np.sum(count / count.sum() * np.abs(accuracy - confidence)))


def classification(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, ECE, NLL, per-class precision/recall/F1/support and the confusion matrix (rows true)."""
    y_true, probs = _check_probs(y_true, probs)
    k = probs.shape[1]
    if len(labels) != k:
        raise ValueError(f"metrics: {len(labels)} labels for {k} probability columns; pass one label name per class.")
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=range(k), zero_division=0)
    # Written out rather than sklearn's log_loss, which renormalises each row: this is the probability the model gave.
    nll = -np.log(np.clip(probs[np.arange(len(y_true)), y_true], NLL_FLOOR, 1.0))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # sklearn's default label set: classes that occur in y_true or y_pred (an unseen, unpredicted class is not a 0).
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "ece": expected_calibration_error(y_true, probs),
        "nll": float(nll.mean()),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=range(k)).tolist(),
    }


def metric_name(label: str) -> str:
    """A label as an MLflow-safe metric-name part: anything outside [A-Za-z0-9_.-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(label))


def flat(report: dict) -> dict[str, float]:
    """A classification() report as MLflow metrics: accuracy, macro_f1, ece, nll, precision_/recall_/f1_<label>."""
    out = {name: float(report[name]) for name in ("accuracy", "macro_f1", "ece", "nll")}
    used: set[str] = set()
    for i, (label, scores) in enumerate(report["per_class"].items()):
        part = metric_name(label)
        if part in used:  # "a b" and "a/b" both sanitise to "a_b": keep both, told apart by class index
            part = f"{part}_{i}"
        used.add(part)
        for score in ("precision", "recall", "f1"):
            out[f"{score}_{part}"] = float(scores[score])
    return out


def correct(y_true, probs) -> np.ndarray:
    """Per-example top-1 correctness as 0.0/1.0, [n]: the score paired_bootstrap resamples for accuracy."""
    y_true, probs = _check_probs(y_true, probs)
    return (probs.argmax(axis=1) == y_true).astype(float)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Paired bootstrap of mean(a) − mean(b) over the same examples: the delta, a percentile CI and a p-value.

    The p-value is the usual paired-bootstrap approximation 2·min(P(delta* ≤ 0), P(delta* ≥ 0)), capped at 1, over
    the resampled deltas delta*; 0 means no resample crossed zero, i.e. p < 1/samples.
    """
    # Written here because scipy.stats.bootstrap has no paired p-value and holds every resample in memory at once.
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"paired_bootstrap: challenger and champion scores have shapes {a.shape} and {b.shape}; "
            "score both models on the same examples, one score per example."
        )
    if len(a) == 0:
        raise ValueError("paired_bootstrap: no examples to compare; score both models on a non-empty test set.")
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"paired_bootstrap: samples={samples}, confidence={confidence}; pass samples ≥ 1 and 0 < confidence < 1."
        )
    diff, n = a - b, len(a)
    rng = np.random.default_rng(seed)
    # Chunks bound memory; numpy draws the same index stream in chunks as in one go, so results do not depend on them.
    chunk = max(1, min(samples, BOOTSTRAP_CELLS // n))
    deltas = np.concatenate([
        diff[rng.integers(0, n, size=(min(chunk, samples - start), n))].mean(axis=1)  # [chunk, n] -> [chunk]
        for start in range(0, samples, chunk)
    ])  # fmt: skip
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    p_value = min(1.0, 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0)))
    return {
        "delta": float(diff.mean()), "low": float(low), "high": float(high), "p_value": float(p_value),
        "samples": int(samples), "confidence": float(confidence), "n": int(n),
    }  # fmt: skip


def _binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 0.5: the chance of a split at least as uneven as k of n (symmetric, so 2·tail)."""
    # Only used without scipy; at p = 0.5 the two-sided p is twice the smaller tail.
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """Exact McNemar test: a binomial test at 0.5 on the examples exactly one of the two models got right."""
    a_correct, b_correct = np.asarray(a_correct).astype(bool), np.asarray(b_correct).astype(bool)
    if a_correct.ndim != 1 or a_correct.shape != b_correct.shape:
        raise ValueError(
            f"mcnemar: correctness arrays have shapes {a_correct.shape} and {b_correct.shape}; "
            "score both models on the same examples, one 0/1 per example."
        )
    a_only, b_only = int(np.sum(a_correct & ~b_correct)), int(np.sum(~a_correct & b_correct))
    discordant = a_only + b_only
    if discordant == 0:
        p_value = 1.0
    elif binomtest is not None:
        p_value = float(binomtest(a_only, discordant, 0.5).pvalue)
    else:
        p_value = _binomial_two_sided(a_only, discordant)
    return {"b_only": b_only, "a_only": a_only, "p_value": p_value}


# Figures are built on matplotlib.figure.Figure directly, never pyplot: no global state, so thread-safe and headless.


def confusion_figure(confusion: list[list[int]], labels: list[str], title: str = "") -> Figure:
    """An annotated heatmap of a confusion matrix: rows true class, columns predicted class, counts in the cells."""
    counts = np.asarray(confusion, dtype=int)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"confusion_figure: a {counts.shape} matrix for {k} labels; pass a k×k matrix and k labels.")
    side = min(4 + 0.5 * k, 20)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", vmin=0)
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:  # beyond that the numbers no longer fit their cells
        dark = counts.max() / 2
        for i in range(k):
            for j in range(k):
                ax.text(
                    j, i, str(counts[i, j]), ha="center", va="center", color="white" if counts[i, j] > dark else "black"
                )
    ax.set_title(title or "confusion matrix")
    return fig


def curves_figure(series: dict[str, list[tuple[int, float]]], title: str = "", ylabel: str = "loss") -> Figure:
    """A line plot of (step, value) series, e.g. {"train loss": [...], "validation loss": [...]}."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, points in series.items():
        if points:
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(series.values()):
        ax.legend()
    ax.set_title(title)
    return fig


def calibration_figure(y_true, probs, bins: int = 15) -> Figure:
    """A reliability diagram: accuracy per top-1 confidence bin against the diagonal, ECE in the title."""
    y_true, probs = _check_probs(y_true, probs)
    count, _, accuracy = _reliability(y_true, probs, bins)
    edges = np.linspace(0, 1, bins + 1)
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot()
    filled = count > 0
    ax.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge", edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    ax.set_title(f"reliability diagram, ECE = {expected_calibration_error(y_true, probs, bins):.4f}")
    return fig


def _check_texts(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references) or not references:
        raise ValueError(
            f"metrics: {len(predictions)} predictions for {len(references)} references; pass one prediction per reference."
        )


def generation(predictions: list[str], references: list[str]) -> dict:
    """Exact match (after strip), corpus chrF and corpus BLEU (sacrebleu), as tasks.finetune.sft.generation_scores."""
    _check_texts(predictions, references)
    return {
        # sft compares stripped generations to the references as given; stripping both agrees on clean references.
        "exact_match": sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references),
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
    }


def generation_per_example(predictions: list[str], references: list[str]) -> np.ndarray:
    """Sentence-level chrF (0–100) per example, [n]: the score paired_bootstrap resamples for generation."""
    _check_texts(predictions, references)
    return np.array([sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(predictions, references)])
