"""Validation and test drawn from train by whole groups of near-duplicate rows, so that no drawn row overlaps training.

SST-2's training file holds phrases and sub-phrases of the same sentences: hashing each row alone put a phrase in
validation and its longer sentence in train (290 of 1,309 validation rows equalled a training row), and a
validation score that rewards memorising picked the wrong model. Rows that are equal (case and punctuation aside) or
share a word n-gram are joined into one group, and a group lands whole in one split. "Near-duplicate" is exactly the
overlap that `decontaminate.overlap` reports on the card, so that the card shows 0 for a drawn split. A row shorter
than n words is one n-gram there, so a phrase cut out of a training sentence would join it only when equal: a row of
`split.contained_min_words` to n-1 words also joins every row it runs inside, word for word (SST-2: 725 of the 1,377
validation rows ran inside a training row without this). Shorter rows stay apart, as any 3 common words would chain
thousands of rows (SST-2: a largest group of 4,968 rows at 3 words, 157 at 4).

An exact index (each n-gram → the first row that has it) with a hand-written union-find, not datasketch's MinHash LSH
(which `clean.py` uses to drop near duplicates): LSH finds pairs by estimated Jaccard similarity over all of a text's
shingles, so it misses two rows that share one n-gram among many, and that one n-gram is what the card promises is
absent. Union-find is twenty lines; the graph libraries that have it (networkx, scipy) would need the edges listed first.
"""

from collections import defaultdict

from tasks.data import clean, decontaminate
from tasks.data.labeled.spec import LabeledSplitSpec
from tasks.errors import UserError


def roots(texts: list[str], units: list[str], n: int, min_words: int) -> list[int]:
    """Each row's group, named by one of its rows: rows with the same unit, equal words or a shared n-gram are one group,
    and so is a row of min_words to n-1 words with every row its words run inside."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the chains short
            i = parent[i]
        return i

    first: dict = {}  # unit, bare text or n-gram → the first row that has it; the tags keep the three kinds apart
    for i, (text, unit) in enumerate(zip(texts, units)):
        for key in (("unit", unit), ("bare", decontaminate.bare(text)), *decontaminate.ngrams(text, n)):
            a, b = find(first.setdefault(key, i)), find(i)
            if a != b:
                parent[max(a, b)] = min(a, b)
    # Containment: a short row is one n-gram above, so a phrase cut out of a longer row would join it only if equal.
    # Only the short rows' own texts are looked up (they are in `first` already), in windows of their lengths.
    lengths = sorted({len(k[1].split()) for k in first if k[0] == "bare"} & set(range(min_words, n)))
    for i, text in enumerate(texts):
        for run in decontaminate.runs(text, lengths):
            if (j := first.get(("bare", run))) is not None:
                a, b = find(j), find(i)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(texts))]


def draw(rows: list[dict], texts: list[str], units: list[str], how: LabeledSplitSpec, n: int):
    """The rows split by whole groups, each by a salted hash of its smallest unit (a lone row's own, as with split.group off),
    and the card's account of the groups. A group larger than the smallest drawn split's share of the rows stays in
    train: drawn, it would be most of that split on its own."""
    root = roots(texts, units, n, how.contained_min_words)
    members: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(root):
        members[r].append(i)
    # At least 1: in a file too small for any split's share, a lone row is not a swallowing group (clean.split says so).
    limit = max(1, int(min(f for f in (how.validation, how.test) if f > 0) * len(rows)))
    big = {r for r, m in members.items() if len(m) > limit}
    if len(big) == len(members):
        raise UserError(
            f"labeled.split.group: all {len(rows)} training rows fall in groups of near duplicates (equal words or a "
            f"shared {n}-word n-gram) larger than the smallest drawn split's share of {limit} rows, so none is left to "
            "draw; raise labeled.contamination_ngram, or set labeled.split.group to false"
        )
    smallest = {r: min(units[i] for i in m) for r, m in members.items() if r not in big}
    parts = clean.split([{"text": smallest[root[i]], "i": i} for i in range(len(rows)) if root[i] not in big], how)
    kept = [{"i": i} for r in big for i in members[r]]
    parts["train"] = sorted(parts["train"] + kept, key=lambda p: p["i"])  # file order, as with split.group off
    sizes = [len(m) for m in members.values()]
    report = {
        "ngram": n,
        "contained_min_words": how.contained_min_words,
        "rows": len(rows),
        "groups": len(members),
        "multi_row_groups": sum(s > 1 for s in sizes),
        "rows_in_multi_row_groups": sum(s for s in sizes if s > 1),
        "largest": max(sizes),
        "kept_in_train": {"groups": len(big), "rows": len(kept), "over_rows": limit},
    }
    return {name: [rows[p["i"]] for p in part] for name, part in parts.items()}, report
