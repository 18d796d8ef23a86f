"""Clean, deduplicate and split text rows; each step reports what it removed for the data card."""

import functools
import hashlib
import itertools
import multiprocessing
import os
import re
import unicodedata
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import xxhash
from datasketch import LeanMinHash, MinHash, MinHashLSH
from tqdm.auto import tqdm

from tasks.data.spec import CleanSpec, SplitSpec
from tasks.errors import UserError

# Fixed so that the same rows always give the same sketches, on any machine.
MINHASH_SEED = 1
# Above this many rows the MinHash pass shows a progress bar.
PROGRESS_ROWS = 10_000
# Rows sketched per task; from this much text on, the sketches are made in one process per CPU. Sketching costs
# ~0.2 s of CPU a MB (the SHA-1 of each shingle, called per shingle by datasketch, is most of it); a spawned worker
# costs 1-3 s to start (it imports datasketch, and the main module again: prefect.engine under a Prefect worker).
SKETCH_CHUNK = 1000
PARALLEL_CHARS = 20_000_000

_SPACES = re.compile(r"[ \t]+")
_TRAILING = re.compile(r" +\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


@functools.cache
def _control_table() -> dict[int, None]:
    """Cc/Cf code points except newline and tab, built once (~0.1 s) so str.translate is one C pass per text."""
    return {i: None for i in range(0x110000) if chr(i) not in "\n\t" and unicodedata.category(chr(i)) in ("Cc", "Cf")}


def normalize(text: str) -> str:
    """NFC, no control characters, single spaces, at most one blank line in a row, stripped."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    # Each pass runs only where it would change something: the checks are C-level scans, far cheaper than the passes
    # (8x on the clean step of a 10 MB WikiText mix), and typical rows need none (`printable`: no Cc or Cf character).
    if not (text.isprintable() or text.replace("\n", "").replace("\t", "").isprintable()):
        text = text.translate(_control_table())
    if "\t" in text or "  " in text:
        text = _SPACES.sub(" ", text)
    if " \n" in text:
        text = _TRAILING.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def _shingles(text: str, k: int) -> list[bytes]:
    """Lower-cased k-word shingles; a row shorter than k words is one shingle."""
    words = text.lower().split()
    if len(words) < k:
        return [" ".join(words).encode()]
    # the k staggered word lists zipped make every window in C, not a slice per shingle
    return list(map(str.encode, map(" ".join, zip(*(words[i:] for i in range(k))))))


def _sketch_chunk(texts: list[str], k: int, num_perm: int) -> list[LeanMinHash]:
    """datasketch's MinHash of each text's shingles, lean (no permutations) so that a worker sends back little."""
    # xxHash32, not datasketch's default SHA-1: hashing each shingle was ~75% of the pass and this is ~4x faster with the
    # same 32-bit spread (MinHash needs a well-mixed hash, not a cryptographic one); issue 15, goal 6.
    sketches = MinHash.generator(
        (_shingles(t, k) for t in texts), num_perm=num_perm, seed=MINHASH_SEED, hashfunc=xxhash.xxh32_intdigest
    )
    return [LeanMinHash(m) for m in sketches]


def _sketch_parts(texts: list[str], k: int, num_perm: int, workers: int):
    """The texts' sketches in order, a chunk at a time; made by `workers` processes when there are more than one."""
    chunks = [texts[i : i + SKETCH_CHUNK] for i in range(0, len(texts), SKETCH_CHUNK)]
    if workers < 2 or len(chunks) < 2:
        yield from (_sketch_chunk(c, k, num_perm) for c in chunks)
        return
    # spawn, not fork: the stage runs inside Prefect and MLflow, whose threads a forked child would inherit mid-lock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
        yield from pool.map(_sketch_chunk, chunks, itertools.repeat(k), itertools.repeat(num_perm))


def _workers(texts: list[str]) -> int:
    """Processes for sketching: one per usable CPU, once there is enough text to repay starting them."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus if sum(map(len, texts)) >= PARALLEL_CHARS else 1


def _lsh(threshold: float, num_perm: int) -> MinHashLSH:
    try:
        return MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError:
        # datasketch finds no banding with two or more bands for very high thresholds
        # (e.g. 1.0, or 0.9 with 16 permutations); two bands still find every pair that
        # similar, and the Jaccard check in `_near_duplicates` enforces the threshold.
        return MinHashLSH(num_perm=num_perm, params=(2, num_perm // 2))


def _near_duplicates(texts: list[str], spec: CleanSpec) -> list[bool]:
    """True for each text whose estimated Jaccard similarity to an earlier kept text reaches the threshold."""
    threshold = spec.near_dedup_threshold
    lsh = _lsh(threshold, spec.minhash_permutations)
    kept: dict[int, np.ndarray] = {}  # row index -> hash values, to confirm LSH candidates
    duplicate: list[bool] = []
    parts = _sketch_parts(texts, spec.shingle_words, spec.minhash_permutations, _workers(texts))
    with tqdm(total=len(texts), desc="near dedup", disable=len(texts) <= PROGRESS_ROWS) as bar:
        for part in parts:  # in row order: each chunk is checked while the workers sketch the next ones
            for m in part:
                i = len(duplicate)
                # Query before insert: the first row of a group stays, later ones go.
                is_dup = any(np.mean(kept[j] == m.hashvalues) >= threshold for j in lsh.query(m))
                duplicate.append(is_dup)
                if not is_dup:
                    lsh.insert(i, m, check_duplication=False)
                    kept[i] = m.hashvalues
            bar.update(len(part))
    return duplicate


def clean(rows: list[dict], spec: CleanSpec) -> tuple[list[dict], dict]:
    """Normalise, apply length bounds, drop exact then near duplicates; return kept rows and a data-card section."""
    removed = {"too_short": 0, "too_long": 0, "exact_duplicates": 0, "near_duplicates": 0}
    out = []
    seen = set()
    for row in rows:
        text = normalize(row["text"]) if spec.normalize else row["text"]
        if len(text) < spec.min_chars:
            removed["too_short"] += 1
        elif spec.max_chars is not None and len(text) > spec.max_chars:
            removed["too_long"] += 1
        elif spec.exact_dedup and text in seen:
            removed["exact_duplicates"] += 1
        else:
            seen.add(text)
            out.append({**row, "text": text})
    if spec.near_dedup_threshold is not None and out:
        duplicate = _near_duplicates([r["text"] for r in out], spec)
        removed["near_duplicates"] = sum(duplicate)
        out = [r for r, d in zip(out, duplicate) if not d]
    return out, {"rows_in": len(rows), "removed": removed, "rows_out": len(out)}


def _unit(salt: str, text: str) -> float:
    """A number in [0, 1) fixed by the salt and the text alone."""
    digest = hashlib.sha256((salt + text).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(rows: list[dict], spec: SplitSpec) -> dict[str, list[dict]]:
    """Assign each row to train, validation or test by a salted hash of its text; order kept within a split."""
    parts: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        u = _unit(spec.salt, row["text"])
        name = "validation" if u < spec.validation else "test" if u < spec.validation + spec.test else "train"
        parts[name].append(row)
    for name in ("validation", "test"):
        fraction = getattr(spec, name)
        if fraction > 0 and not parts[name]:
            raise UserError(
                f"The {name} split came out empty ({fraction} of {len(rows)} rows): add more data, "
                f"raise split.{name}, or set split.{name}: 0."
            )
    if not parts["train"]:
        raise UserError(
            f"The train split came out empty ({len(rows)} rows): add more data or lower split.validation and split.test."
        )
    return parts
