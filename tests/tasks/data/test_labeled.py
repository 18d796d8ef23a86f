"""The labeled-data stage: every format, splits drawn or given, subsets, every bad form, and a full run round trip."""

import gzip
import json
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from tasks.data import labeled
from tasks.data.labeled import read, rows
from tasks.data.labeled import stage as body
from tasks.data.labeled.spec import LabeledSpec
from tasks.errors import UserError
from tasks.tracking import DIGEST, stage_run

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"


def write(path: Path, content) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def jsonl(path: Path, *objects) -> str:
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


def splits(**kw) -> dict[str, list[dict]]:
    """The stored splits for a spec, without MLflow."""
    spec = LabeledSpec(**kw)
    return rows.build(spec, read.read_splits(spec))[0]


def built(**kw) -> tuple[dict, dict]:
    spec = LabeledSpec(**kw)
    return rows.build(spec, read.read_splits(spec))


def texts(split):
    return [r["text"] for r in split]


def stage(spec: LabeledSpec) -> str:
    """Run the stage body in its own MLflow run, as the flow does; returns its URI."""
    inputs, digests = read.source_names(spec), read.source_digests(spec)
    with stage_run("labeled", spec, inputs, code="tasks.data.labeled.stage", experiment="test", digests=digests) as ctx:
        if not ctx.cached:
            ctx.output = body.run(spec, ctx)
    return ctx.output


SST = "sentence\tlabel\nit 's a charming  journey . \t1\nunflinchingly bleak . \t0\n"


# ---- formats -----------------------------------------------------------------------------------------


def test_tsv_like_sst2_with_given_validation(tmp_path):
    train = write(tmp_path / "train.tsv", SST)
    dev = write(tmp_path / "dev.tsv", "sentence\tlabel\na gorgeous film . \t1\n")
    out = splits(train=[train], validation=[dev], text_column="sentence", split={"validation": 0.5, "test": 0})
    # the validation fraction is ignored: its rows are given
    assert out["train"] == [
        {"text": "it 's a charming journey .", "label": "1", "origin": f"{train}:2"},
        {"text": "unflinchingly bleak .", "label": "0", "origin": f"{train}:3"},
    ]
    assert out["validation"] == [{"text": "a gorgeous film .", "label": "1", "origin": f"{dev}:2"}]
    assert out["test"] == []


TREC = "DESC:manner How did serfdom develop ?\nLOC:city What is the capital of Fran\xe7e ?\n\nNUM:date When was the wall built ?\nLOC:country Which country has pyramids ?\n"


def test_label_prefixed_latin1_with_coarse_labels(tmp_path):
    f = write(tmp_path / "train_5500.label", TREC.encode("latin-1"))
    with pytest.raises(
        UserError, match=rf"{f}:2: not valid UTF-8 \(byte 0xe7\); set labeled.encoding to the file's encoding"
    ):
        splits(train=[f], format="label-prefixed")
    out = splits(
        train=[f], format="label-prefixed", encoding="latin-1", label_before=":", split={"validation": 0, "test": 0}
    )
    assert [(r["label"], r["origin"]) for r in out["train"]] == [
        ("DESC", f"{f}:1"),
        ("LOC", f"{f}:2"),
        ("NUM", f"{f}:4"),
        ("LOC", f"{f}:5"),
    ]
    assert out["train"][1]["text"] == "What is the capital of Fran\xe7e ?"
    fine = splits(train=[f], format="label-prefixed", encoding="latin-1", split={"validation": 0, "test": 0})
    assert [r["label"] for r in fine["train"]] == ["DESC:manner", "LOC:city", "NUM:date", "LOC:country"]


@pytest.mark.parametrize(
    "name, fmt", [("train.tsv", "auto"), ("train.label", "label-prefixed"), ("train.label.gz", "label-prefixed")]
)
def test_binary_file_is_refused_as_binary_even_with_latin1(tmp_path, name, fmt):
    binary = b"PK\x03\x04\x14\x00\x00\x00" + bytes(range(256)) * 8  # a zip archive's start, then anything
    f = write(tmp_path / name, gzip.compress(binary) if name.endswith(".gz") else binary)
    with pytest.raises(
        UserError,
        match=rf"^{f}: a binary file, not text \(a NUL byte at offset 5\); no labeled.encoding reads it as text, "
        r"so convert it to text or remove it from labeled.train, labeled.validation or labeled.test$",
    ):
        splits(train=[f], format=fmt, encoding="latin-1")


