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
from tasks import objectives
from tasks import tokenizer as tokenizers
from tasks.data import clean, decontaminate, sources
from tasks.data.prepared import SPLITS
from tasks.data.spec import PrepareSpec
from tasks.errors import UserError
from tasks.storage import dataset_source
from tasks.tracking import DIGEST, StageRun, content_digest, log_metrics


def run(spec: PrepareSpec, tokenizer_from: str | None, ctx: StageRun, objective: str | None = None) -> str:
    """Prepare the dataset and log it to the stage run; returns `runs:/<run_id>/dataset`.

    `objective` (the pretrain stage's) lets a model that cannot be continued that way fail before the corpus is read."""
    # A model's tokenizer is loaded and checked first; one trained here needs the training split.
    tokenizer = _model_tokenizer(spec, tokenizer_from, objective) if spec.tokenizer.kind == "model" else None
    rows = sources.read_sources(spec)
    rows, filters = clean.clean(rows, spec.clean)
    splits = clean.split(rows, spec.split)
    contamination = _contamination(spec, splits)
    if spec.clean.decontaminate:
        splits["train"] = [r for r, hit in zip(splits["train"], contamination.pop("hits")) if not hit]
    contamination.pop("hits", None)
    texts = {name: [r["text"] for r in splits[name]] for name in SPLITS}
    if tokenizer is None:
        tokenizer = tokenizers.train_tokenizer(texts["train"], spec.tokenizer)
    # Each block is one input as the model's own tokenizer makes it, framed by its template: BERT met [CLS] … [SEP]
    # in pretraining and meets it again in fine-tuning, where the classifier reads position 0, always [CLS]; a block cut
    # from the middle of the stream would teach it inputs it never sees (RoBERTa's FULL-SENTENCES packing frames blocks
    # alike). So the text takes block_size minus the frame, and each document in it ends in the separator: eos, or BERT's
    # [SEP]. Decoders get <s> first when their template adds it (Llama 2), nothing for GPT-2, SmolLM2 and trained tokenizers.
    sep, (prefix, suffix) = tokenizers.separator(tokenizer), tokenizers.frame(tokenizer)
    blocks = {}
    tokens = {}
    for name in SPLITS:
        ids = tokenizers.encode(tokenizer, texts[name])
        # a tokenizer trained here always covers its training text
        if name == "train" and spec.tokenizer.kind == "model":
            tokenizers.check_coverage(tokenizer, texts[name], ids, tokenizer_from)
        tokens[name] = sum(map(len, ids)) + len(ids)  # + one separator per row
        blocks[name] = tokenizers.pack(ids, sep, spec.block_size, prefix, suffix)
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
        "tokenizer": {
            "kind": spec.tokenizer.kind,
            "vocab_size": len(tokenizer),
            "from": tokenizer_from,
            "separator": tokenizer.convert_ids_to_tokens(sep),
            "frame": [tokenizer.convert_ids_to_tokens(prefix), tokenizer.convert_ids_to_tokens(suffix)],
        },
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


def _model_tokenizer(spec: PrepareSpec, tokenizer_from: str | None, objective: str | None = None):
    """The tokenizer of the model data.tokenizer.kind `model` names, checked against the blocks and the objective."""
    if not tokenizer_from:
        raise UserError(
            "data.tokenizer.kind is `model` but no model to take it from: set pretrain.init, or use data.tokenizer.kind=bpe."
        )
    where = models.locate(tokenizer_from)
    models.check_weights(where)  # pretrain would refuse pickle weights after this stage: say so now
    fix = ", or set data.tokenizer.kind to bpe or char"
    tokenizer = models.load_tokenizer(where.tokenizer, gguf_file=where.gguf_file, fix=fix)
    if tokenizers.separator(tokenizer) is None:
        raise UserError(
            f"The tokenizer of {tokenizer_from} has neither an eos nor a sep token, so packed documents could not be told "
            f"apart: use a model whose tokenizer has one{fix} to train one that has."
        )
    framing = sum(map(len, tokenizers.frame(tokenizer)))
    if spec.block_size <= framing:
        raise UserError(
            f"data.block_size ({spec.block_size}) leaves no room for text: the tokenizer of {tokenizer_from} frames every "
            f"block with {framing} special tokens; raise data.block_size."
        )
    if objective:
        objectives.check_init(objective, tokenizer_from, where, tokenizer)
    return tokenizer


def _contamination(spec: PrepareSpec, splits: dict[str, list[dict]]) -> dict:
    """Train/eval overlap per eval split, the rows dropped, and (under `hits`) which training rows overlap either."""
    train = [r["text"] for r in splits["train"]]
    report, hits = {"ngram": spec.clean.contamination_ngram}, [False] * len(train)
    evaluations = {name: [r["text"] for r in splits[name]] for name in ("validation", "test")}
    found = decontaminate.overlaps(train, evaluations, spec.clean.contamination_ngram)  # the train side read once
    for name in evaluations:
        report[name], flags = found[name]
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
    t = card["tokenizer"]
    framed = f"framed as {' '.join([*t['frame'][0], '…', *t['frame'][1]])}" if any(t["frame"]) else "not framed"
    lines += [
        "",
        f"Tokenizer: {t['kind']}, {t['vocab_size']:,} tokens; block size {card['block_size']}, blocks {framed}; "
        f"each document ends in {t['separator']}.",
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
