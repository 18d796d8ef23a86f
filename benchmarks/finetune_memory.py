"""Fine-tuning cost: LoRA against full fine-tuning of the same model on the same SFT batches — step time and peak RSS.

    .venv/bin/python benchmarks/finetune_memory.py [--model package:smollm2-135m] [--steps 8] [--rounds 2]
    .venv/bin/python benchmarks/finetune_memory.py --model /tmp/tiny-llama --steps 20 --rounds 3   # a quick check

The data are Multi30k German→English pairs as translation prompts (the first --rows lines of
../shared/data/multi30k/train.{de,en}.gz, as configs/smollm2-lora-sft.yaml words them), or fixed synthetic pairs when
those files are missing or with --synthetic; encoded with tasks.finetune.sft.encode and padded by
tasks.finetune.sft.collate. "full" is MethodSpec(method="full"), "lora" is MethodSpec(method="lora", lora_rank=16,
lora_alpha=32) with the default targets, both through tasks.methods.prepare(model, spec, "causal_lm"), then the HF
Trainer built as the finetune stage builds it (tasks.train.arguments with the stage's TrainSpec defaults), with no
MLflow callbacks and no checkpoints. Every measurement runs in its own subprocess (so ru_maxrss is that variant's
peak, model loading included), skips --warmup steps, then times --steps optimizer steps. Variants alternate
(full lora full lora ...) so machine noise hits both alike; the ratio lora/full is taken per round and its median
reported.
"""

import argparse
import gzip
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from child import run as run_child  # benchmarks/child.py: one measurement in a fresh process

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = (ROOT / ".." / "shared" / "data" / "multi30k").resolve()
# The wording configs/smollm2-lora-sft.yaml gives the same pairs.
TEMPLATE = "Translate this German sentence into English: {prompt}"
VARIANTS = ("full", "lora")


def _rows(n: int, synthetic: bool) -> tuple[list[dict], str]:
    """n prompt/response pairs and where they came from."""
    files = [MULTI30K / f"train.{lang}.gz" for lang in ("de", "en")]
    if not synthetic and all(f.is_file() for f in files):
        with gzip.open(files[0], "rt", encoding="utf-8") as de, gzip.open(files[1], "rt", encoding="utf-8") as en:
            pairs = [(d.strip(), e.strip()) for d, e, _ in zip(de, en, range(n))]
        return [
            {"prompt": TEMPLATE.format(prompt=d), "response": e} for d, e in pairs
        ], f"multi30k first {len(pairs)} pairs"
    # Fixed, deterministic pairs of similar length to Multi30k's (a sentence in, a short sentence out).
    rows = [
        {
            "prompt": f"Write the sum of {i} and {3 * i + 7} in words, then say which of the two numbers is larger.",
            "response": f"The sum of {i} and {3 * i + 7} is {4 * i + 7}; {3 * i + 7} is the larger of the two numbers.",
        }
        for i in range(n)
    ]
    return rows, f"synthetic {n} pairs"


def _method(variant: str):
    from tasks.spec import MethodSpec

    return MethodSpec(method="full") if variant == "full" else MethodSpec(method="lora", lora_rank=16, lora_alpha=32)