def test_parallel_gz_files_become_sft_prompts(tmp_path):
    de = write(tmp_path / "train.de.gz", gzip.compress("Zwei Männer .\nEin Hund läuft .\n".encode()))
    en = write(tmp_path / "train.en.gz", gzip.compress(b"Two men .\nA dog runs .\n"))
    out = splits(
        task="sft",
        train=[de, en],
        format="parallel",
        prompt_template="Translate German to English: {prompt}",
        split={"validation": 0, "test": 0},
    )
    assert out["train"] == [
        {"prompt": "Translate German to English: Zwei Männer .", "response": "Two men .", "origin": f"{de}:1"},
        {"prompt": "Translate German to English: Ein Hund läuft .", "response": "A dog runs .", "origin": f"{de}:2"},
    ]


def test_jsonl_with_a_text_pair_and_integer_labels(tmp_path):
    f = jsonl(
        tmp_path / "nli.jsonl",
        {"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0},
        {"premise": "A dog runs.", "hypothesis": "A cat sits.", "label": 2},
        {"premise": "Kids play.", "hypothesis": "Kids are outside.", "label": 10},
    )
    spec = dict(train=[f], text_column="premise", text_pair_column="hypothesis", split={"validation": 0, "test": 0})
    out = splits(**spec)
    assert out["train"][0] == {"text": "A man sleeps.", "text_pair": "A man rests.", "label": "0", "origin": f"{f}:1"}
    assert rows.label_order(r["label"] for r in out["train"]) == ["0", "2", "10"]  # by value, not "10" < "2"


def test_parquet_and_save_to_disk_folders(tmp_path):
    import datasets

    table = {"body": ["good", "bad", "fine"], "y": ["pos", "neg", "pos"]}
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    datasets.Dataset.from_dict(table).save_to_disk(tmp_path / "ds")
    for src in (tmp_path / "t.parquet", tmp_path / "ds"):
        out = splits(train=[str(src)], text_column="body", label_column="y", split={"validation": 0, "test": 0})
        assert [(r["text"], r["label"]) for r in out["train"]] == [("good", "pos"), ("bad", "neg"), ("fine", "pos")]
    assert out["train"][0]["origin"] == f"{tmp_path}/ds#0"


def test_normalize_drops_rows_left_empty_and_counts_them(tmp_path):
    f = jsonl(
        tmp_path / "a.jsonl",
        {"text": "caf\u0065\u0301  ok", "label": "a"},
        {"text": " \u200b ", "label": "b"},
        {"text": "x", "label": "b"},
    )
    out, counts = built(train=[f], split={"validation": 0, "test": 0})
    assert texts(out["train"]) == ["café ok", "x"]
    assert counts["removed"]["empty_text"] == {"train": 1, "validation": 0, "test": 0}
    assert counts["rows_read"]["train"] == 3


# ---- splits and subsets ------------------------------------------------------------------------------


def many(tmp_path, n=400, name="a.jsonl", reverse=False) -> str:
    objects = [{"text": f"sentence number {i}", "label": "ab"[i % 2]} for i in range(n)]
    return jsonl(tmp_path / name, *(objects[::-1] if reverse else objects))


def test_validation_drawn_by_hash_is_stable_disjoint_and_keeps_duplicates_together(tmp_path):
    f = many(tmp_path)
    dup = jsonl(tmp_path / "dup.jsonl", *[{"text": f"sentence number {i}", "label": "ab"[i % 2]} for i in range(400)])
    spec = dict(split={"validation": 0.2, "test": 0.1, "salt": "s"})
    first, counts = built(train=[f], **spec)
    sizes = {n: len(v) for n, v in first.items()}
    assert sum(sizes.values()) == 400 and 50 < sizes["validation"] < 110 and 20 < sizes["test"] < 70
    assert counts["split_from"]["validation"] == "drawn from train by content hash, near duplicates together"
    assert splits(train=[f], **spec) == first
    assert not set(texts(first["train"])) & set(texts(first["validation"]) + texts(first["test"]))
    both = splits(train=[f, dup], **spec)  # each text twice: both copies land in the same split
    assert sorted(texts(both["validation"])) == sorted(texts(first["validation"]) * 2)
    other = splits(train=[f], split={"validation": 0.2, "test": 0.1, "salt": "t"})
    assert texts(other["validation"]) != texts(first["validation"])


def test_given_test_split_with_drawn_validation(tmp_path):
    f = many(tmp_path)
    t = jsonl(tmp_path / "test.jsonl", {"text": "held out", "label": "a"})
    out, counts = built(train=[f], test=[t], split={"validation": 0.25, "test": 0.5})
    assert texts(out["test"]) == ["held out"]
    assert len(out["train"]) + len(out["validation"]) == 400 and 60 < len(out["validation"]) < 140  # test's 0.5 ignored
    assert counts["split_from"] == {
        "train": "given",
        "validation": "drawn from train by content hash, near duplicates together",
        "test": "given",
    }


def test_max_rows_subset_is_deterministic_unbiased_by_file_order_and_counted(tmp_path):
    f, g = many(tmp_path), many(tmp_path, name="reversed.jsonl", reverse=True)
    spec = dict(max_train_rows=50, max_eval_rows=10, split={"validation": 0.2, "test": 0.1})
    out, counts = built(train=[f], **spec)
    assert {n: len(v) for n, v in out.items()} == {"train": 50, "validation": 10, "test": 10}
    assert splits(train=[f], **spec) == out
    assert sorted(texts(splits(train=[g], **spec)["train"])) == sorted(texts(out["train"]))
    numbers = [int(t.split()[-1]) for t in texts(out["train"])]
    assert numbers == sorted(numbers) and numbers[-1] > 300  # kept in file order, drawn from the whole file
    assert counts["removed"]["over_max_rows"]["train"] == len(splits(train=[f], split=spec["split"])["train"]) - 50


# ---- bad forms -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, kw, message",
    [
        ("sentence\tlabel\nhi\t1\n", {}, r":1: no column 'text' \(found: sentence, label\); set labeled.text_column"),
        ("text\tsentiment\nhi\t1\n", {}, r":1: no column 'label' \(found: text, sentiment\); set labeled.label_column"),
        (
            "text\tlabel\nhi\t1\n",
            {"text_pair_column": "hypothesis"},
            r":1: no column 'hypothesis' \(found: text, label\); set labeled.text_pair_column",
        ),
        (
            "prompt\tanswer\nhi\tho\n",
            {"task": "sft"},
            r":1: no column 'response' \(found: prompt, answer\); set labeled.response_column",
        ),
        (
            "question\tresponse\nhi\tho\n",
            {"task": "sft"},
            r":1: no column 'prompt' \(found: question, response\); set labeled.prompt_column",
        ),
    ],
)
def test_missing_columns(tmp_path, content, kw, message):
    f = write(tmp_path / "a.tsv", content)
    with pytest.raises(UserError, match=f"{f}{message}"):
        splits(train=[f], **kw)


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            [1, "pos"],
            r":2: the label 'pos' is a string but the first label \(at .*a.jsonl:1\) is an integer; write every label as the same type",
        ),
        ([1, True], r":2: the label True is a boolean but the first label \(at .*a.jsonl:1\) is an integer"),
        (["pos", None], r":2: the label 'label' is null; give every row a label"),
        (["pos", " "], r":2: the label ' ' is empty; give every row a label"),
        (["pos", 0.5], r":2: the label 0.5 is a float, and labels must be strings or integers"),
        (["pos", ["a", "b"]], r":2: the label \['a', 'b'\] is a list, and labels must be strings or integers"),
    ],
)
def test_bad_labels(tmp_path, labels, message):
    f = jsonl(tmp_path / "a.jsonl", *[{"text": f"t{i}", "label": v} for i, v in enumerate(labels)])
    with pytest.raises(UserError, match=f"{f}{message}"):
        splits(train=[f])


