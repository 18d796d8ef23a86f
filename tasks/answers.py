"""Final numeric answers of math word problems (GSM8K): extracted from a solution or a generation, compared as numbers,
and voted on across sampled generations (self-consistency)."""

import re
from collections import Counter
from decimal import Decimal

import numpy as np

# Sequences generated at once when scoring math: worked solutions run to ~256 tokens, and on a CPU one decoding step of
# 32 sequences costs little more than one of 8 (measured with SmolLM2-135M: 4.2 s per problem at 32, 7.9 s at 8).
BATCH_SIZE = 32
MARK = "####"  # GSM8K writes the final answer after this mark, on the solution's last line
# `<<48/2=24>>`: the calculator annotations of GSM8K solutions (the result follows them in the text).
ANNOTATION = re.compile(r"<<[^>]*>>")
# A number as written in prose: an optional minus (not a hyphen between words or digits), an optional `$`, digits
# with or without thousands separators, an optional decimal part. `7.` ends a sentence: its period is not a decimal.
NUMBER = re.compile(r"(?<![\w.])(-?)\$?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")


def strip_annotations(text: str) -> str:
    """The solution without its `<<expr=result>>` calculator annotations."""
    return ANNOTATION.sub("", text)


def _numbers(text: str) -> list[float]:
    return [float(sign + whole.replace(",", "") + fraction) for sign, whole, fraction in NUMBER.findall(text)]


def final(solution: str) -> float | None:
    """The first number after the first `####` (GSM8K's final answer), or None when there is no mark or no number after it."""
    if MARK not in solution:
        return None
    after = _numbers(solution.split(MARK, 1)[1])
    return after[0] if after else None


def extract(text: str) -> float | None:
    """The first number after the first `####`, else the last number in the text; commas, `$`, units and a final period
    dropped; None when there is no number.

    The first mark, not the last: a model that goes on after its answer (a new question, another solution) has
    already answered this one.
    """
    stated = final(text)
    if stated is not None:
        return stated
    found = _numbers(text)
    return found[-1] if found else None


def same(predicted: float | None, gold: float | None) -> bool:
    """Exact numeric match (1234 == 1234.0); no answer matches nothing."""
    return predicted is not None and gold is not None and predicted == gold


def vote(answers: list[float | None]) -> float | None:
    """The most frequent extracted answer (self-consistency, Wang et al. 2022); a tie goes to the answer found first,
    so the vote is deterministic; generations without a number do not vote."""
    counted = Counter(a for a in answers if a is not None)
    if not counted:
        return None
    best = max(counted.values())
    return next(a for a in answers if a is not None and counted[a] == best)


def score(generations: list[str], solutions: list[str]) -> tuple[dict[str, float], np.ndarray, list[float | None]]:
    """answer_accuracy (the extracted number equals the solution's `####` number) and no_answer_rate (no number found),
    with each generation's correctness [n] (1.0 or 0.0, for paired tests) and its extracted answer."""
    found = [extract(g) for g in generations]
    correct = np.array([float(same(a, final(s))) for a, s in zip(found, solutions)])
    n = max(1, len(generations))
    metrics = {"answer_accuracy": float(correct.sum()) / n, "no_answer_rate": sum(a is None for a in found) / n}
    return metrics, correct, found


def shown(value: float | None) -> str:
    """An answer as a table cell: `1234`, `12.5`, or empty for none."""
    return "" if value is None else format(Decimal(repr(value)).normalize(), "f")


def hit(cell: str | None, solution: str) -> bool:
    """A table cell's answer (as `shown` writes it) against the final number of a worked solution."""
    return same(float(cell) if cell else None, final(solution))