def child(args) -> None:
    import torch
    from transformers import Trainer, TrainerCallback, set_seed

    from tasks import methods
    from tasks import model as models
    from tasks.finetune.sft import Examples, collate, encode
    from tasks.finetune.spec import FinetuneSpec
    from tasks.spec import TrainSpec
    from tasks.train import arguments

    if args.threads:
        torch.set_num_threads(args.threads)
    total_steps = args.warmup + args.steps
    # The finetune stage's optimisation defaults (lr 5e-5, warmup, weight decay 0.01), sized for this run; checkpoints
    # past the last step and save_strategy "no", since transformers 5 otherwise saves once more at max_steps.
    defaults = FinetuneSpec().train.model_dump()
    train = TrainSpec(
        **{
            **defaults,
            "max_steps": total_steps,
            "batch_size": args.batch_size,
            "checkpoint_every": total_steps + 1,
            "log_every": total_steps,
        }
    )

    class StepClock(TrainerCallback):
        """Times the steps after the warm-up; notes any save."""

        t0 = t1 = loss = None
        saves: list[int] = []

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                self.t0 = time.perf_counter()
            elif state.global_step == total_steps:
                self.t1 = time.perf_counter()

        def on_save(self, a, state, control, **kw):
            self.saves.append(state.global_step)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

    set_seed(train.seed)
    t_load = time.perf_counter()
    model, tok = models.load(args.model)
    load_seconds = time.perf_counter() - t_load
    rows, source = _rows(args.rows, args.synthetic)
    encoded = [e for e in (encode(tok, r, args.max_length) for r in rows) if e]
    if not encoded:
        sys.exit(f"no prompt of the {source} is shorter than --max-length {args.max_length} tokens: raise --max-length")
    model = methods.prepare(model, _method(args.child), "causal_lm")
    trainable, total = methods.trainable_fraction(model)
    rss_before_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with tempfile.TemporaryDirectory() as out_dir:
        clock = StepClock()
        trainer = Trainer(
            model=model,
            args=arguments(train, out_dir, save_strategy="no"),
            train_dataset=Examples(encoded),
            data_collator=collate(tok.pad_token_id),
            processing_class=tok,
            callbacks=[clock],
        )
        # As tasks.train.fit does: count the parameters for the FLOP estimate once, not on every step.
        n_params = trainer.model.num_parameters(exclude_embeddings=True)
        trainer.floating_point_ops = lambda inputs: 6 * inputs["input_ids"].numel() * n_params
        trainer.train()
    assert not clock.saves, f"the Trainer saved checkpoints at steps {clock.saves}"
    # Same seed and data_seed in both variants: the same batches, so the same padded lengths.
    tokens = sum(len(e["input_ids"]) for e in encoded) / len(encoded)
    result = {
        "variant": args.child,
        "seconds_per_step": (clock.t1 - clock.t0) / args.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_before_train_mb": rss_before_train,
        "load_seconds": load_seconds,
        "trainable": trainable,
        "total": total,
        "loss": clock.loss,
        "examples": len(encoded),
        "mean_tokens": tokens,
        "data": source,
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def measure(variant: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--rows",
        str(args.rows),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.synthetic:
        cmd += ["--synthetic"]
    return run_child(variant, cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="package:smollm2-135m", help="model URI to fine-tune (package:, a local folder, models:/...)"
    )
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the clock starts")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per variant, alternating")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step")
    parser.add_argument(
        "--max-length", type=int, default=64, help="longest encoded example (prompt + response), tokens"
    )
    parser.add_argument("--rows", type=int, default=256, help="prompt/response pairs to encode")
    parser.add_argument(
        "--synthetic", action="store_true", help="use the fixed synthetic pairs even when Multi30k is present"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each child (default: torch's default)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    print(
        f"finetune_memory: {args.model}, batch {args.batch_size} × {args.max_length}, {args.steps} timed steps after "
        f"{args.warmup} warm-up, {args.rounds} rounds, threads {args.threads or 'torch default'}",
        flush=True,
    )
    results = {v: [] for v in VARIANTS}
    time_ratios, rss_ratios = [], []
    for r in range(1, args.rounds + 1):
        for variant in VARIANTS:
            load = os.getloadavg()[0]
            res = measure(variant, args)
            results[variant].append(res)
            print(
                f"  round {r} {variant:<4} {res['seconds_per_step']:7.3f} s/step  peak RSS {res['peak_rss_mb']:6,.0f} MB "
                f"(after loading {res['peak_rss_before_train_mb']:,.0f} MB)  trainable {res['trainable']:,} of {res['total']:,}  "
                f"last loss {res['loss']:.3f}  load {res['load_seconds']:.1f} s  threads {res['threads']}  load avg before {load:.1f}",
                flush=True,
            )
        time_ratios.append(results["lora"][-1]["seconds_per_step"] / results["full"][-1]["seconds_per_step"])
        rss_ratios.append(results["lora"][-1]["peak_rss_mb"] / results["full"][-1]["peak_rss_mb"])
        print(
            f"  round {r} ratio lora/full: step time {time_ratios[-1]:.3f}, peak RSS {rss_ratios[-1]:.3f}", flush=True
        )

    first = results["lora"][0]
    # encode drops a pair whose prompt (chat template included) fills max_length and truncates the response of the rest.
    print(
        f"  data: {first['data']}; {first['examples']} have a prompt shorter than {args.max_length} tokens and are used "
        f"(mean length {first['mean_tokens']:.1f} tokens after truncation)"
    )
    step = {v: statistics.median(x["seconds_per_step"] for x in results[v]) for v in VARIANTS}
    rss = {v: statistics.median(x["peak_rss_mb"] for x in results[v]) for v in VARIANTS}
    time_ratio, rss_ratio = statistics.median(time_ratios), statistics.median(rss_ratios)
    fraction = first["trainable"] / first["total"]
    print(
        f"  step time ratios {', '.join(f'{x:.3f}' for x in time_ratios)}; median {time_ratio:.3f} "
        f"(lora {step['lora']:.3f} s/step, full {step['full']:.3f} s/step)"
    )
    print(f"  peak RSS ratios {', '.join(f'{x:.3f}' for x in rss_ratios)}; median {rss_ratio:.3f}")
    print(
        f"  trainable: lora {first['trainable']:,} of {first['total']:,} ({100 * fraction:.2f}%), "
        f"full {results['full'][0]['trainable']:,} of {results['full'][0]['total']:,}"
    )
    if len(time_ratios) > 1 and max(time_ratios) - min(time_ratios) > 0.10:
        print(
            "  warning: the rounds' step-time ratios disagree by more than 0.10, so something else was using the CPUs; "
            "rerun on an idle machine, with more --rounds, or with --threads 1"
        )
    print(
        f"finetune_memory: lora/full step time {time_ratio:.2f}, peak RSS {rss_ratio:.2f} (lora {rss['lora']:,.0f} MB, "
        f"full {rss['full']:,.0f} MB), trainable {100 * fraction:.2f}% — {args.model}, batch {args.batch_size} × {args.max_length}"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