def test_mixed_label_types_across_splits_name_the_first_odd_row(tmp_path):
    f = jsonl(tmp_path / "train.jsonl", {"text": "a", "label": 0}, {"text": "b", "label": 1})
    v = jsonl(tmp_path / "val.jsonl", {"text": "c", "label": 1}, {"text": "d", "label": "1"})
    with pytest.raises(
        UserError, match=rf"{v}:2: the label '1' is a string but the first label \(at {f}:1\) is an integer"
    ):
        splits(train=[f], validation=[v])


def test_label_before_that_leaves_nothing(tmp_path):
    f = write(tmp_path / "a.label", "A:x one\n:y two\n")
    with pytest.raises(UserError, match=rf"{f}:2: the label ':y' is empty before labeled.label_before ':'"):
        splits(train=[f], format="label-prefixed", label_before=":")


def test_text_that_is_not_a_string(tmp_path):
    f = jsonl(tmp_path / "a.jsonl", {"text": "ok", "label": "a"}, {"text": 5, "label": "b"})
    with pytest.raises(
        UserError, match=rf"{f}:2: 'text' is int, not a string; fix the value or set labeled.text_column"
    ):
        splits(train=[f])


def test_labels_that_training_never_saw(tmp_path):
    f = jsonl(tmp_path / "train.jsonl", {"text": "a", "label": "pos"}, {"text": "b", "label": "neg"})
    v = jsonl(
        tmp_path / "val.jsonl",
        {"text": "c", "label": "meh"},
        {"text": "d", "label": "pos"},
        {"text": "e", "label": "huh"},
    )
    with pytest.raises(
        UserError,
        match=r"The validation split has labels that training never saw \(huh, meh\); fix the data, or add training rows",
    ):
        splits(train=[f], validation=[v], split={"test": 0})


