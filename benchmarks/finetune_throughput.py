"""Classification fine-tuning steps/s: the pipeline's Trainer (as the finetune stage runs it) against a bare PyTorch loop.

    .venv/bin/python benchmarks/finetune_throughput.py [--steps 250] [--rounds 2] [--threads N]
    .venv/bin/python benchmarks/finetune_throughput.py --compare pipeline:bf16 pipeline:fp32 --steps 150 --dev
    .venv/bin/python benchmarks/finetune_throughput.py --paired pipeline|precision   # both in one process, step by step

The model is `package:minilm` (all-MiniLM-L6-v2 with a new 2-label head) on SST-2 rows (../shared/data/sst2/train.tsv;
every 50th row held out as validation), batch 32, max length 64, dynamic padding (each batch padded to its longest row).
"pipeline" builds the Trainer exactly as tasks/finetune/classify.py does (`trainer.build`: tasks.train.arguments,
DataCollatorWithPadding, validation scored and a checkpoint saved every --checkpoint-every steps, the preset's 250) and
trains it through `tasks.train.fit` (MLflow metrics into a throwaway SQLite store, checkpoints published to its local
artifact store, progress lines), with the preset's optimisation settings. "bare" is a plain loop over the same model,
seed, rows, batch size, padding, fused AdamW, warmup+cosine schedule and clipping, with no evaluation or checkpoint.
Each measurement is a fresh subprocess (peak RSS per variant), runs --warmup untimed steps, then times --steps steps;
variants alternate A B A B so machine noise hits both alike, and the final line gives the median per-round ratio A/B of
steps/s (goal for pipeline/bare: >= 0.95). With --dev each child also scores SST-2 dev (872 rows) after training.
On a busy machine --paired alternates the two variants step by step in one process instead (benchmarks/README.md).
"""

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path

import finetune_variants as variants  # benchmarks/finetune_variants.py: what each child runs
from child import run as run_child  # benchmarks/child.py: one measurement in a fresh process

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = str((ROOT / ".." / "shared" / "data" / "sst2").resolve())
BATCH_SIZE, MAX_LENGTH = variants.BATCH_SIZE, variants.MAX_LENGTH
GOAL = 0.95


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = variants.finetune_spec(args)
    splits = variants.sst2_splits(args.data)
    run = {"pipeline": variants.pipeline, "bare": variants.bare, "precision": variants.paired_precision}[args.child]
    result = run(args, spec, splits)
    result.update(
        variant=f"{args.child}:{args.precision}",
        steps_per_second=args.steps / result["seconds"],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        threads=torch.get_num_threads(),
    )
    print("RESULT " + json.dumps(result), flush=True)


