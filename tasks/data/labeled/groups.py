"""Validation and test drawn from train by whole groups of near-duplicate rows, so that no drawn row overlaps training.

SST-2's training file holds phrases and sub-phrases of the same sentences: hashing each row alone put a phrase in
validation and its longer sentence in train (290 of 1,309 validation rows equalled a training row), and a
validation score that rewards memorising picked the wrong model. Rows that are equal (case and punctuation aside) or
share a word n-gram are joined into one group, and a group lands whole in one split. "Near-duplicate" is exactly the
overlap that `decontaminate.overlap` reports on the card, so that the card shows 0 for a drawn split.

An exact index (each n-gram → the first row that has it) with a hand-written union-find, not datasketch's MinHash LSH
(which `clean.py` uses to drop near duplicates): LSH finds pairs by estimated Jaccard similarity over all of a text's
shingles, so it misses two rows that share one n-gram among many, and that one n-gram is what the card promises is
absent. Union-find is twenty lines; the graph libraries that have it (networkx, scipy) would need the edges listed first.
"""

from collections import defaultdict

from tasks.data import clean, decontaminate
from tasks.data.spec import SplitSpec
from tasks.errors import UserError


def roots(texts: list[str], units: list[str], n: int) -> list[int]:
    """Each row's group, named by one of its rows: rows with the same unit, equal words or a shared n-gram are one group."""
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
    return [find(i) for i in range(len(texts))]


def draw(rows: list[dict], texts: list[str], units: list[str], how: SplitSpec, n: int):
    """The rows split by whole groups, each by a salted hash of its smallest unit (a lone row's own, as with split.group off),
    and the card's account of the groups. A group larger than the smallest drawn split's share of the rows stays in
    train: drawn, it would be most of that split on its own."""
    root = roots(texts, units, n)
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
        "rows": len(rows),
        "groups": len(members),
        "multi_row_groups": sum(s > 1 for s in sizes),
        "rows_in_multi_row_groups": sum(s for s in sizes if s > 1),
        "largest": max(sizes),
        "kept_in_train": {"groups": len(big), "rows": len(kept), "over_rows": limit},
    }
    return {name: [rows[p["i"]] for p in part] for name, part in parts.items()}, report
