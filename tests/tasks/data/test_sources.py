"""Reading and validating prepare sources: every format, every bad form, folders, packages, S3, digests."""

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import s3
from tasks.data.sources import read_sources, source_digests
from tasks.data.spec import PrepareSpec
from tasks.errors import UserError


def spec(*sources, **kw) -> PrepareSpec:
    return PrepareSpec(sources=[str(s) for s in sources], **kw)


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def texts(rows):
    return [r["text"] for r in rows]


def origins(rows):
    return [r["origin"] for r in rows]


# ---- plain text ------------------------------------------------------------------------------------

TEXT = "first line\nsecond line\n\n   \nthird para\r\nstill third\n"


def test_text_by_paragraph_line_and_file(tmp_path):
    f = write(tmp_path / "a.txt", TEXT)
    rows = read_sources(spec(f))  # paragraph is the default unit
    assert texts(rows) == ["first line\nsecond line", "third para\nstill third"]
    assert origins(rows) == [f"{f}:1", f"{f}:5"]

    rows = read_sources(spec(f, text_unit="line"))
    assert texts(rows) == ["first line", "second line", "third para", "still third"]
    assert origins(rows) == [f"{f}:1", f"{f}:2", f"{f}:5", f"{f}:6"]

    assert read_sources(spec(f, text_unit="file")) == [{"text": TEXT, "origin": f"{f}:1"}]


def test_utf8_bom_is_not_part_of_the_text(tmp_path):
    f = write(tmp_path / "a.txt", "\ufeffhello".encode())
    assert texts(read_sources(spec(f))) == ["hello"]


def test_invalid_utf8_names_file_line_and_the_fix(tmp_path):
    f = write(tmp_path / "a.txt", b"ok\nstill ok\ncaf\xe9\n")
    with pytest.raises(UserError, match=rf"{f}:3: not valid UTF-8 .*set data.encoding .*latin-1"):
        read_sources(spec(f))
    assert texts(read_sources(spec(f, encoding="latin-1", text_unit="line")))[-1] == "café"


# A gzip stream: what a .txt.gz renamed to .txt, or any compressed or executable file, looks like to a reader.
BINARY = bytes.fromhex("1f8b0800000000000003") + bytes(range(256)) * 4


@pytest.mark.parametrize("encoding", [None, "latin-1"])
def test_binary_file_is_refused_as_binary_whatever_the_encoding(tmp_path, encoding):
    f = write(tmp_path / "model.txt", BINARY)
    # latin-1 decodes any bytes: without the check, following the old advice trained on the binary.
    with pytest.raises(
        UserError, match=rf"^{f}: a binary file, not text \(a NUL byte at offset 3\); .*remove it from data.sources$"
    ):
        read_sources(spec(f, encoding=encoding))


def test_control_characters_without_nul_are_binary_but_tabs_and_escapes_are_text(tmp_path):
    noisy = write(tmp_path / "noisy.jsonl", b"\x01\x02\x03\x04 ab\x05\x06\x07\x08 " * 50)
    with pytest.raises(
        UserError, match=rf"^{noisy}: a binary file, not text \(67% control characters in its first 8 KiB\)"
    ):
        read_sources(spec(noisy))
    log = write(tmp_path / "log.txt", "\x1b[31mred\x1b[0m\tcol\fpage\r\n" * 20)
    assert len(read_sources(spec(log, text_unit="line"))) == 20


def test_utf16_text_is_not_mistaken_for_binary(tmp_path):
    f = write(tmp_path / "wide.txt", "one line\nanother line\n".encode("utf-16"))
    assert texts(read_sources(spec(f, encoding="utf-16", text_unit="line"))) == ["one line", "another line"]
    f = write(tmp_path / "wide-binary.txt", BINARY[:4] + "text".encode("utf-16-le"))
    with pytest.raises(UserError, match="a binary file, not text"):
        read_sources(spec(f, encoding="utf-16-le"))


