"""Classification fine-tuning steps/s: the pipeline's Trainer (as the finetune stage runs it) against a bare PyTorch loop.

    .venv/bin/python benchmarks/finetune_throughput.py [--steps 250] [--rounds 2] [--threads N]
    .venv/bin/python benchmarks/finetune_throughput.py --compare pipeline:fp32 pipeline:bf16 --steps 200 --dev

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
"""

import argparse
import csv
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from child import run as run_child  # benchmarks/child.py: one measurement in a fresh process

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = str((ROOT / ".." / "shared" / "data" / "sst2").resolve())
BATCH_SIZE, MAX_LENGTH = 32, 64
LABELS = ["0", "1"]
GOAL = 0.95


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return [{"text": r["sentence"], "label": r["label"]} for r in csv.DictReader(f, delimiter="\t")]


def _splits(data: str) -> dict[str, list[dict]]:
    """SST-2 train less every 50th row (the validation split, 2% as the preset draws it) and the dev file as test."""
    rows = _rows(Path(data) / "train.tsv")
    return {
        "train": [r for i, r in enumerate(rows) if i % 50],
        "validation": rows[::50],
        "test": _rows(Path(data) / "dev.tsv"),
    }


def _spec(args):
    from tasks.finetune.spec import FinetuneSpec
    from tasks.spec import TrainSpec

    # configs/sst2-minilm.yaml's finetune section, at --max-length and for warmup + steps steps.
    train = TrainSpec(
        max_steps=args.warmup + args.steps,
        batch_size=BATCH_SIZE,
        lr=5e-5,
        warmup_steps=200,
        weight_decay=0.01,
        log_every=50,
        checkpoint_every=args.checkpoint_every,
        precision=args.precision,
    )
    return FinetuneSpec(init="package:minilm", method="full", max_length=args.max_length, patience=3, train=train)


def _model(spec):
    from transformers import set_seed

    from tasks import methods
    from tasks.finetune.classify import load_classifier

    set_seed(spec.train.seed)
    model, tok = load_classifier(spec.init, LABELS)
    return methods.prepare(model, spec, "classification"), tok


def _pipeline(args, spec, splits) -> dict:
    import mlflow
    from transformers import DataCollatorWithPadding, TrainerCallback

    from tasks.finetune import classify
    from tasks.finetune.trainer import build
    from tasks.tracking import StageRun
    from tasks.train import fit

    class StepClock(TrainerCallback):
        """Times the steps after the warm-up and the evaluations and saves inside that window."""

        t0 = t1 = None
        tokens = 0
        inside = {"evaluate": 0.0, "save": 0.0}
        saves: list[int] = []

        bare = 0.0

        def on_step_end(self, a, state, control, **kw):
            g = state.global_step
            if bare_step and g <= args.warmup + args.steps:  # --paired: one bare step after each Trainer step
                t = time.perf_counter()
                bare_step()
                if g > args.warmup:
                    self.bare += time.perf_counter() - t
            if g == args.warmup:
                self.t0 = time.perf_counter()
            elif g == args.warmup + args.steps:
                self.t1 = time.perf_counter()

        def timed(self, what: str, fn):
            def wrapper(*a, **kw):
                start = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    if self.t0 is not None and self.t1 is None:
                        self.inside[what] += time.perf_counter() - start
                        if fn is save:
                            self.saves.append(trainer.state.global_step)

            return wrapper

    with tempfile.TemporaryDirectory(prefix="ft-bench-") as home:
        os.environ["MULTISTEP_HOME"] = home
        mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
        mlflow.set_experiment("finetune-throughput")
        bare_step = _bare_stepper(spec, splits)[0] if args.paired else None
        model, tok = _model(spec)
        enc = classify.encode_splits(tok, splits, LABELS, spec.max_length)  # as classify.setup encodes them
        with mlflow.start_run() as run:
            ctx = StageRun("finetune", run.info.run_id, "bench", "", {}, {}, None, False)
            trainer = build(
                spec, model, tok, enc["train"], enc["validation"], DataCollatorWithPadding(tok), ctx, **classify.SELECT
            )
            clock = StepClock()
            trainer.add_callback(clock)
            # _save_checkpoint writes the checkpoint; the callbacks' on_save publishes it to the artifact store.
            save = trainer._save_checkpoint
            trainer._save_checkpoint = clock.timed("save", save)
            trainer.callback_handler.on_save = clock.timed("save", trainer.callback_handler.on_save)
            trainer.evaluate = clock.timed("evaluate", trainer.evaluate)
            step = trainer.training_step

            def counted(model, inputs, *a, **kw):  # padded tokens of each timed step's batch [32, longest]
                if clock.t0 is not None and clock.t1 is None:
                    clock.tokens += inputs["input_ids"].numel()
                return step(model, inputs, *a, **kw)

            trainer.training_step = counted
            fit(trainer, ctx, spec.train.keep_checkpoints)
            result = {"seconds": clock.t1 - clock.t0 - clock.bare, "tokens": clock.tokens}
            if bare_step:
                result["bare_seconds"] = clock.bare
            result.update({f"{k}_seconds": v for k, v in clock.inside.items()})
            result["saves"] = clock.saves
            result["loss"] = next(h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h)
            if args.dev:  # the trainer holds the best validated weights (the final ones when nothing was validated)
                result["dev_accuracy"] = trainer.evaluate(enc["test"], metric_key_prefix="test")["test_accuracy"]
    return result