def test_one_label_in_training(tmp_path):
    f = jsonl(tmp_path / "a.jsonl", {"text": "a", "label": "pos"}, {"text": "b", "label": "pos"})
    with pytest.raises(
        UserError, match=r"The training split has only one label \('pos'\) and a classifier needs at least two"
    ):
        splits(train=[f], split={"validation": 0, "test": 0})


def test_empty_splits(tmp_path):
    f = jsonl(tmp_path / "a.jsonl", {"text": "a", "label": "x"}, {"text": "b", "label": "y"})
    blank = jsonl(tmp_path / "blank.jsonl", {"text": "  ", "label": "x"})
    with pytest.raises(UserError, match=r"labeled.validation: all 1 rows have an empty text after normalising"):
        splits(train=[f], validation=[blank])
    header = write(tmp_path / "header.tsv", "text\tlabel\n")
    with pytest.raises(UserError, match=f"{header}: produced no rows; check the file, or remove it from labeled.test"):
        splits(train=[f], test=[header])
    with pytest.raises(UserError, match="The validation split came out empty"):
        splits(train=[f], split={"validation": 0.01, "test": 0})


def test_label_prefixed_line_without_text(tmp_path):
    f = write(tmp_path / "a.label", "LOC:city Where is it ?\nNUM:date   \n")
    with pytest.raises(
        UserError, match=rf"{f}:2: the label 'NUM:date' has no text after it; write `LABEL text` on each line"
    ):
        splits(train=[f], format="label-prefixed")


def test_parallel_files_of_different_lengths_and_folders(tmp_path):
    de = write(tmp_path / "d" / "a.de", "eins\nzwei\ndrei\n")
    en = write(tmp_path / "a.en.gz", gzip.compress(b"one\ntwo\n"))
    with pytest.raises(
        UserError, match=rf"{de} has 3 lines but {en} has 2; parallel files need one response line per prompt line"
    ):
        splits(task="sft", train=[de, en], format="parallel")
    with pytest.raises(UserError, match=rf"{tmp_path}/d: format parallel reads two files, not a folder"):
        splits(task="sft", train=[str(tmp_path / "d"), en], format="parallel")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"task": "sft", "prompt_template": "Translate: {text}"}, "prompt_template must contain {prompt}"),
        (
            {"task": "sft", "format": "parallel", "train": ["a", "b", "c"]},
            r"labeled.train must be exactly \[prompt_file, response_file\]",
        ),
        ({"format": "parallel", "train": ["a", "b"]}, "set labeled.task to sft"),
        ({"train": []}, "at least 1 item"),
        ({"max_train_rows": 0}, "greater than or equal to 1"),
        ({"train": ["package:pydoc-topics"]}, "holds unlabeled text"),
    ],
)
def test_spec_validation(kw, message):
    with pytest.raises(ValidationError, match=message):
        LabeledSpec(**{"train": ["a.tsv"], **kw})


