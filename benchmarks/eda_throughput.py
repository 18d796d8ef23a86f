"""EDA rows/s on SST-2 sentences against tokenizing the augmented rows with MiniLM's fast tokenizer, in the same run.

    .venv/bin/python benchmarks/eda_throughput.py [--rows 5000] [--copies 4] [--rounds 3]

EDA is tasks.augment.eda.augment with WordNet synonyms and EdaSpec's defaults (every rate 0.1), making --copies
rows per sentence; the baseline is package:minilm's fast tokenizer encoding the same augmented set (the sentences
plus their copies), the next thing the finetune stage does with those rows. WordNet's load and a first EDA pass
(cold caches) are timed apart; then EDA and the tokenizer alternate for --rounds, each EDA round with a fresh
Synonyms (an empty per-word cache, nltk's own synset cache warm). The ratio EDA/tokenizer of rows/s is taken per
round and its median reported; the first pass, what a stage run pays, gets its own ratio against the tokenizer's median.
"""

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = str((ROOT / ".." / "shared" / "data" / "sst2" / "train.tsv").resolve())


def read_rows(path: str, n: int) -> list[dict]:
    """The first n sentences of an SST-2 TSV (header `sentence<TAB>label`, no quoting), as labeled rows."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, rec in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if i == n:
                break
            rows.append({"text": rec["sentence"].strip(), "label": rec["label"], "origin": f"sst2:train:{i}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000, help="sentences read from the top of the file")
    parser.add_argument("--copies", type=int, default=4, help="EDA copies per sentence (EdaSpec.copies)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per variant, alternating")
    parser.add_argument("--data", default=DEFAULT_DATA, help="an SST-2 train.tsv (read only)")
    parser.add_argument(
        "--parallel-tokenizer",
        action="store_true",
        help="let the tokenizer use every core (default: one thread, like EDA)",
    )
    args = parser.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"{args.data} does not exist: pass --data with the path of SST-2's train.tsv")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if args.parallel_tokenizer else "false"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TQDM_DISABLE"] = "1"  # EDA's progress bar (shown past 1,000 rows) would interleave with the report

    from tasks import model as models
    from tasks import synonyms
    from tasks.augment.eda import augment
    from tasks.augment.spec import EdaSpec

    rows = read_rows(args.data, args.rows)
    spec = EdaSpec(copies=args.copies)
    t0 = time.perf_counter()
    wordnet = synonyms.wordnet()
    load_s = time.perf_counter() - t0
    if wordnet is None:
        sys.exit(f"WordNet is not installed: {synonyms.INSTALL_HINT}")
    tok = models.load_tokenizer(models.locate("package:minilm").tokenizer)
    words = sum(len(r["text"].split()) for r in rows)
    print(
        f"eda_throughput: {len(rows):,} SST-2 sentences ({words / len(rows):.1f} words each), {args.copies} copies each, "
        f"{args.rounds} rounds, {wordnet.where}, tokenizer {type(tok).__name__} "
        f"({'parallel' if args.parallel_tokenizer else 'one thread'})",
        flush=True,
    )

    t0 = time.perf_counter()
    added = augment(rows, spec, wordnet)
    first_s = time.perf_counter() - t0
    texts = [r["text"] for r in rows] + [r["text"] for r in added]  # the augmented training set
    print(
        f"  WordNet load {load_s:.2f} s; first EDA pass (cold caches) {first_s:.2f} s, {len(added) / first_s:,.0f} rows/s; "
        f"{len({w.lower() for r in rows for w in r['text'].split()}):,} distinct words",
        flush=True,
    )

    ratios, eda_rate, tok_rate = [], [], []
    for r in range(1, args.rounds + 1):
        source = synonyms.wordnet()  # a fresh per-word cache over the loaded reader
        t0 = time.perf_counter()
        out = augment(rows, spec, source)
        eda_s = time.perf_counter() - t0
        assert [x["text"] for x in out] == texts[len(rows) :], "EDA gave other rows for the same seed"
        t0 = time.perf_counter()
        tok(texts)
        tok_s = time.perf_counter() - t0
        eda_rate.append(len(out) / eda_s)
        tok_rate.append(len(texts) / tok_s)
        ratios.append(eda_rate[-1] / tok_rate[-1])
        print(
            f"  round {r}: EDA {eda_rate[-1]:>9,.0f} rows/s ({eda_s:.2f} s)  tokenizer {tok_rate[-1]:>9,.0f} rows/s ({tok_s:.2f} s)  "
            f"ratio {ratios[-1]:.3f}  load before {os.getloadavg()[0]:.1f}",
            flush=True,
        )

    if max(ratios) - min(ratios) > 0.25 * statistics.median(ratios):
        print(
            "  warning: the rounds disagree by more than 25%, so something else was using the CPUs; rerun with more --rounds"
        )
    ratio = statistics.median(ratios)
    first = len(added) / first_s
    print(
        f"eda_throughput: ratio {ratio:.3f} (EDA {statistics.median(eda_rate):,.0f} rows/s, tokenizer {statistics.median(tok_rate):,.0f} rows/s); "
        f"first pass {first:,.0f} rows/s (ratio {first / statistics.median(tok_rate):.3f}), WordNet load {load_s:.2f} s"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