def _bare_stepper(spec, splits):
    """A bare training loop as a function that runs one step and returns its padded tokens; also the model, tokenizer, losses."""
    import torch

    model, tok = _model(spec)
    model.train()
    train = spec.train
    ids = [
        torch.tensor(x)
        for x in tok([r["text"] for r in splits["train"]], truncation=True, max_length=spec.max_length)["input_ids"]
    ]
    labels = torch.tensor([LABELS.index(r["label"]) for r in splits["train"]])

    def batch(index: torch.Tensor) -> dict:
        """Rows padded to the longest of the batch: input_ids, attention_mask [B, longest], labels [B]."""
        rows = [ids[i] for i in index]
        x = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_token_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
        return {"input_ids": x, "attention_mask": mask, "labels": labels[index]}

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [  # the Trainer's grouping: no decay on biases and LayerNorm weights (the 1-D parameters here)
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)

    def cosine(step: int) -> float:  # transformers' get_cosine_schedule_with_warmup
        if step < train.warmup_steps:
            return step / max(1, train.warmup_steps)
        progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    bf16 = spec.train.precision == "bf16"
    gen = torch.Generator().manual_seed(train.seed)
    state = {"order": torch.randperm(len(ids), generator=gen), "pos": 0}
    losses = []

    def step() -> int:
        if state["pos"] + BATCH_SIZE > len(state["order"]):
            state["order"], state["pos"] = torch.randperm(len(ids), generator=gen), 0
        inputs = batch(state["order"][state["pos"] : state["pos"] + BATCH_SIZE])
        state["pos"] += BATCH_SIZE
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        return inputs["input_ids"].numel()

    return step, model, tok, losses


def _bare(args, spec, splits) -> dict:
    import torch

    step, model, tok, losses = _bare_stepper(spec, splits)
    t0, tokens = None, 0
    for i in range(1, spec.train.max_steps + 1):
        n = step()
        if i == args.warmup:
            t0 = time.perf_counter()
        elif t0 is not None:
            tokens += n
    result = {
        "seconds": time.perf_counter() - t0,
        "tokens": tokens,
        "loss": float(torch.stack(losses[-spec.train.log_every :]).mean()),
    }
    if args.dev:
        result["dev_accuracy"] = _accuracy(model, tok, splits["test"], spec.max_length, spec.train.precision == "bf16")
    return result


def _paired_precision(args, spec, splits) -> dict:
    """bf16 and fp32 bare loops in one process, one step of each in turn (same seed, so the same batches): load on the
    machine hits both alike. Returns the seconds of each over the timed steps."""
    bf16, fp32 = (
        _bare_stepper(spec.model_copy(update={"train": spec.train.replace(precision=p)}), splits)[0]
        for p in ("bf16", "fp32")
    )
    seconds = {"bf16": 0.0, "fp32": 0.0}
    for i in range(1, spec.train.max_steps + 1):
        for name, step in (("bf16", bf16), ("fp32", fp32)):
            t = time.perf_counter()
            step()
            if i > args.warmup:
                seconds[name] += time.perf_counter() - t
    return {"seconds": seconds["fp32"], "bf16_seconds": seconds["bf16"], "tokens": 0, "loss": float("nan")}


def _accuracy(model, tok, rows: list[dict], max_length: int, bf16: bool) -> float:
    import torch

    model.eval()
    right = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(rows), BATCH_SIZE):
            chunk = rows[i : i + BATCH_SIZE]
            enc = tok(
                [r["text"] for r in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            predicted = model(**enc).logits.argmax(-1)
            right += sum(int(p) == LABELS.index(r["label"]) for p, r in zip(predicted, chunk))
    return right / len(rows)


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = _spec(args)
    splits = _splits(args.data)
    run = {"pipeline": _pipeline, "bare": _bare, "precision": _paired_precision}[args.child]
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
