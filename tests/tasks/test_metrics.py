"""Evaluation metrics, significance tests and figures on hand-made examples with known answers."""

import io
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from tasks import metrics

LABELS = ["cat", "dog", "bird"]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])  # 4 of 6 right


def confident(pred: np.ndarray, k: int, top: float) -> np.ndarray:
    """Probabilities [n, k] with `top` on the predicted class and the rest spread evenly."""
    probs = np.full((len(pred), k), (1 - top) / (k - 1))
    probs[np.arange(len(pred)), pred] = top
    return probs


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_classification_hand_made_example():
    report = metrics.classification(Y_TRUE, confident(Y_PRED, 3, 0.8), LABELS)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows true, columns predicted
    assert report["per_class"]["cat"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert report["per_class"]["dog"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert report["per_class"]["bird"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert report["ece"] == pytest.approx(abs(4 / 6 - 0.8))  # one bin: confidence 0.8, accuracy 4/6
    assert report["nll"] == pytest.approx((4 * -math.log(0.8) + 2 * -math.log(0.1)) / 6)


def test_unpredicted_class_scores_zero_not_nan():
    report = metrics.classification(np.array([0, 1]), confident(np.array([0, 0]), 3, 0.9), LABELS)
    assert report["per_class"]["dog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["bird"]["support"] == 0
    assert report["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_ece_zero_when_perfectly_calibrated():
    report = metrics.classification(Y_TRUE, np.eye(3)[Y_TRUE], LABELS)
    assert report["accuracy"] == 1.0
    assert report["ece"] == pytest.approx(0.0)
    assert report["nll"] == pytest.approx(0.0)


def test_ece_constructed_two_bins():
    # 4 examples at confidence 0.9 with 3 right (gap 0.15), 6 at 0.6 with 3 right (gap 0.1): 0.4·0.15 + 0.6·0.1.
    y_true = np.array([0, 0, 0, 1] + [0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 6)
    assert metrics.expected_calibration_error(y_true, probs) == pytest.approx(0.12)
    assert metrics.classification(y_true, probs, ["a", "b"])["ece"] == pytest.approx(0.12)


def test_nll_is_clipped_not_infinite():
    report = metrics.classification(np.array([1]), np.array([[1.0, 0.0]]), ["a", "b"])
    assert report["nll"] == pytest.approx(-math.log(metrics.NLL_FLOOR))


def test_classification_rejects_mismatched_labels_and_shapes():
    with pytest.raises(ValueError, match="one label name per class"):
        metrics.classification(Y_TRUE, confident(Y_PRED, 3, 0.8), ["cat", "dog"])
    with pytest.raises(ValueError, match="probs"):
        metrics.classification(Y_TRUE[:3], confident(Y_PRED, 3, 0.8), LABELS)
    with pytest.raises(ValueError, match="outside 0..2"):
        metrics.classification(np.array([3]), np.array([[0.2, 0.3, 0.5]]), LABELS)


def test_flat_metric_names_are_mlflow_safe():
    labels = ["very good", "a/b", "a b", "ok-1.0"]
    y_true = np.array([0, 1, 2, 3])
    out = metrics.flat(metrics.classification(y_true, np.eye(4)[y_true], labels))
    assert set(out) == {
        "accuracy", "macro_f1", "ece", "nll",
        *(f"{s}_{p}" for s in ("precision", "recall", "f1") for p in ("very_good", "a_b", "a_b_2", "ok-1.0")),
    }  # fmt: skip
    assert out["accuracy"] == 1.0 and out["f1_very_good"] == 1.0
    assert all(isinstance(v, float) for v in out.values())


def test_correct_is_per_example_float():
    out = metrics.correct(Y_TRUE, confident(Y_PRED, 3, 0.8))
    assert out.dtype == float
    assert out.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_bootstrap_identical_inputs():
    a = np.random.default_rng(1).random(200)
    out = metrics.paired_bootstrap(a, a.copy(), samples=500)
    assert out["delta"] == 0.0 and out["low"] <= 0.0 <= out["high"]
    assert out["p_value"] == 1.0
    assert (out["samples"], out["confidence"], out["n"]) == (500, 0.95, 200)


def test_bootstrap_clearly_better_challenger():
    rng = np.random.default_rng(2)
    a, b = (rng.random(500) < 0.9).astype(float), (rng.random(500) < 0.6).astype(float)
    out = metrics.paired_bootstrap(a, b)
    assert out["delta"] == pytest.approx(a.mean() - b.mean())
    assert 0 < out["low"] < out["delta"] < out["high"]
    assert out["p_value"] < 0.01


def test_bootstrap_tiny_difference_is_not_significant():
    a = np.array([1.0] * 11 + [0.0] * 9)  # 11 of 20 right
    b = np.array([1.0] * 10 + [0.0] * 10)  # 10 of 20 right, same examples otherwise
    b = b[np.random.default_rng(3).permutation(20)]
    out = metrics.paired_bootstrap(a, b)
    assert out["delta"] == pytest.approx(0.05)
    assert out["low"] < 0 < out["high"]
    assert out["p_value"] > 0.05


def test_bootstrap_deterministic_and_independent_of_chunking(monkeypatch):
    rng = np.random.default_rng(4)
    a, b = rng.random(101), rng.random(101)
    first = metrics.paired_bootstrap(a, b, samples=300, seed=7)
    assert metrics.paired_bootstrap(a, b, samples=300, seed=7) == first
    assert metrics.paired_bootstrap(a, b, samples=300, seed=8)["low"] != first["low"]
    monkeypatch.setattr(metrics, "BOOTSTRAP_CELLS", 101 * 7)  # chunks of 7 resamples, the last one short
    assert metrics.paired_bootstrap(a, b, samples=300, seed=7) == first


def test_bootstrap_confidence_widens_interval():
    rng = np.random.default_rng(5)
    a, b = rng.random(300), rng.random(300)
    narrow, wide = (metrics.paired_bootstrap(a, b, confidence=c) for c in (0.5, 0.99))
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="same examples"):
        metrics.paired_bootstrap(np.ones(5), np.ones(6))
    with pytest.raises(ValueError, match="non-empty"):
        metrics.paired_bootstrap(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="confidence"):
        metrics.paired_bootstrap(np.ones(5), np.ones(5), confidence=1.5)


@pytest.mark.parametrize("scipy", [True, False], ids=["scipy", "math.comb"])
def test_mcnemar_known_counts(scipy, monkeypatch):
    if not scipy:
        monkeypatch.setattr(metrics, "binomtest", None)
    # 8 examples only a got right, 2 only b, 10 both, 5 neither: p = 2·P(X ≤ 2 | n=10, 0.5) = 2·56/1024.
    a = np.array([1] * 8 + [0] * 2 + [1] * 10 + [0] * 5)
    b = np.array([0] * 8 + [1] * 2 + [1] * 10 + [0] * 5)
    assert metrics.mcnemar(a, b) == pytest.approx({"b_only": 2, "a_only": 8, "p_value": 112 / 1024})
    assert metrics.mcnemar(a, a) == {"b_only": 0, "a_only": 0, "p_value": 1.0}
    with pytest.raises(ValueError, match="same examples"):
        metrics.mcnemar(a, b[:-1])


@pytest.mark.parametrize("n", [1, 2, 9, 10, 31])
def test_binomial_fallback_matches_scipy(n):
    scipy_stats = pytest.importorskip("scipy.stats")
    for k in range(n + 1):
        assert metrics._binomial_two_sided(k, n) == pytest.approx(scipy_stats.binomtest(k, n, 0.5).pvalue)


def test_confusion_figure():
    report = metrics.classification(Y_TRUE, confident(Y_PRED, 3, 0.8), LABELS)
    fig = metrics.confusion_figure(report["confusion"], LABELS, title="test")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["1", "1", "0", "0", "2", "0", "1", "0", "1"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "test")
    assert [t.get_text() for t in ax.get_yticklabels()] == LABELS
    assert png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="k×k"):
        metrics.confusion_figure([[1, 2]], LABELS)


def test_curves_figure():
    fig = metrics.curves_figure(
        {"train loss": [(2, 1.5), (1, 2.0), (3, 1.2)], "validation loss": [(1, 2.1), (3, 1.4)], "empty": []},
        title="loss",
    )
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["train loss", "validation loss"]
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3]  # sorted by step
    assert png(fig).startswith(b"\x89PNG")


def test_calibration_figure():
    y_true = np.array([0, 0, 0, 1] + [0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 6)
    fig = metrics.calibration_figure(y_true, probs)
    (ax,) = fig.axes
    assert "ECE = 0.1200" in ax.get_title()
    assert sorted(p.get_height() for p in ax.patches) == pytest.approx([0.5, 0.75])  # only the two filled bins
    assert png(fig).startswith(b"\x89PNG")


def test_generation_perfect_and_partial():
    refs = ["the cat sat on the mat", "a quick brown fox jumps over"]
    perfect = metrics.generation([" the cat sat on the mat\n", "a quick brown fox jumps over"], refs)
    assert perfect == pytest.approx({"exact_match": 1.0, "chrf": 100.0, "bleu": 100.0})
    partial = metrics.generation(["the cat sat on the mat", "something else entirely here"], refs)
    assert partial["exact_match"] == 0.5
    assert 0 < partial["bleu"] < 100 and 0 < partial["chrf"] < 100


def test_generation_per_example():
    scores = metrics.generation_per_example(
        ["the cat sat on the mat", "xyz"], ["the cat sat on the mat", "a quick brown fox"]
    )
    assert scores.shape == (2,)
    assert scores[0] == pytest.approx(100.0)
    assert scores[1] < 10
    with pytest.raises(ValueError, match="one prediction per reference"):
        metrics.generation(["a"], ["a", "b"])