def test_missing_source_and_unknown_type_name_labeled_settings(tmp_path):
    with pytest.raises(
        UserError, match="no such file or folder .*fix the path in labeled.train, labeled.validation or labeled.test"
    ):
        read.source_digests(LabeledSpec(train=[str(tmp_path / "nope.tsv")]))
    f = write(tmp_path / "q.label", "LOC:city Where ?\n")
    with pytest.raises(UserError, match=rf"{f}: unknown file type '.label'.* or set labeled.format"):
        splits(train=[f])
    with pytest.raises(UserError, match="labeled.encoding 'utf-9' is not a known text encoding"):
        splits(train=[f], format="label-prefixed", encoding="utf-9")
    t = write(tmp_path / "q.txt", "plain words\n")
    with pytest.raises(
        UserError, match=rf"{t}: a text file has no named columns; set labeled.format to the file's format"
    ):
        splits(train=[t])


def test_s3_label_prefixed_prefix_and_parallel_objects(s3_bucket):
    from tasks import s3

    def put(key, body):
        s3.s3_client().put_object(Bucket=s3.split_s3(s3_bucket)[0], Key=key, Body=body)
        return f"{s3_bucket}/{key}"

    put("trec/a.label", b"LOC:city Where ?\n")
    put("trec/b.label", b"NUM:date When ?\n")
    out = splits(
        train=[f"{s3_bucket}/trec"], format="label-prefixed", label_before=":", split={"validation": 0, "test": 0}
    )
    assert [(r["label"], r["origin"]) for r in out["train"]] == [
        ("LOC", f"{s3_bucket}/trec/a.label:1"),
        ("NUM", f"{s3_bucket}/trec/b.label:1"),
    ]
    de, en = put("m/v.de.gz", gzip.compress(b"Hallo\n")), put("m/v.en.gz", gzip.compress(b"Hello\n"))
    assert (
        splits(task="sft", train=[de, en], format="parallel", split={"validation": 0, "test": 0})["train"][0][
            "response"
        ]
        == "Hello"
    )
    with pytest.raises(UserError, match=f"{s3_bucket}/m: format parallel reads two files, not a folder"):
        splits(task="sft", train=[f"{s3_bucket}/m", en], format="parallel")


# ---- the stage -------------------------------------------------------------------------------------------


def test_run_round_trip_through_mlflow(home, tmp_path):
    train = write(
        tmp_path / "train.tsv",
        "sentence\tlabel\n" + "".join(f"film {i} is {'good bad'.split()[i % 2]} .\t{i % 2}\n" for i in range(60)),
    )
    dev = write(tmp_path / "dev.tsv", "sentence\tlabel\nsharp .\t1\ndull .\t0\n\t0\n")
    spec = LabeledSpec(train=[train], validation=[dev], text_column="sentence", split={"test": 0.2}, max_train_rows=30)
    uri = stage(spec)
    run_id = uri.removeprefix("runs:/").split("/")[0]
    assert uri == f"runs:/{run_id}/labeled"

    card = labeled.card(uri)
    assert card["task"] == "classification" and card["labels"] == ["0", "1"]
    assert card["splits"]["validation"] == {"rows": 2, "labels": {"0": 1, "1": 1}}
    assert card["splits"]["train"]["rows"] == 30 and card["rows_read"] == {"train": 60, "validation": 3, "test": 0}
    assert card["removed"]["empty_text"]["validation"] == 1
    assert card["sources"] == {
        train: read.source_digests(spec)["train0"],
        dev: read.source_digests(spec)["validation0"],
    }
    rows_ = {n: labeled.load_rows(uri, n) for n in ("train", "validation", "test")}
    assert rows_["validation"] == [
        {"text": "sharp .", "label": "1", "origin": f"{dev}:2"},
        {"text": "dull .", "label": "0", "origin": f"{dev}:3"},
    ]
    assert len(rows_["train"]) == 30 and len(rows_["test"]) == card["splits"]["test"]["rows"] > 0
    assert set(rows_["train"][0]) == {"text", "label", "origin"}

    run = MlflowClient().get_run(run_id)
    assert run.data.tags[DIGEST] == card["digest"]
    assert run.data.metrics["train_rows"] == 30 and run.data.metrics["num_labels"] == 2
    assert card["groups"]["groups"] == run.data.metrics["split_groups"] == 60  # test drawn: 60 distinct texts
    assert run.data.metrics["split_largest_group"] == 1
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"train", "validation", "test"}
    md = Path(mlflow.artifacts.download_artifacts(f"{uri}/card.md")).read_text()
    assert "| validation | given | 3 | 1 | 0 | 0 | 2 |" in md
    assert stage(spec) == uri  # unchanged inputs: the stage cache answers


