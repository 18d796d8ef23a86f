"""The augment stage body: read the labeled dataset, add rows by each operation, write a new dataset with provenance."""

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoModel

from tasks import attack, predict, synonyms
from tasks import model as models
from tasks.augment import eda, pseudo
from tasks.augment.spec import AugmentSpec
from tasks.data import labeled
from tasks.data.labeled.spec import SPLITS
from tasks.data.labeled.stage import card_markdown
from tasks.errors import UserError
from tasks.tracking import DIGEST, StageRun, content_digest, log_metrics

ARTIFACT = "augmented"
PROVENANCE = [
    ("source_row", pa.string()),
    ("operation", pa.string()),
    ("params", pa.string()),
    ("teacher", pa.string()),
    ("confidence", pa.float64()),
    ("teacher_logits", pa.list_(pa.float64())),  # pseudo rows: log of the teachers' mean probabilities; else empty
]


def run(spec: AugmentSpec, data: str, teacher_uri: str | None, synonym_model: str | None, ctx: StageRun) -> str:
    """Augment the training split of `data`; returns `runs:/<run_id>/augmented`, a dataset the finetune stage reads like any other."""
    mlflow.set_tag("multistep.hardware", spec.hardware)  # what a work pool would place it on
    card = labeled.card(data)
    if card["task"] != "classification":
        raise UserError(
            f"augment works on classification data, and {data} holds {card['task']} rows: set labeled.task to classification or drop augment"
        )
    labels = card["labels"]
    splits = {s: labeled.load_rows(data, s) for s in SPLITS}
    original = [
        {
            **r,
            "source_row": r["origin"],
            "operation": "original",
            "params": "",
            "teacher": "",
            "confidence": None,
            "teacher_logits": None,
        }
        for r in splits["train"]
    ]
    added, report = [], {"parent": data, "operations": {}}

    if spec.eda:
        source = synonyms.source(spec.eda.synonyms, _loader(synonym_model))
        rows = eda.augment(splits["train"], spec.eda, source)
        added += rows
        report["operations"]["eda"] = {"rows": len(rows), "synonyms": source.name}
        log_metrics(ctx.run_id, {"eda_rows": len(rows)})
    if spec.model_driven and teacher_uri is None and not spec.unguarded:
        if spec.pseudo:  # fail now, before a teacher is trained, if the pool is unusable
            pseudo.read_pool(spec.pseudo, exclude={r["text"] for split in splits.values() for r in split})
        if spec.prompt_teacher:  # and if the prompt teacher's words or model do not fit
            from tasks.augment import prompt

            prompt.PromptTeacher(spec.prompt_teacher, labels, weights=False)
        print("augment: no teacher yet, so pseudo-labels and adversarial examples wait for a fine-tuned model")
    elif spec.model_driven:
        # with the prompt teacher's guard off, round 0 has no teacher: the prompt teacher labels alone, and nothing is attacked
        model, tok = predict.load(teacher_uri, labels, "augment.teacher") if teacher_uri else (None, None)
        if spec.pseudo:
            # never pseudo-label an evaluation row
            labeled_texts = {r["text"] for split in splits.values() for r in split}
            pool, counts = pseudo.read_pool(spec.pseudo, exclude=labeled_texts)
            # the round's teacher and the extra teachers, each refused unless it predicts exactly the data's labels
            alone = spec.prompt_teacher and spec.prompt_teacher.alone
            teachers = [] if alone else [(model, tok)]
            teachers += [predict.load(uri, labels, f"augment.teachers[{i}]") for i, uri in enumerate(spec.teachers)]
            named = [] if alone else [teacher_uri, *spec.teachers]
            texts, prompted = [r["text"] for r in pool], ()
            if spec.prompt_teacher:
                prompted = (_prompt_teacher(spec, labels, splits, texts, ctx),)
                named.append(f"prompt:{spec.prompt_teacher.model}")
            named = " + ".join(named)
            log_probs = pseudo.teach(teachers, texts, spec.max_length, also=prompted)
            rows, stats = pseudo.label(log_probs, pool, labels, spec.pseudo, named, len(splits["train"]))
            added += rows
            report["operations"]["pseudo"] = {"rows": len(rows), "teacher": named, **counts, **stats}
            if spec.pseudo.distill:  # the finetune stage reads it from the card: KD on the rows with teacher logits
                report["distill"] = spec.pseudo.distill.model_dump()
            log_metrics(
                ctx.run_id,
                {
                    "pseudo_rows": len(rows),
                    **counts,
                    "pseudo_mean_confidence": stats["pseudo_mean_confidence"],
                    "pseudo_capped_by_ratio": stats["pseudo_capped_by_ratio"],
                },
            )
            missing = [label for label, n in stats["pseudo_confident"].items() if n == 0]
            if missing and spec.pseudo.balance:
                print(
                    f"augment: the teacher gave no pool row the label {', '.join(missing)} with confidence ≥ {spec.pseudo.threshold}, and "
                    "balance keeps as many rows per label as the rarest has, so none were added: lower augment.pseudo.threshold or set augment.pseudo.balance false"
                )
        if spec.adversarial:
            source = synonyms.source(
                spec.adversarial.synonyms, lambda: (model, tok), setting="augment.adversarial.synonyms"
            )
            outcomes = attack.attack(model, tok, splits["train"], labels, spec.adversarial, source)
            rows = attack.adversarial_rows(outcomes, teacher_uri, spec.adversarial, labels)
            added += rows
            measured = attack.summary(outcomes)
            report["operations"]["adversarial"] = {
                "rows": len(rows),
                "teacher": teacher_uri,
                "synonyms": source.name,
                **measured,
            }
            log_metrics(ctx.run_id, {"adversarial_rows": len(rows), **{f"attack_{k}": v for k, v in measured.items()}})
            print(
                f"augment: attack flipped {measured['attack_success_rate']:.1%} of the {measured['attacked_rows']} attacked training rows the teacher got right"
            )

    if not added:
        # Round 0 of self-training has no teacher yet, and a teacher may find nothing to add: hand on the labeled data
        # itself, so that the fine-tune after it has the plain fine-tune's stage key and reuses it (a sweep's plain cell).
        print(f"augment: nothing to add to the {len(original):,} training rows, so the fine-tune reads {data} as it is")
        return data
    splits["train"] = original + added
    uri = _write(ctx, card, splits, report)
    print(f"augment: {len(original):,} training rows + {len(added):,} new ({_by_operation(added)}) → {uri}")
    return uri


