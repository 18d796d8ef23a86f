"""Data preparation throughput: the prepare stage's steps against raw `tokenizers` encode_batch on the same corpus.

    .venv/bin/python benchmarks/prep_throughput.py [--mb 100] [--seed 0] [--vocab 8192] [--serial]

The corpus is built in a temp dir from ../shared/data (WikiText-2's three files and Tiny Shakespeare, read only):
documents of 8-24 sentences drawn with a seed from the pool of their sentences, so nearly every document is unique,
plus known fractions of exact copies of an earlier document, whitespace variants (exact copies once normalised) and
near duplicates (one word replaced), written as blank-line separated paragraphs in files of ~10 MB. The spec is
PrepareSpec's defaults (normalise, exact dedup, MinHash near dedup at 0.9 over 3-word shingles, 128 permutations,
5 % / 5 % split, block 128) with WikiText's preset tokenizer (configs/trec-transfer.yaml: byte-level BPE, 8,192).

The pipeline runs the stage's own functions in the stage's order, each timed: read (sources.read_sources), clean
(normalise, length bounds, exact dedup), dedup (MinHash near dedup), split, contamination (the data card's
train/eval n-gram report), train tokenizer, tokenize (tasks.tokenizer.encode), pack, write (the parquet files).
The baseline, in the same process after the pipeline, reads the same files, cuts them at blank lines and runs the
BPE the pipeline trained, as a bare `tokenizers.Tokenizer`, through encode_batch (1,000 texts a call, keeping the
ids) over all of the text; encode_batch_fast (no offsets, what the stage calls) is measured too, the two alternating,
twice each. Every step and baseline reports wall and CPU seconds (this process's threads and its finished child
processes). Goal (issue 15): the steps read, clean, dedup, tokenize and pack together run at >= 0.8x the
encode_batch baseline's speed; the other steps are reported beside it. `--serial` runs everything on one thread.
"""

import argparse
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = (ROOT / ".." / "shared" / "data").resolve()
SOURCES = ["wikitext-2/train.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt", "tinyshakespeare/input.txt"]
GOAL = 0.8
GOAL_STEPS = ("read", "clean", "dedup", "tokenize", "pack")
FILE_MB = 10
# Of the documents written: exact copies, copies with extra spaces (equal once normalised), one word replaced.
EXACT, SPACED, NEAR = 0.05, 0.02, 0.05
BATCH = 1000


def sentences() -> list[str]:
    """WikiText sentences (cut at " . ", headings dropped) and Shakespeare lines, each of at least 5 words."""
    pool = []
    for name in SOURCES:
        for line in (DATA / name).read_text(encoding="utf-8").split("\n"):
            line = line.strip()
            if not line or line.startswith("="):
                continue
            pool += [s.strip() + " ." for s in re.split(r" \. ", line.rstrip(" ."))]
    return [s for s in pool if len(s.split()) >= 6]