def test_unknown_encoding(tmp_path):
    f = write(tmp_path / "a.txt", "x")
    with pytest.raises(UserError, match="data.encoding 'utf-9' is not a known text encoding"):
        read_sources(spec(f, encoding="utf-9"))


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_file(tmp_path, content):
    f = write(tmp_path / "a.txt", content)
    with pytest.raises(UserError, match=f"{f}: the file is empty"):
        read_sources(spec(f))


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path}/nope.txt: no such file or folder.*fix the path in data.sources"):
        read_sources(spec(tmp_path / "nope.txt"))


def test_unknown_extension_and_format_override(tmp_path):
    f = write(tmp_path / "notes.dat", '{"text": "from a .dat file"}\n')
    with pytest.raises(UserError, match=rf"{f}: unknown file type '.dat'.*set data.format"):
        read_sources(spec(f))
    assert texts(read_sources(spec(f, format="jsonl"))) == ["from a .dat file"]
    g = write(tmp_path / "table.txt", "text,label\nhello,1\n")
    assert texts(read_sources(spec(g, format="csv"))) == ["hello"]


def test_file_uri_source(tmp_path):
    f = write(tmp_path / "a.txt", "hello")
    assert texts(read_sources(spec(f"file://{f}"))) == ["hello"]


# ---- JSONL -----------------------------------------------------------------------------------------


def test_jsonl_rows_and_blank_lines(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "one", "id": 1}\n\n{"body": "x", "text": "two"}\n')
    rows = read_sources(spec(f))
    assert texts(rows) == ["one", "two"]
    assert origins(rows) == [f"{f}:1", f"{f}:3"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "broken', r":2: not a JSON object: Unterminated string starting at column 10; write one JSON"),
        ('["text", "a list"]', r":2: not a JSON object: found a list"),
        ('{"body": "no text key"}', r":2: no key 'text' \(found: body\); set data.text_column"),
        ('{"text": 42}', r":2: 'text' is int, not a string"),
        ('{"text": null}', r":2: 'text' is null, not a string"),
    ],
)
def test_jsonl_bad_lines(tmp_path, line, message):
    f = write(tmp_path / "a.jsonl", '{"text": "fine"}\n' + line + "\n")
    with pytest.raises(UserError, match=str(f) + message):
        read_sources(spec(f))


# ---- CSV / TSV -------------------------------------------------------------------------------------


def test_csv_with_multiline_field_reports_where_each_row_starts(tmp_path):
    f = write(tmp_path / "a.csv", 'label,text\n1,"first\nspans two lines"\n0,second\n')
    rows = read_sources(spec(f))
    assert texts(rows) == ["first\nspans two lines", "second"]
    assert origins(rows) == [f"{f}:2", f"{f}:4"]


def test_tsv_and_text_column(tmp_path):
    f = write(tmp_path / "a.tsv", "body\tlabel\nhello, world\t1\n")
    assert texts(read_sources(spec(f, text_column="body"))) == ["hello, world"]


def test_csv_without_the_column_lists_what_it_found(tmp_path):
    f = write(tmp_path / "a.csv", "sentence,label\nhi,1\n")
    with pytest.raises(UserError, match=rf"{f}:1: no column 'text' \(found: sentence, label\); set data.text_column"):
        read_sources(spec(f))


def test_csv_short_row(tmp_path):
    f = write(tmp_path / "a.csv", "label,text\n1,fine\n2\n")
    with pytest.raises(UserError, match=rf"{f}:3: the row has 1 fields, the header 2"):
        read_sources(spec(f))


def test_header_only_csv_produces_no_rows(tmp_path):
    f = write(tmp_path / "a.csv", "label,text\n")
    with pytest.raises(UserError, match=f"{f}: produced no rows"):
        read_sources(spec(f))


# ---- Parquet and save_to_disk ----------------------------------------------------------------------


