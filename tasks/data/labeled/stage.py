"""The labeled-data stage body: read and check everything, then write Parquet splits and a card, and log lineage."""

import json
import tempfile
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.data.labeled import read, rows
from tasks.data.labeled.spec import SPLITS, LabeledSpec
from tasks.storage import dataset_source
from tasks.tracking import DIGEST, StageRun, content_digest, log_metrics

ARTIFACT = "labeled"
# Extractive QA: the gold answers of a question, as SQuAD writes them.
ANSWERS = pa.list_(pa.struct([("text", pa.string()), ("answer_start", pa.int64())]))


def run(spec: LabeledSpec, ctx: StageRun) -> str:
    """Prepare the labeled dataset and log it to the stage run; returns `runs:/<run_id>/labeled`."""
    raw = read.read_splits(spec)  # every source read and checked before anything is written
    splits, counts = rows.build(spec, raw)
    columns = _columns(spec)
    card = {
        "task": spec.task,
        "columns": columns,
        "sources": {uri: ctx.digests[name] for name, uri in ctx.inputs.items()},
        **counts,
        "splits": {n: _split_card(spec, splits[n]) for n in SPLITS},
    }
    if spec.task == "classification":
        card["labels"] = rows.label_order(r["label"] for r in splits["train"])
    elif spec.task in ("sft", "math"):
        card["prompt_template"] = spec.prompt_template
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        schema = pa.schema([(c, ANSWERS if c == "answers" else pa.string()) for c in columns])
        for name in SPLITS:
            pq.write_table(pa.Table.from_pylist(splits[name], schema=schema), out / f"{name}.parquet")
        card["digest"] = content_digest(out)
        (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False))
        (out / "card.md").write_text(card_markdown(card))
        mlflow.log_artifacts(tmp, ARTIFACT)
    _log_lineage(ctx, spec, splits, card)
    uri = f"runs:/{ctx.run_id}/{ARTIFACT}"
    sizes = ", ".join(f"{card['splits'][n]['rows']:,} {n}" for n in SPLITS)
    print(f"labeled: {spec.task} rows: {sizes} → {uri}")
    return uri


def _columns(spec: LabeledSpec) -> list[str]:
    if spec.task in ("sft", "math"):
        return ["prompt", "response", "origin"]
    if spec.task == "extractive-qa":
        return ["question", "context", "answers", "title", "origin"]
    return ["text", *(["text_pair"] if spec.text_pair_column else []), "label", "origin"]


def _split_card(spec: LabeledSpec, split: list[dict]) -> dict:
    out = {"rows": len(split)}
    if spec.task == "classification":
        counts = {}
        for r in split:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
        out["labels"] = {label: counts[label] for label in rows.label_order(counts)}
    if spec.task == "extractive-qa":
        out["articles"] = len({r["title"] for r in split if r["title"]})
        out["contexts"] = len({r["context"] for r in split})
    return out


def _log_lineage(ctx: StageRun, spec: LabeledSpec, splits: dict[str, list[dict]], card: dict) -> None:
    """Splits as MLflow inputs (the lineage view), the digest as a tag, counts as metrics."""
    for name in SPLITS:
        frame = pd.DataFrame(splits[name], columns=card["columns"])
        source = dataset_source(f"{ARTIFACT}/{name}.parquet")  # file://, s3:// or mlflow-artifacts:/
        targets = {"classification": "label", "sft": "response", "math": "response", "extractive-qa": "answers"}[
            spec.task
        ]
        with warnings.catch_warnings():  # file:// matches two equivalent source resolvers; either is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, targets=targets, name=f"{ctx.stage}-{name}")
        mlflow.log_input(dataset, context=name)
    mlflow.set_tag(DIGEST, card["digest"])
    metrics = {f"{n}_rows": s["rows"] for n, s in card["splits"].items()}
    metrics.update({f"{n}_rows_read": v for n, v in card["rows_read"].items()})
    metrics.update({f"removed_{why}": sum(per.values()) for why, per in card["removed"].items()})
    for n in ("validation", "test"):
        metrics.update({f"contamination_{n}_{k}": v for k, v in card["contamination"][n].items()})
    if card.get("groups"):
        metrics.update(split_groups=card["groups"]["groups"], split_largest_group=card["groups"]["largest"])
    if "labels" in card:
        metrics["num_labels"] = len(card["labels"])
    if "misaligned_answers" in card:
        metrics["misaligned_answers"] = sum(card["misaligned_answers"].values())
    log_metrics(ctx.run_id, metrics)


