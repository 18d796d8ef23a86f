"""Any model URI scored on any dataset URI's rows with the metrics of the dataset's task, and models compared side by side
with paired intervals; the gate and `multistep evaluate` (flows/evaluation.py) use it."""

import math
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForQuestionAnswering

from tasks import answers, interrupt, predict, qa_scores, spans
from tasks import metrics as metrics_
from tasks import model as models
from tasks.data import labeled, prepared
from tasks.data.labeled.rows import subset
from tasks.errors import UserError


@dataclass
class Scored:
    """A model scored on a dataset's test rows: metrics, per-example scores (higher is better) and predictions."""

    task: str
    metrics: dict[str, float]
    # metric → [n] scores oriented so that higher is better (negated log-loss for perplexity)
    per_example: dict[str, np.ndarray]
    predictions: list[dict]
    report: dict | None = None  # classification: per-class scores and the confusion matrix


def task_of(dataset: str) -> str:
    """`classification`, `sft`, `extractive-qa` or `math` for labeled datasets, `lm` for a packed corpus."""
    card = prepared.card(dataset)
    return card.get("task", "lm")


def scored_blocks(dataset: str, split: str, max_rows: int | None) -> np.ndarray:
    """The packed blocks a language model is scored on: the first max_rows [n, block_size]."""
    return prepared.load_blocks(dataset, split)[:max_rows]


def scored_rows(dataset: str, task: str, split: str, max_rows: int | None) -> list[dict]:
    """The labeled rows a model is scored on: at most max_rows (200 when generating), chosen by content hash."""
    if task in ("sft", "math") and max_rows is None:
        max_rows = 200  # greedy generation is the slow part: an interval on 200 rows is already informative
    key = (
        (lambda r: r["question"] + "\n" + r["context"])
        if task == "extractive-qa"
        else (lambda r: r.get("text") or r["prompt"])
    )
    rows = subset(labeled.load_rows(dataset, split), max_rows, "evaluate", key)
    if not rows:
        raise UserError(
            f"{dataset} has no {split} rows to score: prepare the dataset with a {split} split (labeled.{split} or labeled.split.{split})"
        )
    return rows


def score(
    model_uri: str,
    dataset: str,
    *,
    split: str = "test",
    max_rows: int | None = None,
    max_length: int = 128,
    max_new_tokens: int = 48,
) -> Scored:
    """Score any model URI on a dataset URI's split with the metrics of the dataset's task (at most 200 generated rows for SFT unless max_rows says)."""
    task = task_of(dataset)
    if task == "lm":
        blocks = scored_blocks(dataset, split, max_rows)
        model, _ = models.load(model_uri, tokenizer=False)
        losses = block_losses(model, blocks)
        metrics = {"loss": float(losses.mean()), "perplexity": math.exp(float(losses.mean()))}
        return Scored(
            task,
            metrics,
            {"perplexity": -losses, "loss": -losses},
            [{"block": i, "loss": float(loss)} for i, loss in enumerate(losses)],
        )
    if task == "extractive-qa":
        return _extractive_qa(model_uri, dataset, split, max_rows, max_length)
    rows = scored_rows(dataset, task, split, max_rows)
    if task == "classification":
        labels = labeled.card(dataset)["labels"]
        model, tok = predict.load(model_uri, labels, "the model")
        probs = predict.probabilities(model, tok, [r["text"] for r in rows], max_length=max_length, desc="score")
        y = np.array([labels.index(r["label"]) for r in rows])
        report = metrics_.classification(y, probs, labels)
        preds = [
            {"text": r["text"], "label": r["label"], "predicted": labels[int(p.argmax())], "confidence": float(p.max())}
            for r, p in zip(rows, probs)
        ]
        return Scored(task, metrics_.flat(report), {"accuracy": metrics_.correct(y, probs)}, preds, report)
    model, tok = models.load(model_uri)
    batch = answers.BATCH_SIZE if task == "math" else 8
    hyps = predict.generate(model, tok, [r["prompt"] for r in rows], max_new_tokens, batch_size=batch)
    refs = [r["response"] for r in rows]
    if task == "math":
        found, correct, extracted = answers.score(hyps, refs)
        preds = [
            {"prompt": r["prompt"], "reference": ref, "generated": h, "answer": answers.shown(a), "correct": bool(c)}
            for r, ref, h, a, c in zip(rows, refs, hyps, extracted, correct)
        ]
        return Scored(task, found, {"answer_accuracy": correct}, preds)
    found = metrics_.generation(hyps, refs)
    per = {
        "exact_match": np.array([float(h.strip() == r.strip()) for h, r in zip(hyps, refs)]),
        "chrf": metrics_.generation_per_example(hyps, refs),
    }
    return Scored(
        task,
        found,
        per,
        [{"prompt": r["prompt"], "reference": ref, "generated": h} for r, ref, h in zip(rows, refs, hyps)],
    )


