"""Train/eval overlap: exact duplicates and shared word n-grams, reported on the data card and optionally dropped from train.

Written here rather than taken from a library: the n-gram test of GPT-3's appendix C (lowercased words, a text
shorter than n words counts as one n-gram) is a few lines of set arithmetic, and the known packages either pull
in a search engine or target pretraining-scale corpora.
"""

import re

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lowercased word n-grams of a text; the whole text as one gram when it is shorter than n words."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def bare(text: str) -> str:
    """A text as its lowercased words alone: what "equal" means here, case and punctuation aside."""
    return " ".join(_WORD.findall(text.lower()))


def overlap(train: list[str], evaluation: list[str], n: int) -> tuple[dict[str, int], list[bool]]:
    """Counts of train and eval texts that match the other side exactly or share an n-gram; and, per train text, whether it does either."""
    eval_exact = {bare(t) for t in evaluation}
    eval_grams = set().union(*(ngrams(t, n) for t in evaluation)) if evaluation else set()
    train_exact = [bare(t) in eval_exact for t in train]
    train_gram = [not ngrams(t, n).isdisjoint(eval_grams) for t in train]
    train_norm = {bare(t) for t in train}
    train_grams = set().union(*(ngrams(t, n) for t in train)) if train else set()
    counts = {
        "train_rows_exact": sum(train_exact),
        "train_rows_ngram": sum(train_gram),
        "eval_rows_exact": sum(bare(t) in train_norm for t in evaluation),
        "eval_rows_ngram": sum(not ngrams(t, n).isdisjoint(train_grams) for t in evaluation),
        "eval_rows": len(evaluation),
    }
    return counts, [e or g for e, g in zip(train_exact, train_gram)]
