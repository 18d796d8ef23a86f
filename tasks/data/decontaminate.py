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
    return overlaps(train, {"": evaluation}, n)[""]


def _grams(w: list[str], n: int):
    """`ngrams` of a word list as an iterable, not a set of its own: the caller intersects it with a set in C."""
    if len(w) < n:
        return [tuple(w)] if w else []
    return zip(*(w[i:] for i in range(n)))  # the n staggered lists zipped: every window without a slice each


def overlaps(
    train: list[str], evaluations: dict[str, list[str]], n: int
) -> dict[str, tuple[dict[str, int], list[bool]]]:
    """`overlap` against each named eval set, reading each training text once.

    Only training grams that some eval text has are kept (an eval text's grams meet the training grams exactly where
    they meet these), so memory follows the eval sets, not the training corpus."""
    eval_words = {name: [words(t) for t in texts] for name, texts in evaluations.items()}
    eval_exact = {name: {" ".join(w) for w in ws} for name, ws in eval_words.items()}
    eval_grams = {name: set().union(*(_grams(w, n) for w in ws)) for name, ws in eval_words.items()}
    any_exact, any_gram = set().union(*eval_exact.values()), set().union(*eval_grams.values())
    exact_flags = {name: [] for name in evaluations}
    gram_flags = {name: [] for name in evaluations}
    matched, shared = set(), set()  # bare train texts equal to an eval text; train grams an eval text has
    for text in train:
        w = words(text)
        b = " ".join(w)
        if b in any_exact:
            matched.add(b)
        common = any_gram.intersection(_grams(w, n))
        shared |= common
        for name in evaluations:
            exact_flags[name].append(b in eval_exact[name])
            gram_flags[name].append(not common.isdisjoint(eval_grams[name]))
    out = {}
    for name, ws in eval_words.items():
        counts = {
            "train_rows_exact": sum(exact_flags[name]),
            "train_rows_ngram": sum(gram_flags[name]),
            "eval_rows_exact": sum(" ".join(w) in matched for w in ws),
            "eval_rows_ngram": sum(not shared.isdisjoint(_grams(w, n)) for w in ws),
            "eval_rows": len(ws),
        }
        out[name] = counts, [e or g for e, g in zip(exact_flags[name], gram_flags[name])]
    return out