def _extractive_qa(model_uri: str, dataset: str, split: str, max_rows: int | None, max_length: int) -> Scored:
    """Exact match and F1 of the best span per question, windowed as the model version was fine-tuned (its tags)."""
    rows = scored_rows(dataset, "extractive-qa", split, max_rows)
    model, tok = models.load(model_uri, auto=AutoModelForQuestionAnswering)
    predicted = spans.predict(model, tok, rows, spans.settings_of(model_uri, max_length))
    golds = [[a["text"] for a in r["answers"]] for r in rows]
    found, per = qa_scores.scores(predicted, golds)
    preds = [
        {"question": r["question"], "gold": " | ".join(dict.fromkeys(g)), "prediction": p, "em": em, "f1": f}
        for r, g, p, em, f in zip(rows, golds, predicted, per["exact_match"], per["f1"])
    ]
    return Scored("extractive-qa", found, per, preds)


def block_losses(model, blocks: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Mean next-token cross-entropy of each block [n]."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            batch = torch.from_numpy(blocks[start : start + batch_size].astype(np.int64)).to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").mean(dim=1)
            out.append(loss.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def compare(
    model_uris: list[str],
    dataset: str,
    *,
    split: str = "test",
    max_rows: int | None = None,
    parent_run_id: str | None = None,
) -> dict[str, dict]:
    """Score each model in its own MLflow run (metrics, predictions, confusion matrix); paired intervals against the first model."""
    if not model_uris:
        raise UserError("Name at least one model to evaluate, e.g. models:/sst2-minilm@champion.")
    found: dict[str, Scored] = {}
    out = {}
    for uri in model_uris:
        interrupt.check(f"before scoring {uri}")  # after Ctrl-C, the models scored so far keep their runs
        scored = found[uri] = score(uri, dataset, split=split, max_rows=max_rows)
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        with mlflow.start_run(
            run_name="evaluate",
            nested=True,
            tags={
                **tags,
                "multistep.stage": "evaluate",
                "multistep.input.model": uri,
                "multistep.input.dataset": dataset,
            },
        ):
            mlflow.log_metrics({f"{split}_{k}": v for k, v in scored.metrics.items()})
            mlflow.log_table(pd.DataFrame(scored.predictions), f"evaluation/{split}_predictions.json")
            if scored.report:
                mlflow.log_figure(
                    metrics_.confusion_figure(scored.report["confusion"], list(scored.report["per_class"]), uri),
                    f"evaluation/{split}_confusion.png",
                )
                mlflow.log_dict(scored.report, f"evaluation/{split}_report.json")
        out[uri] = {"task": scored.task, "rows": len(scored.predictions), "metrics": scored.metrics}
        if uri != model_uris[0]:
            reference = found[model_uris[0]]
            out[uri]["vs_first"] = {
                m: metrics_.paired_bootstrap(scored.per_example[m], reference.per_example[m])
                for m in scored.per_example
            }
        shown = ", ".join(
            f"{k} {v:.4g}"
            for k, v in scored.metrics.items()
            if "_" not in k or k in ("macro_f1", "exact_match", "answer_accuracy")
        )
        print(f"evaluate: {uri} on {split} ({len(scored.predictions)} rows): {shown}")
    return out
