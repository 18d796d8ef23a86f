"""The prepare stage: sources → validated rows → cleaned, deduplicated, split → tokenized, packed → artifacts + card."""

import json
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import model as models
from tasks import tokenizer as tokenizers
from tasks.data import clean, decontaminate, sources
from tasks.data.prepared import SPLITS
from tasks.data.spec import PrepareSpec
from tasks.errors import UserError
from tasks.storage import dataset_source
from tasks.tracking import DIGEST, StageRun, content_digest, log_metrics


def run(spec: PrepareSpec, tokenizer_from: str | None, ctx: StageRun) -> str:
    """Prepare the dataset and log it to the stage run; returns `runs:/<run_id>/dataset`."""
    rows = sources.read_sources(spec)
    rows, filters = clean.clean(rows, spec.clean)
    splits = clean.split(rows, spec.split)
    contamination = _contamination(spec, splits)
    if spec.clean.decontaminate:
        splits["train"] = [r for r, hit in zip(splits["train"], contamination.pop("hits")) if not hit]
    contamination.pop("hits", None)
    texts = {name: [r["text"] for r in splits[name]] for name in SPLITS}
    tokenizer = _tokenizer(spec, tokenizer_from, texts["train"])
    blocks = {}
    tokens = {}
    for name in SPLITS:
        ids = tokenizers.encode(tokenizer, texts[name])
        # a tokenizer trained here always covers its training text
        if name == "train" and spec.tokenizer.kind == "model":
            tokenizers.check_coverage(tokenizer, texts[name], ids, tokenizer_from)
        tokens[name] = sum(map(len, ids)) + len(ids)  # + one eos per row
        blocks[name] = tokenizers.pack(ids, tokenizer.eos_token_id, spec.block_size)
        wanted = spec.split.validation if name == "validation" else spec.split.test if name == "test" else 1
        if wanted and len(blocks[name]) == 0:
            raise UserError(
                f"The {name} split has {tokens[name]} tokens, fewer than one block of data.block_size={spec.block_size}: "
                f"lower data.block_size, raise data.split.{name if name != 'train' else 'validation'}, or add data."
            )

    card = {
        "sources": {uri: ctx.digests[name] for name, uri in ctx.inputs.items()},
        "filters": filters,
        "splits": {n: {"rows": len(splits[n]), "tokens": tokens[n], "blocks": int(len(blocks[n]))} for n in SPLITS},
        "tokenizer": {"kind": spec.tokenizer.kind, "vocab_size": len(tokenizer), "from": tokenizer_from},
        "block_size": spec.block_size,
        "contamination": contamination,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tokenizer.save_pretrained(out / "tokenizer")
        for name in SPLITS:
            _write_split(out, name, splits[name], blocks[name])
        card["digest"] = content_digest(out)
        (out / "card.json").write_text(json.dumps(card, indent=2))
        (out / "card.md").write_text(card_markdown(card))
        mlflow.log_artifacts(tmp, "dataset")
    _log_lineage(ctx, splits, card)
    uri = f"runs:/{ctx.run_id}/dataset"
    print(f"prepare: {card['splits']['train']['tokens']:,} training tokens in {len(blocks['train']):,} blocks → {uri}")
    return uri


def _tokenizer(spec: PrepareSpec, tokenizer_from: str | None, train_texts: list[str]):
    if spec.tokenizer.kind == "model":
        if not tokenizer_from:
            raise UserError(
                "data.tokenizer.kind is `model` but no model to take it from: set pretrain.init, or use data.tokenizer.kind=bpe."
            )
        where = models.locate(tokenizer_from)
        models.check_weights(where)  # pretrain would refuse pickle weights after this stage: say so now
        return models.load_tokenizer(
            where.tokenizer, gguf_file=where.gguf_file, fix=", or set data.tokenizer.kind to bpe or char"
        )
    return tokenizers.train_tokenizer(train_texts, spec.tokenizer)


def _contamination(spec: PrepareSpec, splits: dict[str, list[dict]]) -> dict:
    """Train/eval overlap per eval split, the rows dropped, and (under `hits`) which training rows overlap either."""
    train = [r["text"] for r in splits["train"]]
    report, hits = {"ngram": spec.clean.contamination_ngram}, [False] * len(train)
    for name in ("validation", "test"):
        report[name], flags = decontaminate.overlap(
            train, [r["text"] for r in splits[name]], spec.clean.contamination_ngram
        )
        hits = [a or b for a, b in zip(hits, flags)]
    report["dropped"] = sum(hits) if spec.clean.decontaminate else 0
    report["hits"] = hits
    return report


def _write_split(out: Path, name: str, rows: list[dict], blocks: np.ndarray) -> None:
    (out / "text").mkdir(exist_ok=True)
    (out / "blocks").mkdir(exist_ok=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=pa.schema([("text", pa.string()), ("origin", pa.string())])),
        out / "text" / f"{name}.parquet",
    )
    flat = pa.array(blocks.reshape(-1).astype(np.int32), type=pa.int32())
    column = (
        pa.FixedSizeListArray.from_arrays(flat, blocks.shape[1])
        if blocks.size
        else pa.array([], pa.list_(pa.int32(), blocks.shape[1]))
    )
    pq.write_table(pa.table({"input_ids": column}), out / "blocks" / f"{name}.parquet")


def _log_lineage(ctx: StageRun, splits: dict[str, list[dict]], card: dict) -> None:
    """Datasets as MLflow inputs (the lineage view), the digest as a tag, counts as metrics."""
    for name in SPLITS:
        frame = pd.DataFrame(splits[name], columns=["text", "origin"])
        source = dataset_source(f"dataset/text/{name}.parquet")  # file://, s3:// or mlflow-artifacts:/
        with warnings.catch_warnings():  # file:// matches two equivalent source resolvers; either is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, name=f"{ctx.stage}-{name}")
        mlflow.log_input(dataset, context=name)
    mlflow.set_tag(DIGEST, card["digest"])
    metrics = {f"{n}_{k}": v for n, s in card["splits"].items() for k, v in s.items()}
    metrics.update({"rows_in": card["filters"]["rows_in"], "rows_out": card["filters"]["rows_out"]})
    metrics.update({f"removed_{k}": v for k, v in card["filters"]["removed"].items()})
    log_metrics(ctx.run_id, metrics)


def card_markdown(card: dict) -> str:
    """The data card as a Markdown table, for the MLflow and Prefect UIs."""
    lines = ["# Data card", "", "| split | rows | tokens | blocks |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {s['rows']:,} | {s['tokens']:,} | {s['blocks']:,} |" for n, s in card["splits"].items()]
    f = card["filters"]
    lines += ["", f"Rows in: {f['rows_in']:,}; out: {f['rows_out']:,}.", "", "| filter | rows removed |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in f["removed"].items()]
    lines += [
        "",
        f"Tokenizer: {card['tokenizer']['kind']}, {card['tokenizer']['vocab_size']:,} tokens; block size {card['block_size']}.",
        "",
    ]
    c = card["contamination"]
    lines += [
        f"Train/eval overlap ({c['ngram']}-grams; {c['dropped']:,} training rows dropped):",
        "",
        "| eval split | train rows sharing an n-gram | eval rows sharing an n-gram | eval rows |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {c[n]['train_rows_ngram']:,} | {c[n]['eval_rows_ngram']:,} | {c[n]['eval_rows']:,} |"
        for n in ("validation", "test")
    ] + [""]
    lines += ["| source | digest |", "|---|---|"] + [f"| {s} | {d} |" for s, d in card["sources"].items()]
    return "\n".join(lines) + "\n"
