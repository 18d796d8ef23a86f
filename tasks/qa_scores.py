"""SQuAD v1.1 answer scores: exact match and token F1 after the official normalisation, the maximum over gold answers.

Written out after the official `evaluate-v1.1.py` (about 30 lines): Hugging Face's `evaluate` squad metric is not
installed here and fetches its script from the hub at first use, which an offline machine cannot do.
"""

import re
import string
from collections import Counter

import numpy as np

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces: the official order of the steps."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall, tokens counted with multiplicity (0 when nothing is shared)."""
    predicted, wanted = normalize(prediction).split(), normalize(gold).split()
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def scores(predictions: list[str], golds: list[list[str]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean exact match and F1 (fractions in [0, 1], not the paper's percentages), and each per question [n]."""
    if len(predictions) != len(golds) or not golds or not all(golds):
        raise ValueError(
            f"answers: {len(predictions)} predictions for {len(golds)} questions, each needing at least one gold answer"
        )
    per = {
        "exact_match": np.array([max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, golds)]),
        "f1": np.array([max(f1(p, g) for g in gs) for p, gs in zip(predictions, golds)]),
    }
    return {k: float(v.mean()) for k, v in per.items()}, per
