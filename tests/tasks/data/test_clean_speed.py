"""The sped-up near dedup (zipped shingles, lean sketches, worker processes) decides exactly as the code it replaced."""

import random
import re
import unicodedata

import numpy as np
import xxhash
from datasketch import MinHash

from tasks.data import clean
from tasks.data.spec import CleanSpec


def old_normalize(text: str) -> str:
    """tasks.data.clean.normalize before the speed-up: every pass on every row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.translate(clean._control_table())
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" +\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def old_shingles(text: str, k: int) -> list[bytes]:
    """tasks.data.clean._shingles before the speed-up (commit 1790180)."""
    words = text.lower().split()
    if len(words) < k:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + k]).encode() for i in range(len(words) - k + 1)]


def old_near_duplicates(texts: list[str], spec: CleanSpec) -> list[bool]:
    """tasks.data.clean._near_duplicates before the speed-up, less its progress bar."""
    threshold = spec.near_dedup_threshold
    lsh = clean._lsh(threshold, spec.minhash_permutations)
    kept, duplicate = {}, []
    sketches = MinHash.generator(
        (old_shingles(t, spec.shingle_words) for t in texts), num_perm=spec.minhash_permutations, seed=1
    )
    for i, m in enumerate(sketches):
        is_dup = any(np.mean(kept[j] == m.hashvalues) >= threshold for j in lsh.query(m))
        duplicate.append(is_dup)
        if not is_dup:
            lsh.insert(i, m, check_duplication=False)
            kept[i] = m.hashvalues
    return duplicate


def corpus() -> tuple[list[str], list[bool]]:
    """60 unrelated rows, then copies of the first 20 with their last of 60 words changed, case changed or none,
    and short and non-ASCII rows; returns the texts and which are planted duplicates."""
    rng = random.Random(3)
    unique = [" ".join(f"w{rng.randrange(10**6)}" for _ in range(60)) for _ in range(60)]
    unique += ["short", "Zwei Wörter", "ÉTÉ ÉTÉ été", "a b"]
    copies = []
    for i, text in enumerate(unique[:20]):
        words = text.split()
        if i % 3 == 0:
            words[59] = "edited"  # 57 of 59 shingles shared: Jaccard 0.97
        elif i % 3 == 1:
            words[0] = words[0].upper()  # shingles are lower-cased: the same set
        copies.append(" ".join(words))
    texts = unique[:40] + copies[:10] + unique[40:] + copies[10:] + ["SHORT", "zwei wörter"]
    planted = [False] * 40 + [True] * 10 + [False] * 24 + [True] * 10 + [True, True]
    return texts, planted


# Spaces, tabs, newlines, carriage returns, Cc (NUL, NEL), Cf (zero-width space, BOM), separators that are neither
# (no-break space, line separator), a combining accent that NFC folds, and plain letters.
PIECES = [" ", "  ", "\t", "\n", "\n\n\n", "\r", "\r\n", "\x00", "\x85", "\u200b", "\ufeff", "\xa0", "\u2028"]
PIECES += ["e\u0301", "é", "a", "bc", "Word"]


def test_normalize_is_the_old_one_on_every_mix_of_tricky_characters():
    rng = random.Random(4)
    texts = ["".join(rng.choices(PIECES, k=rng.randint(0, 12))) for _ in range(3000)]
    texts += ["plain words only", "a  b", "a\tb", "a \nb", "a\n\n\n\nb", "a\u200bb", "a\xa0\nb\x00"]
    for text in texts:
        assert clean.normalize(text) == old_normalize(text), repr(text)


def test_shingles_are_the_old_ones():
    for text in corpus()[0] + ["", "one", "two words", "  spaced \t out\nlines  "]:
        for k in (1, 2, 3, 5):
            assert clean._shingles(text, k) == old_shingles(text, k)


def test_sketches_in_worker_processes_equal_datasketch_in_order(monkeypatch):
    texts = corpus()[0]
    monkeypatch.setattr(clean, "SKETCH_CHUNK", 7)  # 13 chunks: order across chunks and workers matters
    shingles = (old_shingles(t, 3) for t in texts)
    reference = [
        m.hashvalues for m in MinHash.generator(shingles, num_perm=64, seed=1, hashfunc=xxhash.xxh32_intdigest)
    ]
    for workers in (1, 2):
        parts = list(clean._sketch_parts(texts, 3, 64, workers))
        assert [len(p) for p in parts] == [7] * 12 + [len(texts) - 84]
        got = [m.hashvalues for p in parts for m in p]
        assert len(got) == len(reference) and all(np.array_equal(a, b) for a, b in zip(got, reference))


def test_near_dedup_decisions_are_the_old_ones_serial_and_in_workers(monkeypatch):
    texts, planted = corpus()
    spec = CleanSpec(near_dedup_threshold=0.9)
    old = old_near_duplicates(texts, spec)
    assert old == planted
    assert clean._near_duplicates(texts, spec) == old
    monkeypatch.setattr(clean, "SKETCH_CHUNK", 9)
    monkeypatch.setattr(clean, "_workers", lambda texts: 2)
    assert clean._near_duplicates(texts, spec) == old
    # through the stage's entry point too: the kept rows and the card
    rows = [{"text": t, "origin": f"f.txt:{i}"} for i, t in enumerate(texts)]
    out, card = clean.clean(rows, spec)
    assert [r["text"] for r in out] == [t for t, d in zip(texts, planted) if not d]
    # the unchanged copies (every third) go as exact duplicates before near dedup sees them
    assert (card["removed"]["exact_duplicates"], card["removed"]["near_duplicates"]) == (6, 16)