def test_train_rows_overlapping_evaluation_are_reported_and_dropped_when_asked(tmp_path):
    train = write(
        tmp_path / "train.tsv",
        "sentence\tlabel\n"
        + "".join(f"row {i} of the training data\t{i % 2}\n" for i in range(20))
        + "a gorgeous film about love .\t1\nwe saw a gorgeous film about love and war .\t1\n",
    )
    dev = write(tmp_path / "dev.tsv", "sentence\tlabel\nA gorgeous film about love\t1\nsomething else entirely\t0\n")
    kw = dict(
        train=[train], test=[dev], text_column="sentence", split={"validation": 0, "test": 0}, contamination_ngram=5
    )
    out, counts = built(**kw)
    assert counts["contamination"]["test"] == {
        "train_rows_exact": 1,
        "train_rows_ngram": 2,
        "eval_rows_exact": 1,
        "eval_rows_ngram": 1,
        "eval_rows": 2,
        "eval_rows_inside": 0,
        "eval_rows_inside_under_min_words": 0,
    }
    assert len(out["train"]) == 22 and counts["removed"]["contaminated"]["train"] == 0  # reported only
    out, counts = built(**kw, decontaminate=True)
    assert (
        len(out["train"]) == 20
        and counts["removed"]["contaminated"]["train"] == counts["contamination"]["dropped"] == 2
    )
    assert not any("gorgeous" in r["text"] for r in out["train"])


def test_run_sft_round_trip(home, tmp_path):
    de = write(tmp_path / "v.de", "".join(f"Satz {i}\n" for i in range(20)))
    en = write(tmp_path / "v.en", "".join(f"Sentence {i}\n" for i in range(20)))
    spec = LabeledSpec(
        task="sft",
        train=[de, en],
        format="parallel",
        prompt_template="DE→EN: {prompt}",
        split={"validation": 0.2, "test": 0},
    )
    uri = stage(spec)
    card = labeled.card(uri)
    assert card["task"] == "sft" and "labels" not in card and card["prompt_template"] == "DE→EN: {prompt}"
    got = labeled.load_rows(uri, "train") + labeled.load_rows(uri, "validation")
    assert sorted((r["prompt"], r["response"]) for r in got) == sorted(
        (f"DE→EN: Satz {i}", f"Sentence {i}") for i in range(20)
    )
    assert labeled.load_rows(uri, "test") == []
    with pytest.raises(UserError, match="Unknown split 'dev'"):
        labeled.load_rows(uri, "dev")


# ---- the shared data sets ---------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_shared_data_sets():
    sst = splits(train=[str(SHARED / "sst2" / "dev.tsv")], text_column="sentence", split={"validation": 0, "test": 0})
    assert len(sst["train"]) == 872 and {r["label"] for r in sst["train"]} == {"0", "1"}
    trec = splits(
        train=[str(SHARED / "trec" / "TREC_10.label")],
        format="label-prefixed",
        label_before=":",
        split={"validation": 0, "test": 0},
    )
    assert len(trec["train"]) == 500
    assert rows.label_order(r["label"] for r in trec["train"]) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    pair = [str(SHARED / "multi30k" / f"val.{lang}.gz") for lang in ("de", "en")]
    m30k = splits(task="sft", train=pair, format="parallel", split={"validation": 0, "test": 0})
    assert len(m30k["train"]) == 1014 and m30k["train"][0]["response"].startswith("A group of men")
