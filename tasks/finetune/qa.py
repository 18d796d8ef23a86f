"""Extractive question answering: a span head (a start and an end logit per token) on any encoder, trained on overlapping
windows of long contexts, validated by SQuAD exact match and F1 at every checkpoint, the best F1 registered."""

import mlflow
import pandas as pd
import torch
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, Trainer, set_seed
from transformers.trainer_pt_utils import get_length_grouped_indices

from tasks import methods, qa_scores, spans
from tasks import model as models
from tasks.data import labeled
from tasks.errors import UserError
from tasks.finetune.trainer import build, fit_best, register, registered_already
from tasks.tracking import log_metrics


class Features(torch.utils.data.Dataset):
    """Tokenized windows with the token positions of their answer (0, the [CLS] token, when the window lacks it), read
    in `order` (indices into the windows; all of them once, in turn, when not given)."""

    def __init__(self, encoding: dict[str, list], starts: list[int], ends: list[int], order: list[int] | None = None):
        self.encoding, self.starts, self.ends = encoding, starts, ends
        self.order = list(range(len(starts))) if order is None else order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        i = self.order[i]
        return {
            **{k: v[i] for k, v in self.encoding.items()},
            "start_positions": self.starts[i],
            "end_positions": self.ends[i],
        }


def grouped(features: Features, batch_size: int, max_steps: int, seed: int) -> Features:
    """The training windows in batches of similar length, for as many epochs as max_steps needs: each epoch a fresh
    seeded shuffle, cut into groups of 50 batches, sorted by length within (Hugging Face's length grouping).

    Windows run from a short paragraph to max_length tokens (SQuAD: 176 of 384 on average), so random batches pad to
    nearly twice the work. Done here rather than by `train_sampling_strategy="group_by_length"`, which reorders the
    evaluation windows too, and compute_metrics must see those in order.
    """
    lengths = [len(ids) for ids in features.encoding["input_ids"]]
    epochs = -(-max(1, max_steps) * batch_size // len(lengths))
    generator = torch.Generator().manual_seed(seed)
    order = [i for _ in range(epochs) for i in get_length_grouped_indices(lengths, batch_size, generator=generator)]
    return Features(features.encoding, features.starts, features.ends, order)


def settings(spec) -> spans.Settings:
    return spans.settings(
        spec.max_length, spec.doc_stride, max_answer_length=spec.max_answer_length, n_best=spec.n_best
    )


def label(found: spans.Windows, rows: list[dict]) -> tuple[list[int], list[int]]:
    """Start and end token of each window's answer (the question's first gold answer), or 0 and 0 (the [CLS] token)
    when the window does not hold all of it: the Hugging Face recipe for windows without the answer."""
    starts, ends = [], []
    for ex, offsets in zip(found.example, found.offsets):
        gold = rows[ex]["answers"][0]
        first, last = gold["answer_start"], gold["answer_start"] + len(gold["text"])
        inside = [j for j, o in enumerate(offsets) if o is not None]
        if not inside or offsets[inside[0]][0] > first or offsets[inside[-1]][1] < last:
            starts.append(0)
            ends.append(0)
            continue
        starts.append(max(j for j in inside if offsets[j][0] <= first))
        ends.append(min(j for j in inside if offsets[j][1] >= last))
    return starts, ends


def encode(tok, rows: list[dict], how: spans.Settings, train: bool) -> tuple[Features, spans.Windows, int]:
    """The windows of every question, labelled; for training, the questions that no single window holds the answer of
    (an answer longer than a window's overlap, across a window boundary) are left out. Returns them and their count."""
    found = spans.windows(tok, rows, how)
    starts, ends = label(found, rows)
    keep = range(len(starts))
    if train:
        held = {ex for ex, s in zip(found.example, starts) if s}
        keep = [i for i, ex in enumerate(found.example) if ex in held]
    dropped = len(rows) - len({found.example[i] for i in keep}) if train else 0
    encoding = {k: [v[i] for i in keep] for k, v in found.encoding.items()}
    return Features(encoding, [starts[i] for i in keep], [ends[i] for i in keep]), found, dropped


def scorer(found: spans.Windows, rows: list[dict], how: spans.Settings):
    """compute_metrics for the validation windows: exact match and F1 of the best span per question."""
    golds = [[a["text"] for a in r["answers"]] for r in rows]

    def compute(eval_pred) -> dict[str, float]:
        start_logits, end_logits = eval_pred.predictions[:2]
        return qa_scores.scores(spans.best_answers(start_logits, end_logits, found, rows, how), golds)[0]

    return compute


def setup(spec, init: str, data: str):
    """The model with a span head (seeded, so every torchrun rank starts alike), its tokenizer, rows and features by split."""
    if spec.method == "lora":
        raise UserError(
            "finetune.method lora is not wired up for extractive QA's span head: set finetune.method to full or head"
        )
    set_seed(spec.seed_of_new_weights)
    model, tok = models.load(init, auto=AutoModelForQuestionAnswering)
    model = methods.prepare(model, spec, "classification")  # a task head beside the body, like a classifier's
    how = settings(spec)
    rows = {s: labeled.load_rows(data, s) for s in ("train", "validation", "test")}
    encoded = {s: encode(tok, rows[s], how, train=s == "train") for s in rows}
    return model, tok, rows, encoded


def _select(rows, encoded, how) -> dict:
    # The best checkpoint is the one with the highest validation F1.
    return {
        "metric": "f1",
        "greater": True,
        "compute_metrics": scorer(encoded["validation"][1], rows["validation"], how),
    }


def trainer(spec, init: str, data: str, ctx) -> Trainer:
    """What each torchrun rank trains: the Trainer the single-process path builds."""
    model, tok, rows, encoded = setup(spec, init, data)
    return _trainer(spec, model, tok, rows, encoded, ctx)


def _trainer(spec, model, tok, rows, encoded, ctx) -> Trainer:
    how = settings(spec)
    train, validation = encoded["train"][0], encoded["validation"][0]
    train = grouped(train, spec.train.batch_size * spec.train.grad_accum, spec.train.max_steps, spec.train.seed)
    return build(
        spec,
        model,
        tok,
        train,
        validation,
        DataCollatorWithPadding(tok),
        ctx,
        ordered=True,
        **_select(rows, encoded, how),
    )


def run(spec, init: str, data: str, register_as: str, ctx) -> str:
    """Fine-tune a span head, keep the best validation F1, score test exactly as the gate will, register."""
    if existing := registered_already(spec, register_as, ctx):
        return existing
    model, tok, rows, encoded = setup(spec, init, data)
    how = settings(spec)
    dropped = encoded["train"][2]
    if dropped:
        print(
            f"finetune: {dropped} training questions left out: no window of {spec.max_length} tokens holds their answer"
        )
    log_metrics(ctx.run_id, {"train_questions_dropped": dropped, "train_windows": len(encoded["train"][0])})
    trainer = _trainer(spec, model, tok, rows, encoded, ctx)
    fit_best(trainer, spec, {"init": init, "data": data}, ctx)
    metrics = {}
    for split in ("validation", "test"):
        if rows[split]:
            # spans.predict is what the gate and `multistep evaluate` run: the version's metrics are theirs
            predicted = spans.predict(trainer.model, tok, rows[split], how)
            golds = [[a["text"] for a in r["answers"]] for r in rows[split]]
            found, per = qa_scores.scores(predicted, golds)
            metrics.update({f"{split}_{k}": v for k, v in found.items()})
            if split == "test":
                mlflow.log_table(table(rows[split], predicted, per), "evaluation/test_predictions.json")
    print("finetune: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    task = models.task_of(trainer.model)  # feature-extraction: transformers 5 dropped the question-answering pipeline
    return register(spec, trainer.model, tok, task, register_as, init, metrics, ctx, how.tags())


def table(rows: list[dict], predicted: list[str], per: dict) -> pd.DataFrame:
    """Predictions as the MLflow table shows them: question, gold answers, prediction, its exact match and F1."""
    return pd.DataFrame(
        {
            "question": [r["question"] for r in rows],
            "gold": [" | ".join(dict.fromkeys(a["text"] for a in r["answers"])) for r in rows],
            "prediction": predicted,
            "exact_match": per["exact_match"],
            "f1": per["f1"],
        }
    )