def qa_markdown(card: dict) -> list[str]:
    """Extractive QA: answers dropped because their answer_start does not point at their text, articles per split."""
    removed, splits = card["removed"], card["splits"]
    return [
        "| split | articles | contexts | answers whose answer_start misses their text (dropped) | questions left without an answer (dropped) | questions without answers (dropped) |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {splits[n]['articles']:,} | {splits[n]['contexts']:,} | {card['misaligned_answers'][n]:,} | "
            f"{removed['misaligned_answer'][n]:,} | {removed['no_answer'][n]:,} |"
            for n in SPLITS
        ),
    ]


def groups_markdown(g: dict, task: str) -> str:
    """How validation and test were drawn from train: by whole groups of near duplicates, and how large those are."""
    kept, qa, m = (
        g["kept_in_train"],
        task == "extractive-qa",
        g.get("contained_min_words", g["ngram"]),
    )  # older cards: none
    # a row of m to n-1 words that runs inside another joins it; m of n or more turns that off
    size = f"{m} to {g['ngram'] - 1}" if m < g["ngram"] - 1 else f"{m}"
    inside = f", or a row of {size} words running word for word inside another," if m < g["ngram"] else ""
    return (
        f"Drawn splits take whole groups: training rows equal after lowercasing and dropping punctuation, or sharing a "
        f"{g['ngram']}-gram of words{', or an article,' if qa else ''}{inside} are one group, placed by a hash of its smallest "
        f"{'title (else context)' if qa else 'text'} with split.salt, so that no drawn row overlaps a training row. {g['rows']:,} rows formed "
        f"{g['groups']:,} groups, {g['multi_row_groups']:,} of them with more than one row "
        f"({g['rows_in_multi_row_groups']:,} rows); the largest has {g['largest']:,} rows. Groups of more than "
        f"{kept['over_rows']:,} rows (the smallest drawn split's share) stay in train: {kept['groups']:,} did "
        f"({kept['rows']:,} rows)."
    )


def card_markdown(card: dict) -> str:
    """The data card as Markdown tables, for the MLflow and Prefect UIs."""
    removed = card["removed"]
    lines = [
        f"# Labeled data card ({card['task']})",
        "",
        "| split | from | rows read | empty text | contaminated | over max rows | rows |",
    ]
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    lines += [
        f"| {n} | {card['split_from'][n]} | {card['rows_read'][n]:,} | {removed['empty_text'][n]:,} | "
        f"{removed['contaminated'][n]:,} | {removed['over_max_rows'][n]:,} | {card['splits'][n]['rows']:,} |"
        for n in SPLITS
    ]
    found = card["contamination"]
    inside = "contained_min_words" in found  # a card written before containment (an augment stage's parent) lacks it
    lines += [
        "",
        f"Train/eval overlap ({found['ngram']}-gram of lowercased words; training rows before max_train_rows):",
        "",
        "| eval split | train rows equal to an eval row | train rows sharing an n-gram | eval rows equal to a train row | eval rows sharing an n-gram |"
        + (
            f" eval rows under {found['ngram']} words inside a train row (of them under {found['contained_min_words']} words) |"
            if inside
            else ""
        ),
        "|---|---:|---:|---:|---:|" + ("---:|" if inside else ""),
    ]
    for n in ("validation", "test"):
        c = found[n]
        lines.append(
            f"| {n} | {c['train_rows_exact']:,} | {c['train_rows_ngram']:,} | {c['eval_rows_exact']:,} of {c['eval_rows']:,} | {c['eval_rows_ngram']:,} of {c['eval_rows']:,} |"
            + (
                f" {c['eval_rows_inside']:,} of {c['eval_rows']:,} ({c['eval_rows_inside_under_min_words']:,}) |"
                if inside
                else ""
            )
        )
    if card.get("groups"):
        lines += ["", groups_markdown(card["groups"], card["task"])]
    if "labels" in card:
        lines += ["", "| label | " + " | ".join(SPLITS) + " |", "|---|" + "---:|" * len(SPLITS)]
        for label in card["labels"]:
            lines.append(
                f"| {label} | " + " | ".join(f"{card['splits'][n]['labels'].get(label, 0):,}" for n in SPLITS) + " |"
            )
    elif "prompt_template" in card:
        lines += ["", f"Prompt template: `{card['prompt_template']}`"]
    if "misaligned_answers" in card:
        lines += ["", *qa_markdown(card)]
    if "no_final_answer" in removed:
        lines += [
            "",
            "Solutions without a `#### <number>` final answer, dropped: "
            + ", ".join(f"{removed['no_final_answer'][n]:,} {n}" for n in SPLITS),
        ]
    lines += ["", "| source | digest |", "|---|---|"] + [f"| {s} | {d} |" for s, d in card["sources"].items()]
    return "\n".join(lines) + "\n"