def _prompt_teacher(spec: AugmentSpec, labels: list[str], splits: dict, texts: list[str], ctx: StageRun):
    """The prompt teacher's log probabilities for `texts`, calibrated on the gold training rows; its validation accuracy
    (calibrated and not) is logged, so a model that does not know the task shows before its labels are trusted."""
    from tasks.augment import prompt  # here: sklearn and a language model only when a prompt teacher is set

    teacher = prompt.PromptTeacher(spec.prompt_teacher, labels)
    gold = splits["train"]
    gold_scores = teacher.scores([r["text"] for r in gold], spec.max_length, desc="prompt teacher: gold rows")
    fitted = prompt.calibrator(gold_scores, [labels.index(r["label"]) for r in gold], spec.prompt_teacher.calibrate)
    if splits["validation"]:
        rows = splits["validation"]
        scores = teacher.scores([r["text"] for r in rows], spec.max_length, desc="prompt teacher: validation")
        truth = np.array([labels.index(r["label"]) for r in rows])
        measured = {
            "prompt_teacher_val_accuracy": fitted(scores),
            "prompt_teacher_val_accuracy_uncalibrated": prompt.calibrator(gold_scores, [], False)(scores),
        }
        measured = {k: float((v.argmax(axis=1) == truth).mean()) for k, v in measured.items()}
        log_metrics(ctx.run_id, measured)
        print(
            f"augment: {spec.prompt_teacher.model} answers {measured['prompt_teacher_val_accuracy']:.1%} of the validation rows "
            f"right ({measured['prompt_teacher_val_accuracy_uncalibrated']:.1%} uncalibrated)"
        )
    scores = teacher.scores(texts, spec.max_length, desc="prompt teacher: pool")
    return fitted(scores)


def _loader(uri: str | None):
    """Loads the model whose embeddings stand in for WordNet; only called when WordNet is missing."""
    if uri is None:
        return None
    return lambda: models.load(uri, auto=AutoModel)  # the bare encoder: only its input embeddings are read


def _by_operation(rows: list[dict]) -> str:
    counts = {}
    for r in rows:
        op = r["operation"].split(".")[0]
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{n:,} {op}" for op, n in counts.items()) or "none"


def _write(ctx: StageRun, card: dict, splits: dict[str, list[dict]], report: dict) -> str:
    """Parquet splits with the provenance columns, and the parent's card updated, logged as the stage's artifact."""
    schema = pa.schema([(c, pa.string()) for c in card["columns"]] + PROVENANCE)
    blank = {
        "source_row": "",
        "operation": "original",
        "params": "",
        "teacher": "",
        "confidence": None,
        "teacher_logits": None,
    }
    train_labels = {}
    for r in splits["train"]:
        train_labels[r["label"]] = train_labels.get(r["label"], 0) + 1
    new_card = {
        **card,
        "columns": card["columns"] + [c for c, _ in PROVENANCE],
        "splits": {
            **card["splits"],
            "train": {
                "rows": len(splits["train"]),
                "labels": {label: train_labels.get(label, 0) for label in card["labels"]},
            },
        },
        "augment": report,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name, rows in splits.items():
            rows = rows if name == "train" else [{**blank, **r, "source_row": r["origin"]} for r in rows]
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / f"{name}.parquet")
        new_card["digest"] = content_digest(out)
        (out / "card.json").write_text(json.dumps(new_card, indent=2, ensure_ascii=False))
        (out / "card.md").write_text(card_markdown(new_card) + _report_markdown(report))
        mlflow.log_artifacts(tmp, ARTIFACT)
    mlflow.set_tag(DIGEST, new_card["digest"])
    log_metrics(ctx.run_id, {"train_rows": len(splits["train"])})
    return f"runs:/{ctx.run_id}/{ARTIFACT}"


def _report_markdown(report: dict) -> str:
    lines = [
        "",
        "## Augmentation",
        "",
        f"From `{report['parent']}`.",
        "",
        "| operation | rows added | details |",
        "|---|---:|---|",
    ]
    if "distill" in report:
        lines[5:5] = [f"Pseudo-labeled rows train with soft labels: {report['distill']}.", ""]
    for op, info in report["operations"].items():
        details = ", ".join(f"{k} {v}" for k, v in info.items() if k != "rows")
        lines.append(f"| {op} | {info['rows']:,} | {details} |")
    return "\n".join(lines) + "\n"