def measure(variant: str, args) -> dict:
    kind, precision = variant.split(":")
    cmd = [sys.executable, __file__, "--child", kind, "--precision", precision, "--data", args.data]
    for flag in ("steps", "warmup", "checkpoint_every", "max_length", "threads"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return run_child(
        variant, cmd + (["--dev"] if args.dev else []) + (["--paired", args.paired] if args.paired else [])
    )


def _projected(pipe: dict, bare: dict, args) -> float | None:
    """Ratio pipeline/bare had the window held one validation and one checkpoint per `--project` steps: the pipeline's
    steps without them, plus their mean cost; None unless the window holds at least one of each."""
    n = len(pipe.get("saves", []))
    if not n or not pipe.get("evaluate_seconds"):
        return None
    step = (pipe["seconds"] - pipe["evaluate_seconds"] - pipe["save_seconds"]) / args.steps
    extra = (pipe["evaluate_seconds"] + pipe["save_seconds"]) / n
    return bare["seconds"] / args.steps * args.project / (step * args.project + extra)


def paired(args) -> None:
    """--paired: per round one child that alternates the two variants step by step; ratio = B's seconds / A's."""
    a, b = ("pipeline:fp32", "bare:fp32") if args.paired == "pipeline" else ("bare:bf16", "bare:fp32")
    print(
        f"finetune_throughput --paired {args.paired}: {a} and {b} step by step in one process, batch {BATCH_SIZE}, "
        f"max length {args.max_length}, {args.steps} timed steps each after {args.warmup} warm-up, "
        f"{args.rounds} rounds, threads {args.threads or 'torch default'}",
        flush=True,
    )
    ratios, projected = [], []
    for r in range(1, args.rounds + 1):
        load = os.getloadavg()[0]
        res = measure(a if args.paired == "pipeline" else "precision:fp32", args)
        other = res["bare_seconds"] if args.paired == "pipeline" else res["seconds"]
        mine = res["seconds"] if args.paired == "pipeline" else res["bf16_seconds"]
        ratios.append(other / mine)
        extra = ""
        if args.paired == "pipeline":
            extra = (
                f" (evaluate {res['evaluate_seconds']:.1f} s, save {res['save_seconds']:.1f} s at steps {res['saves']})"
            )
            train_only = (mine - res["evaluate_seconds"] - res["save_seconds"]) / args.steps
            extra += f", steps alone {1000 * train_only:.0f} ms"
            if (p := _projected(res, {"seconds": other}, args)) is not None:
                projected.append(p)
                extra += f"; projected to one validation and checkpoint per {args.project} steps {p:.3f}"
        print(
            f"  round {r}: {a} {1000 * mine / args.steps:.0f} ms/step{extra}, {b} {1000 * other / args.steps:.0f} ms/step, "
            f"ratio {ratios[-1]:.3f}  load before {load:.1f}",
            flush=True,
        )
    tail = f", projected to every {args.project} steps {statistics.median(projected):.3f}" if projected else ""
    print(
        f"finetune_throughput: paired ratio {a}/{b} {statistics.median(ratios):.3f} "
        f"(rounds {', '.join(f'{x:.3f}' for x in ratios)}){tail}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=250, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before the clock starts")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per variant, alternating")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each child (default: torch's default)")
    parser.add_argument(
        "--checkpoint-every", type=int, default=250, help="pipeline: validate and save every N steps (the preset's 250)"
    )
    parser.add_argument(
        "--project",
        type=int,
        default=250,
        help="also give the ratio projected to one validation and checkpoint per this many steps (the preset's 250)",
    )
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help="longest tokenized row")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the folder with SST-2's train.tsv and dev.tsv")
    parser.add_argument("--dev", action="store_true", help="also score SST-2 dev after training, in each child")
    parser.add_argument(
        "--compare",
        nargs=2,
        default=["pipeline:fp32", "bare:fp32"],
        metavar=("A", "B"),
        help="the two variants, each pipeline|bare:fp32|bf16; the ratio is A/B",
    )
    parser.add_argument(
        "--paired",
        choices=["pipeline", "precision"],
        help="instead: one process per round that alternates step by step, pipeline (Trainer) with bare steps or "
        "bf16 with fp32 bare steps, so that load from other processes hits both alike",
    )
    parser.add_argument("--child", choices=["pipeline", "bare", "precision"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not (Path(args.data) / "train.tsv").is_file():
        sys.exit(f"{args.data}/train.tsv does not exist: pass --data with the folder of SST-2's train.tsv and dev.tsv")
    if args.paired:
        return paired(args)
    a, b = args.compare
    print(
        f"finetune_throughput: package:minilm on SST-2, batch {BATCH_SIZE}, max length {args.max_length}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, pipeline validates and saves every "
        f"{args.checkpoint_every} steps, {args.rounds} rounds, threads {args.threads or 'torch default'}",
        flush=True,
    )
    results, ratios, projected = {a: [], b: []}, [], []
    for r in range(1, args.rounds + 1):
        for variant in (a, b):
            load = os.getloadavg()[0]
            res = measure(variant, args)
            results[variant].append(res)
            parts = ""
            if "save_seconds" in res:
                parts = f"  (evaluate {res['evaluate_seconds']:.1f} s, save {res['save_seconds']:.1f} s at steps {res['saves']})"
            dev = f"  dev accuracy {res['dev_accuracy']:.4f}" if "dev_accuracy" in res else ""
            print(
                f"  round {r} {variant:<14} {res['steps_per_second']:.3f} steps/s  {1000 * res['seconds'] / args.steps:6.1f} ms/step  "
                f"{res['tokens'] / args.steps:.0f} padded tokens/step{parts}  "
                f"last loss {res['loss']:.3f}{dev}  peak RSS {res['peak_rss_mb']:,.0f} MB  threads {res['threads']}  load before {load:.1f}",
                flush=True,
            )
        ratio = results[a][-1]["steps_per_second"] / results[b][-1]["steps_per_second"]
        ratios.append(ratio)
        print(f"  round {r} ratio {a}/{b} {ratio:.3f}", flush=True)
        if (pipe := _projected(results[a][-1], results[b][-1], args)) is not None:
            projected.append(pipe)
            print(
                f"  round {r} projected to validation and a checkpoint every {args.project} steps: {pipe:.3f}",
                flush=True,
            )
    med = {v: statistics.median(x["steps_per_second"] for x in results[v]) for v in results}
    rss = {v: max(x["peak_rss_mb"] for x in results[v]) for v in results}
    ratio = statistics.median(ratios)
    verdict = (
        f" ({'meets' if ratio >= GOAL else 'below'} the {GOAL} goal)"
        if (a, b) == ("pipeline:fp32", "bare:fp32")
        else ""
    )
    print(f"  ratios {', '.join(f'{x:.3f}' for x in ratios)}; median {ratio:.3f}{verdict}")
    if max(ratios) - min(ratios) > 0.10:
        print(
            "  warning: the rounds disagree by more than 0.10: rerun on an idle machine, with more --rounds or --threads 1"
        )
    if projected:
        print(
            f"  projected to the cadence of {args.project} steps: {', '.join(f'{x:.3f}' for x in projected)}; "
            f"median {statistics.median(projected):.3f}"
        )
    dev = ""
    if args.dev:
        acc = {v: statistics.median(x["dev_accuracy"] for x in results[v]) for v in results}
        dev = f", SST-2 dev accuracy {a} {acc[a]:.4f}, {b} {acc[b]:.4f} (difference {100 * (acc[a] - acc[b]):+.2f} points)"
    print(
        f"finetune_throughput: ratio {a}/{b} {ratio:.3f} ({a} {med[a]:.3f} steps/s, {b} {med[b]:.3f} steps/s){dev}, "
        f"peak RSS {a} {rss[a]:,.0f} MB, {b} {rss[b]:,.0f} MB"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
