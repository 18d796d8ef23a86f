"""Instruction SFT: prompt → response, the prompt masked out of the loss, the chat template when the tokenizer has one."""

import mlflow
import sacrebleu
import torch
from transformers import Trainer, set_seed

from tasks import methods
from tasks import model as models
from tasks.data import labeled
from tasks.finetune.trainer import build, fit_best, register, registered_already
from tasks.predict import generate, prompt_ids
from tasks.tracking import log_metrics

IGNORE = -100  # label id the loss skips


def encode(tokenizer, row: dict, max_length: int) -> dict[str, list[int]] | None:
    """input_ids = prompt + response + eos; labels = IGNORE over the prompt; None when the prompt leaves no room."""
    prompt = prompt_ids(tokenizer, row["prompt"])
    response = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt) >= max_length:
        return None
    ids = (prompt + response)[:max_length]
    return {"input_ids": ids, "labels": ([IGNORE] * len(prompt) + response)[:max_length]}


class Examples(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def collate(pad_id: int):
    """Right-pad a batch: input_ids with pad, labels with IGNORE, and the attention mask."""

    def pad(batch: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), longest), pad_id)
        labels = torch.full((len(batch), longest), IGNORE)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return pad


@torch.no_grad()
def mean_loss(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> float:
    """Mean response-token loss of the model as it is (the "before" of a fine-tune), batched like the Trainer's eval."""
    model.eval()
    pad = collate(pad_id)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(model.device) for k, v in pad(examples[start : start + batch_size]).items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())  # positions the shifted loss counts
        total += model(**batch).loss.item() * n
        count += n
    return total / max(count, 1)


def generation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu) and exact match."""
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "exact_match": sum(h == r for h, r in zip(hypotheses, references)) / max(1, len(references)),
    }


def judge_generations(model, tok, rows: list[dict], spec) -> tuple[dict[str, float], dict[str, list]]:
    """Greedy responses scored with BLEU, chrF and exact match; and the generations-table columns they add (suffix → values)."""
    hypotheses = generate(model, tok, [r["prompt"] for r in rows], spec.max_new_tokens)
    return generation_scores(hypotheses, [r["response"] for r in rows]), {"": hypotheses}


def setup(spec, init: str, data: str):
    """The model as loaded (seeded, so every torchrun rank starts alike), its tokenizer, the rows and their encodings by split."""
    set_seed(spec.seed_of_new_weights)
    model, tok = models.load(init)
    rows = {s: labeled.load_rows(data, s) for s in ("train", "validation", "test")}
    encoded = {s: [e for e in (encode(tok, r, spec.max_length) for r in rows[s]) if e] for s in rows}
    return model, tok, rows, encoded


# The best checkpoint is the one with the lowest validation loss.
SELECT = {"metric": "eval_loss", "greater": False}


def trainer(spec, init: str, data: str, ctx) -> Trainer:
    """What each torchrun rank trains: the Trainer the single-process path builds."""
    model, tok, _, encoded = setup(spec, init, data)
    model = methods.prepare(model, spec, "causal_lm")
    return _trainer(spec, model, tok, encoded, ctx)


def _trainer(spec, model, tok, encoded, ctx) -> Trainer:
    train, validation = Examples(encoded["train"]), Examples(encoded["validation"])
    return build(spec, model, tok, train, validation, collate(tok.pad_token_id), ctx, **SELECT)


def run(spec, init: str, data: str, register_as: str, ctx, judge=judge_generations) -> str:
    """Fine-tune for instruction following; score generations before and after with `judge`; register the best checkpoint."""
    if existing := registered_already(spec, register_as, ctx):
        return existing
    model, tok, rows, encoded = setup(spec, init, data)
    held_out = rows["test"][: spec.generation_rows]
    before = judge(model, tok, held_out, spec) if held_out else None
    loss_before = mean_loss(model, encoded["test"], tok.pad_token_id) if encoded["test"] else None

    model = methods.prepare(model, spec, "causal_lm")
    trainer = _trainer(spec, model, tok, encoded, ctx)
    fit_best(trainer, spec, {"init": init, "data": data}, ctx)
    metrics = {} if loss_before is None else {"test_loss_before": loss_before}
    for split in ("validation", "test"):
        if encoded[split]:
            metrics[f"{split}_loss"] = trainer.evaluate(Examples(encoded[split]), metric_key_prefix=split)[
                f"{split}_loss"
            ]
    if held_out:
        after = judge(trainer.model, tok, held_out, spec)
        metrics.update({f"{k}_before": v for k, v in before[0].items()})
        metrics.update(after[0])
        table = {"prompt": [r["prompt"] for r in held_out], "reference": [r["response"] for r in held_out]}
        table.update({f"before{suffix}": values for suffix, values in before[1].items()})
        table.update({f"after{suffix}": values for suffix, values in after[1].items()})
        mlflow.log_table(table, "generations.json")
    log_metrics(ctx.run_id, metrics)
    print("finetune: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    return register(spec, trainer.model, tok, "text-generation", register_as, init, metrics, ctx, {})
