"""Sequence classification: text (and an optional text pair) → one of the dataset's labels."""

import mlflow
import numpy as np
import pandas as pd
import torch
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, set_seed

from tasks import attack, methods, synonyms
from tasks import metrics as metrics_
from tasks import model as models
from tasks.data import labeled
from tasks.finetune import distill
from tasks.finetune.trainer import build, fit_best, register, registered_already
from tasks.heads import classification_head
from tasks.spec import AttackSpec


class Encoded(torch.utils.data.Dataset):
    """Tokenized examples with their label ids; the collator pads each batch to its longest row."""

    def __init__(self, encodings: dict[str, list], labels: list[int]):
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {**{k: v[i] for k, v in self.encodings.items()}, "labels": self.labels[i]}


def load_classifier(uri: str, labels: list[str]):
    """The model at `uri` with a head for `labels`: kept when it already names exactly these labels, new otherwise."""
    where = models.locate(uri)
    source = models.saved_config(where)
    kept = list(getattr(source, "id2label", {}).values()) == labels and any(
        "ForSequenceClassification" in a for a in source.architectures or []
    )
    model, tok = models.load(
        uri,
        where=where,
        auto=AutoModelForSequenceClassification,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    if not kept and any("ForSequenceClassification" in a for a in source.architectures or []):
        model = classification_head(model, tok, labels)  # same size, other labels: a trained head would lie
    if model.config.pad_token_id is None:  # decoders classify from the last non-pad token
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def encode(tokenizer, rows: list[dict], label2id: dict[str, int], max_length: int) -> Encoded:
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    enc = tokenizer([r["text"] for r in rows], pairs, truncation=True, max_length=max_length)
    return Encoded(dict(enc), [label2id[r["label"]] for r in rows])


def by_length(encoded: Encoded) -> Encoded:
    """The same examples, shortest first: each padded batch then holds rows of about one length."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded.encodings["input_ids"][i]))
    return Encoded({k: [v[i] for i in order] for k, v in encoded.encodings.items()}, [encoded.labels[i] for i in order])


def scores(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn) from the Trainer's logits and label ids."""
    logits, labels = eval_pred
    predicted = np.argmax(logits, axis=-1)
    return {"accuracy": accuracy_score(labels, predicted), "macro_f1": f1_score(labels, predicted, average="macro")}


def report(trainer, encoded: Encoded, rows: list[dict], labels: list[str]) -> dict[str, float]:
    """The test split in full: calibration and per-class metrics, predictions table, confusion and calibration figures, a Prefect artifact."""
    logits = trainer.predict(encoded, metric_key_prefix="test").predictions
    probs = torch.softmax(torch.as_tensor(logits).float(), dim=-1).numpy()
    y = np.array(encoded.labels)
    found = metrics_.classification(y, probs, labels)
    mlflow.log_table(
        pd.DataFrame(
            [
                {
                    "text": r["text"],
                    "label": r["label"],
                    "predicted": labels[int(p.argmax())],
                    "confidence": float(p.max()),
                }
                for r, p in zip(rows, probs)
            ]
        ),
        "evaluation/test_predictions.json",
    )
    mlflow.log_figure(metrics_.confusion_figure(found["confusion"], labels, "test"), "evaluation/test_confusion.png")
    mlflow.log_figure(metrics_.calibration_figure(y, probs), "evaluation/test_calibration.png")
    mlflow.log_dict(found, "evaluation/test_report.json")
    _prefect_table(found, labels)
    return {f"test_{k}": v for k, v in metrics_.flat(found).items() if k not in ("accuracy", "macro_f1")}


def _prefect_table(found: dict, labels: list[str]) -> None:
    """Per-class test scores as a table artifact on the Prefect flow run."""
    if flow_run.id:
        rows = [
            {"label": label, **{k: round(float(v), 4) for k, v in found["per_class"][label].items()}}
            for label in labels
        ]
        rows.append(
            {
                "label": "all",
                "precision": None,
                "recall": None,
                "f1": round(found["macro_f1"], 4),
                "support": sum(r["support"] for r in rows),
            }
        )
        create_table_artifact(
            rows,
            description=f"Test accuracy {found['accuracy']:.4f}, macro-F1 {found['macro_f1']:.4f}, ECE {found['ece']:.4f}",
        )


def robustness(model, tok, rows: list[dict], labels: list[str], spec: AttackSpec) -> dict[str, float]:
    """Attack test rows: robust and clean accuracy on the attacked rows and the success rate, with the flipped rows as an MLflow table."""
    model.eval()
    outcomes = attack.attack(
        model,
        tok,
        rows,
        labels,
        spec,
        synonyms.source(spec.synonyms, lambda: (model, tok), setting="finetune.attack.synonyms"),
        salt="robustness",
    )
    flipped = [
        {
            "text": o.row["text"],
            "adversarial": o.text,
            "label": o.row["label"],
            "predicted": labels[o.predicted],
            "edits": len(o.edits),
        }
        for o in outcomes
        if o.flipped
    ]
    if flipped:
        mlflow.log_table(pd.DataFrame(flipped), "attack/test_flipped.json")
    found = attack.summary(outcomes)
    print(
        f"finetune: attack flipped {found['attack_success_rate']:.1%} of {found['attacked_rows']} test rows the model got right"
    )
    return {f"test_{k}": v for k, v in found.items()}


def setup(spec, init: str, data: str):
    """The model to train (seeded, so every torchrun rank starts alike), its tokenizer, the encoded splits and the labels."""
    labels = labeled.card(data)["labels"]
    set_seed(spec.seed_of_new_weights)
    model, tok = load_classifier(init, labels)
    model = methods.prepare(model, spec, "classification")
    rows = {s: labeled.load_rows(data, s) for s in ("train", "validation", "test")}
    splits = encode_splits(tok, rows, labels, spec.max_length)
    if distill.settings(data):
        distill.attach(splits["train"], rows["train"], len(labels))
    return model, tok, splits, labels


def encode_splits(tokenizer, rows: dict[str, list[dict]], labels: list[str], max_length: int) -> dict[str, Encoded]:
    """Each split encoded; validation shortest first.

    Validation is scored at every checkpoint, and only as a whole (accuracy, F1), so its order is free. In stored order
    each batch pads to its longest row: on SST-2's validation that is 3.0x the real tokens, sorted 1.05x. Test keeps
    its order: its predictions table pairs each row with its prediction.
    """
    label2id = {label: i for i, label in enumerate(labels)}
    splits = {s: encode(tokenizer, split_rows, label2id, max_length) for s, split_rows in rows.items()}
    splits["validation"] = by_length(splits["validation"])
    return splits


# The best checkpoint is the one with the highest validation accuracy.
SELECT = {"metric": "accuracy", "greater": True, "compute_metrics": scores}


def trainer(spec, init: str, data: str, ctx) -> Trainer:
    """What each torchrun rank trains: the Trainer the single-process path builds."""
    model, tok, splits, _ = setup(spec, init, data)
    return _build(spec, model, tok, splits, data, ctx)


def _build(spec, model, tok, splits: dict[str, Encoded], data: str, ctx) -> Trainer:
    """The Trainer; on a dataset whose card asks for distillation, one that also learns the teachers' soft labels."""
    collator, base = DataCollatorWithPadding(tok), Trainer
    if found := distill.settings(data):
        collator, base = distill.Collator(collator), distill.trainer_class(found["temperature"], found["alpha"])
    return build(spec, model, tok, splits["train"], splits["validation"], collator, ctx, base=base, **SELECT)


def run(spec, init: str, data: str, register_as: str, ctx) -> str:
    """Fine-tune a classifier, keep the best validation checkpoint, score test, register."""
    if existing := registered_already(spec, register_as, ctx):
        return existing
    model, tok, splits, labels = setup(spec, init, data)
    if found := distill.settings(data):
        mlflow.log_params({f"distill.{k}": v for k, v in found.items()})
    trainer = _build(spec, model, tok, splits, data, ctx)
    fit_best(trainer, spec, {"init": init, "data": data}, ctx)
    metrics = {}
    for split in ("validation", "test"):
        if len(splits[split]):
            result = trainer.evaluate(splits[split], metric_key_prefix=split)
            metrics.update({k: v for k, v in result.items() if k.endswith(("accuracy", "macro_f1", "loss"))})
    if len(splits["test"]):
        metrics.update(report(trainer, splits["test"], labeled.load_rows(data, "test"), labels))
    if spec.attack and len(splits["test"]):
        metrics.update(robustness(trainer.model, tok, labeled.load_rows(data, "test"), labels, spec.attack))
    print("finetune: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    return register(
        spec,
        trainer.model,
        tok,
        "text-classification",
        register_as,
        init,
        metrics,
        ctx,
        {"multistep.labels": ",".join(labels)},
    )