def test_parquet_rows_column_check_and_types(tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "n": [1, 2]}), f)
    rows = read_sources(spec(f))
    assert texts(rows) == ["a", "b"]
    assert origins(rows) == [f"{f}#0", f"{f}#1"]

    with pytest.raises(UserError, match=rf"{f}: no column 'body' \(found: text, n\); set data.text_column"):
        read_sources(spec(f, text_column="body"))
    with pytest.raises(UserError, match=rf"{f}#0: 'n' is int, not a string"):
        read_sources(spec(f, text_column="n"))
    g = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), g)
    with pytest.raises(UserError, match=rf"{g}#1: 'text' is null, not a string"):
        read_sources(spec(g))


def test_parquet_that_is_not_parquet(tmp_path):
    f = write(tmp_path / "a.parquet", "plain text")
    with pytest.raises(UserError, match=f"{f}: not a readable Parquet file"):
        read_sources(spec(f))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    def ds(*values):
        return datasets.Dataset.from_dict({"text": list(values)})

    ds("x", "y").save_to_disk(tmp_path / "ds")
    rows = read_sources(spec(tmp_path / "ds"))
    assert rows == [{"text": "x", "origin": f"{tmp_path}/ds#0"}, {"text": "y", "origin": f"{tmp_path}/ds#1"}]

    # A DatasetDict gives its train split when it has one ...
    datasets.DatasetDict({"train": ds("t"), "test": ds("e")}).save_to_disk(tmp_path / "dd")
    assert read_sources(spec(tmp_path / "dd")) == [{"text": "t", "origin": f"{tmp_path}/dd/train#0"}]
    # ... else all its splits, by name.
    datasets.DatasetDict({"b": ds("2"), "a": ds("1")}).save_to_disk(tmp_path / "dd2")
    assert texts(read_sources(spec(tmp_path / "dd2", format="arrow"))) == ["1", "2"]

    with pytest.raises(UserError, match=r"no column 'body' \(found: text\)"):
        read_sources(spec(tmp_path / "ds", text_column="body"))


def test_arrow_format_on_a_plain_folder(tmp_path):
    write(tmp_path / "d" / "a.txt", "x")
    with pytest.raises(UserError, match=f"{tmp_path}/d: not a save_to_disk folder"):
        read_sources(spec(tmp_path / "d", format="arrow"))


# ---- folders ---------------------------------------------------------------------------------------


def test_folder_is_recursive_sorted_and_skips_hidden_and_unknown(tmp_path):
    d = tmp_path / "corpus"
    write(d / "b.txt", "from b")
    write(d / "a" / "z.jsonl", '{"text": "from a/z"}\n')
    write(d / ".hidden.txt", "hidden")
    write(d / ".git" / "notes.txt", "hidden too")
    write(d / "README.md", "not a supported type")
    assert texts(read_sources(spec(d))) == ["from a/z", "from b"]


