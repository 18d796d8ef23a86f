"""The variants that benchmarks/finetune_throughput.py measures: the pipeline's Trainer, a bare loop, bf16 and fp32 in turn."""

import csv
import math
import os
import tempfile
import time
from pathlib import Path

BATCH_SIZE, MAX_LENGTH = 32, 64
LABELS = ["0", "1"]


def read_tsv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return [{"text": r["sentence"], "label": r["label"]} for r in csv.DictReader(f, delimiter="\t")]


def sst2_splits(data: str) -> dict[str, list[dict]]:
    """SST-2 train less every 50th row (the validation split, 2% as the preset draws it) and the dev file as test."""
    rows = read_tsv(Path(data) / "train.tsv")
    return {
        "train": [r for i, r in enumerate(rows) if i % 50],
        "validation": rows[::50],
        "test": read_tsv(Path(data) / "dev.tsv"),
    }


def finetune_spec(args):
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


def pipeline(args, spec, splits) -> dict:
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


def bare(args, spec, splits) -> dict:
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


def paired_precision(args, spec, splits) -> dict:
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
