"""Train/eval overlap: exact duplicates and shared word n-grams, reported on the data card and optionally dropped from train.

Written here rather than taken from a library: the n-gram test of GPT-3's appendix C (lowercased words, a text
shorter than n words counts as one n-gram) is a few lines of set arithmetic, and the known packages either pull
in a search engine or target pretraining-scale corpora.
"""

import re

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lowercased word n-grams of a text; the whole text as one gram when it is shorter than n words."""
    w = words(text)
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def bare(text: str) -> str:
    """A text as its lowercased words alone: what "equal" means here, case and punctuation aside."""
    return " ".join(words(text))


def words(text: str) -> list[str]:
    """A text's lowercased words, as every test here sees them."""
    return _WORD.findall(text.lower())


def runs(text: str, lengths) -> list[str]:
    """Every run of consecutive words of a text, of each of the given lengths, as bare text."""
    w = words(text)
    return [" ".join(w[i : i + k]) for k in lengths for i in range(len(w) - k + 1)]


def inside(train: list[str], evaluation: list[str], n: int) -> list[bool]:
    """Per eval text: whether it is shorter than n words and its words run, word for word, inside (or equal) a train text.

    Such a text is one n-gram to `overlap`, so a phrase cut out of a training sentence counts there only when a
    training row equals it; SST-2's training file holds exactly such phrases."""
    short = [bare(t) if 0 < len(words(t)) < n else "" for t in evaluation]
    wanted = set(short) - {""}
    lengths = sorted({len(s.split()) for s in wanted})
    found = {r for t in train for r in runs(t, lengths) if r in wanted}  # windows of the lengths asked only
    return [bool(s) and s in found for s in short]


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