def test_folder_without_supported_files(tmp_path):
    write(tmp_path / "d" / "README.md", "x")
    with pytest.raises(UserError, match=f"{tmp_path}/d: the folder has no supported files"):
        read_sources(spec(tmp_path / "d"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="the folder has no supported files"):
        read_sources(spec(tmp_path / "empty"))


def test_bad_file_inside_a_folder_is_named(tmp_path):
    write(tmp_path / "d" / "a.txt", "fine")
    bad = write(tmp_path / "d" / "sub" / "b.jsonl", "{oops}\n")
    with pytest.raises(UserError, match=f"{bad}:1: not a JSON object"):
        read_sources(spec(tmp_path / "d"))


# ---- packages and the hub --------------------------------------------------------------------------


def test_pydoc_topics_one_document_per_topic_sorted():
    from pydoc_data.topics import topics

    rows = read_sources(spec("package:pydoc-topics", text_unit="file"))
    assert origins(rows) == [f"package:pydoc-topics/{t}:1" for t in sorted(topics)]
    assert rows[0]["text"] == topics[sorted(topics)[0]]
    paragraphs = read_sources(spec("package:pydoc-topics"))
    assert len(paragraphs) > len(rows)
    assert all(r["origin"].startswith("package:pydoc-topics/") and r["text"].strip() for r in paragraphs)


def test_unknown_package_lists_the_known_ones():
    with pytest.raises(UserError, match="package:wikipedia: unknown package source; use one of package:pydoc-topics"):
        read_sources(spec("package:wikipedia"))


def test_hf_offline_says_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = "hf:stanfordnlp/imdb:train: hf: sources need network.*point data.sources at the local folder"
    with pytest.raises(UserError, match=expected):
        read_sources(spec("hf:stanfordnlp/imdb:train"))
    with pytest.raises(UserError, match="hf: sources need network"):
        source_digests(spec("hf:stanfordnlp/imdb"))


# ---- digests ---------------------------------------------------------------------------------------


def test_file_digest_follows_content_not_mtime(tmp_path):
    f = write(tmp_path / "a.txt", "one")
    first = source_digests(spec(f))[str(f)]
    assert first == "sha256:" + hashlib.sha256(b"one").hexdigest()
    os.utime(f, (1, 1))
    assert source_digests(spec(f))[str(f)] == first
    f.write_text("two")
    assert source_digests(spec(f))[str(f)] != first


def test_folder_digest_follows_nested_content_and_names(tmp_path):
    d = tmp_path / "d"
    write(d / "a.txt", "a")
    nested = write(d / "sub" / "b.txt", "b")
    first = source_digests(spec(d))[str(d)]
    os.utime(nested, (1, 1))
    assert source_digests(spec(d))[str(d)] == first
    nested.write_text("B")
    second = source_digests(spec(d))[str(d)]
    assert second != first
    nested.rename(d / "sub" / "c.txt")
    assert source_digests(spec(d))[str(d)] != second


def test_package_digest_and_missing_inputs():
    digest = source_digests(spec("package:pydoc-topics"))["package:pydoc-topics"]
    assert digest.startswith("package:pydoc-topics@python-3.")
    with pytest.raises(UserError, match="no such file or folder"):
        source_digests(spec("/no/such/file.txt"))
    with pytest.raises(UserError, match="unknown package source"):
        source_digests(spec("package:nope"))


# ---- S3 --------------------------------------------------------------------------------------------


def _put(bucket_uri, key, body):
    s3.s3_client().put_object(Bucket=s3.split_s3(bucket_uri)[0], Key=key, Body=body.encode())
    return f"{bucket_uri}/{key}"


def test_s3_objects_and_prefix(s3_bucket):
    txt = _put(s3_bucket, "corpus/a.txt", "para one\n\npara two\n")
    jsonl = _put(s3_bucket, "corpus/sub/b.jsonl", json.dumps({"text": "from jsonl"}) + "\n")
    _put(s3_bucket, "corpus/.hidden.txt", "hidden")
    _put(s3_bucket, "corpus/notes.md", "unsupported")
    _put(s3_bucket, "corpus2/c.txt", "another folder")

    rows = read_sources(spec(txt))
    assert rows == [{"text": "para one", "origin": f"{txt}:1"}, {"text": "para two", "origin": f"{txt}:3"}]
    assert read_sources(spec(jsonl)) == [{"text": "from jsonl", "origin": f"{jsonl}:1"}]
    assert texts(read_sources(spec(f"{s3_bucket}/corpus"))) == ["para one", "para two", "from jsonl"]


def test_s3_errors_name_the_object(s3_bucket):
    bad = _put(s3_bucket, "bad.jsonl", '{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match=f"{bad}:2: not a JSON object"):
        read_sources(spec(bad))
    with pytest.raises(UserError, match=f"{s3_bucket}/missing: no object or prefix with that name"):
        read_sources(spec(f"{s3_bucket}/missing"))


def test_s3_digests_change_with_content(s3_bucket):
    obj = _put(s3_bucket, "d/a.txt", "one")
    _put(s3_bucket, "d/b.txt", "two")
    first, folder = source_digests(spec(obj, f"{s3_bucket}/d")).values()
    assert first == "etag:" + hashlib.md5(b"one").hexdigest()  # a single-part upload's ETag is its MD5
    _put(s3_bucket, "d/a.txt", "ONE")
    second, folder2 = source_digests(spec(obj, f"{s3_bucket}/d")).values()
    assert second != first and folder2 != folder