def build_corpus(folder: Path, mb: float, seed: int) -> dict[str, int]:
    """~mb MB of documents in files of FILE_MB MB; returns how many documents of each kind were written."""
    rng = random.Random(seed)
    pool = sentences()
    docs: list[str] = []
    counts = {"unique": 0, "exact": 0, "spaced": 0, "near": 0}
    size, target = 0, int(mb * 1e6)
    while size < target:
        u = rng.random()
        if docs and u < EXACT:
            kind, doc = "exact", rng.choice(docs)
        elif docs and u < EXACT + SPACED:
            words = rng.choice(docs).split(" ")
            kind, doc = "spaced", " ".join(w + "  " if i % 7 == 3 else w for i, w in enumerate(words))
        elif docs and u < EXACT + SPACED + NEAR:
            words = rng.choice(docs).split(" ")
            words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
            kind, doc = "near", " ".join(words)
        else:
            kind, doc = "unique", " ".join(rng.choices(pool, k=rng.randint(8, 24)))
        counts[kind] += 1
        docs.append(doc)
        size += len(doc.encode()) + 2
    folder.mkdir(parents=True)
    per_file = max(1, len(docs) * FILE_MB * 10**6 // max(size, 1))
    for n, i in enumerate(range(0, len(docs), per_file)):
        (folder / f"part-{n:03d}.txt").write_text("\n\n".join(docs[i : i + per_file]) + "\n", encoding="utf-8")
    counts["bytes"] = size
    return counts


def cpu() -> float:
    """CPU seconds of this process (all its threads: the tokenizer's too) and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU seconds per named step, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.rows: dict[str, int] = {}

    def start(self, name: str, rows: int) -> None:
        self.rows[name] = rows
        self.seconds[name] = self.seconds.get(name, 0.0) - time.perf_counter()
        self.cpu[name] = self.cpu.get(name, 0.0) - cpu()

    def stop(self, name: str) -> None:
        self.seconds[name] += time.perf_counter()
        self.cpu[name] += cpu()

    def step(self, name: str, rows: int, fn, *args):
        self.start(name, rows)
        try:
            return fn(*args)
        finally:
            self.stop(name)


def pipeline(spec, out: Path) -> tuple[Clock, object, int, dict]:
    """The prepare stage's steps on the corpus, timed one by one; returns the clock, the tokenizer, tokens, and counts."""
    from tasks import tokenizer as tokenizers
    from tasks.data import clean, prepare, sources
    from tasks.data.prepared import SPLITS

    clock = Clock()
    near = clean._near_duplicates

    def timed_near(texts, s):  # dedup gets its own line: clean.clean calls it after the exact pass
        clock.stop("clean")
        try:
            return clock.step("dedup", len(texts), near, texts, s)
        finally:
            clock.start("clean", clock.rows["clean"])

    rows = clock.step("read", 0, sources.read_sources, spec)
    clock.rows["read"] = len(rows)
    for name in ("clean", "dedup"):  # report order: the stage's
        clock.seconds[name] = clock.cpu[name] = 0.0
    clean._near_duplicates = timed_near
    try:
        kept, filters = clock.step("clean", len(rows), clean.clean, rows, spec.clean)
    finally:
        clean._near_duplicates = near
    splits = clock.step("split", len(kept), clean.split, kept, spec.split)
    clock.step("contamination", len(kept), prepare._contamination, spec, splits)
    texts = {name: [r["text"] for r in splits[name]] for name in SPLITS}
    tok = clock.step("train tokenizer", len(texts["train"]), tokenizers.train_tokenizer, texts["train"], spec.tokenizer)
    sep, (prefix, suffix) = tokenizers.separator(tok), tokenizers.frame(tok)
    ids = {name: clock.step("tokenize", len(kept), tokenizers.encode, tok, texts[name]) for name in SPLITS}
    blocks = {}
    for name in SPLITS:  # the stage encodes and packs split by split
        blocks[name] = clock.step("pack", len(kept), tokenizers.pack, ids[name], sep, spec.block_size, prefix, suffix)
    for name in SPLITS:
        clock.step("write", len(kept), prepare._write_split, out, name, splits[name], blocks[name])
    tokens = sum(len(t) + 1 for name in SPLITS for t in ids[name])
    counts = {"filters": filters, "blocks": sum(len(b) for b in blocks.values())}
    return clock, tok, tokens, counts


def baseline(folder: Path, tok, fast: bool = False) -> tuple[float, float, int, int]:
    """Read the files, cut at blank lines, encode_batch all of it; returns wall and CPU seconds, texts and tokens."""
    from tasks.tokenizer import _plain_backend

    backend = _plain_backend(tok)  # the trained BPE as a bare tokenizers.Tokenizer
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    t0, c0 = time.perf_counter(), cpu()
    texts = [p for f in sorted(folder.glob("*.txt")) for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    ids = []
    for i in range(0, len(texts), BATCH):
        ids.extend(e.ids for e in encode(texts[i : i + BATCH], add_special_tokens=False))
    return time.perf_counter() - t0, cpu() - c0, len(texts), sum(map(len, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100, help="corpus size in MB")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary (WikiText's preset: 8,192)")
    parser.add_argument(
        "--serial",
        action="store_true",
        help="one thread and one process throughout (no tokenizer threads, no sketching workers): CPU time then "
        "measures the work alone, which a busy machine does not skew",
    )
    args = parser.parse_args()
    missing = [s for s in SOURCES if not (DATA / s).is_file()]
    if missing:
        sys.exit(f"{DATA / missing[0]} does not exist: the corpus is built from WikiText-2 and Tiny Shakespeare there")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tasks.data import clean
    from tasks.data.spec import PrepareSpec, TokenizerSpec

    clean.PROGRESS_ROWS = 10**12  # the stage's progress bars would interleave with the report
    if args.serial:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by the Rust library at its first parallel call
        clean.PARALLEL_CHARS = float("inf")  # no-op on code without sketching workers

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpus"
        t0 = time.perf_counter()
        made = build_corpus(folder, args.mb, args.seed)
        print(
            f"prep_throughput: {made['bytes'] / 1e6:,.1f} MB in {len(list(folder.iterdir()))} files, "
            f"{sum(made[k] for k in ('unique', 'exact', 'spaced', 'near')):,} documents ({made['unique']:,} unique, "
            f"{made['exact']:,} exact copies, {made['spaced']:,} whitespace variants, {made['near']:,} near duplicates), "
            f"built in {time.perf_counter() - t0:.1f} s; CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.1f}"
            f"{', serial' if args.serial else ''}",
            flush=True,
        )
        spec = PrepareSpec(
            sources=[str(folder)], text_unit="paragraph", tokenizer=TokenizerSpec(kind="bpe", vocab_size=args.vocab)
        )
        (Path(tmp) / "out").mkdir()
        clock, tok, tokens, counts = pipeline(spec, Path(tmp) / "out")
        f = counts["filters"]
        print(
            f"  removed: {f['removed']['exact_duplicates']:,} exact duplicates (planted {made['exact'] + made['spaced']:,}), "
            f"{f['removed']['near_duplicates']:,} near duplicates (planted {made['near']:,}); "
            f"{f['rows_out']:,} rows, {tokens:,} tokens, {counts['blocks']:,} blocks",
            flush=True,
        )
        print(f"  {'step':<18} {'wall s':>8} {'CPU s':>8} {'rows/s':>11} {'tokens/s':>12}   (* = the goal's steps)")
        for name, s in clock.seconds.items():
            mark = "*" if name in GOAL_STEPS else " "
            print(
                f"  {mark} {name:<16} {s:8.2f} {clock.cpu[name]:8.2f} {clock.rows[name] / s:>11,.0f} {tokens / s:>12,.0f}",
                flush=True,
            )
        # Twice each, alternating, after the pipeline (which trains the tokenizer): the spread shows the noise.
        runs = {"encode_batch": [], "encode_batch_fast": []}
        for _ in range(2):
            for name in runs:
                wall, used, base_rows, base_tokens = baseline(folder, tok, fast=name.endswith("fast"))
                runs[name].append((wall, used))
                print(
                    f"  baseline {name:<18} {wall:8.2f} {used:8.2f} {base_rows / wall:>11,.0f} "
                    f"{base_tokens / wall:>12,.0f}",
                    flush=True,
                )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    base = {name: [sum(x[i] for x in r) / len(r) for i in (0, 1)] for name, r in runs.items()}  # mean wall, CPU
    goal = [sum(d[k] for k in GOAL_STEPS) for d in (clock.seconds, clock.cpu)]
    every = [sum(d.values()) for d in (clock.seconds, clock.cpu)]
    print(
        f"  the * steps {goal[0]:.2f} s wall, {goal[1]:.2f} s CPU; every step {every[0]:.2f} s wall, {every[1]:.2f} s "
        f"CPU; peak RSS {peak:,.0f} MB"
    )
    for name, (wall, used) in base.items():
        print(
            f"  against {name} (mean of 2): the * steps {wall / goal[0]:.3f} by wall time, {used / goal[1]:.3f} by "
            f"CPU time; every step {wall / every[0]:.3f} by wall time"
        )
    ratio = base["encode_batch"][0] / goal[0]
    verdict = "meets" if ratio >= GOAL else "below"
    print(
        f"prep_throughput: ratio {ratio:.3f} ({verdict} the {GOAL} goal; read+clean+dedup+tokenize+pack "
        f"{tokens / goal[0]:,.0f} tokens/s, baseline encode_batch {base_tokens / base['encode_batch'][0]:,.0f} tokens/s; "
        f"against encode_batch_fast {base['encode_batch_fast'][0] / goal[0]:.3f})"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
