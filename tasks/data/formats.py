"""Parse one file's bytes into rows, validating as it goes: strict decoding, JSON lines, named columns."""

import codecs
import csv
import gzip
import io
import json
import zlib

from tasks.data.spec import PrepareSpec
from tasks.errors import UserError

BINARY_SAMPLE = 8192
# C0 control characters and DEL, except those text uses: tab, line and page breaks, and the escape of ANSI colours.
CONTROL = bytes(c for c in range(32) if c not in b"\t\n\v\f\r\x1b") + b"\x7f"


def setting(spec, field: str) -> str:
    """How messages name a setting: the spec's own `setting(field)` when it has one, else `data.<field>` (the corpus spec)."""
    named = getattr(spec, "setting", None)
    return named(field) if callable(named) else f"data.{field}"


def parse(name: str, data: bytes, fmt: str, spec: PrepareSpec) -> list[dict]:
    """Text rows `{"text", "origin"}` of one file."""
    if fmt == "text":
        return cut_text(name, decode_file(name, data, spec, fmt), spec.text_unit)
    column, key = spec.text_column, setting(spec, "text_column")
    found = records(name, data, fmt, spec, {column: key})
    return [{"text": text_value(origin, column, rec[column], key), "origin": origin} for origin, rec in found]


def records(name: str, data: bytes, fmt: str, spec, columns: dict[str, str]) -> list[tuple[str, dict]]:
    """`(origin, {column: value})` for each record of a JSONL, CSV/TSV or Parquet file; `columns` maps each column needed to the setting that names it."""
    if fmt == "parquet":
        _check_file(name, data, fmt, spec)
        return _parquet_records(name, data, spec, columns)
    text = decode_file(name, data, spec, fmt)
    if fmt == "jsonl":
        return _jsonl_records(name, text, columns)
    if fmt in ("csv", "tsv"):
        return _csv_records(name, text, columns, "\t" if fmt == "tsv" else ",")
    raise UserError(f"{name}: a {fmt} file has no named columns; set {setting(spec, 'format')} to the file's format")


def gunzip(name: str, data: bytes) -> bytes:
    """The bytes inside a .gz file; a file that is not gzip is an error naming it."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(
            f"{name}: not a readable gzip file ({e}); check the file or drop the .gz from its name"
        ) from None


def decode_file(name: str, data: bytes, spec, fmt: str | None = None) -> str:
    """The file's text in the spec's encoding (strict UTF-8 by default); an empty or binary file is an error."""
    _check_file(name, data, fmt, spec)
    # UTF-16/32 text is full of NUL bytes: judge it by its characters, any other encoding by its bytes (before a
    # decoding error would send the user off to try encodings: latin-1 reads any binary, and it would be trained on).
    wide = spec.encoding is not None and codecs.lookup(spec.encoding).name.startswith(("utf-16", "utf-32"))
    if not wide:
        _refuse_binary(name, data[:BINARY_SAMPLE], spec)
    text = decode(name, data, spec.encoding, setting(spec, "encoding"))
    if wide:
        _refuse_binary(name, text[:BINARY_SAMPLE], spec)
    return text


def _refuse_binary(name: str, sample: bytes | str, spec) -> None:
    """A NUL, or a tenth of control characters, in the first 8 KiB (git looks for a NUL in its first 8000 bytes)."""
    if isinstance(sample, str):
        nul, kept = sample.find("\0"), len(sample.translate(dict.fromkeys(CONTROL)))
    else:
        nul, kept = sample.find(b"\0"), len(sample.translate(None, CONTROL))
    share = 1 - kept / max(len(sample), 1)
    if nul < 0 and share <= 0.1:
        return
    why = f"a NUL byte at offset {nul}" if nul >= 0 else f"{share:.0%} control characters in its first 8 KiB"
    raise UserError(
        f"{name}: a binary file, not text ({why}); no {setting(spec, 'encoding')} reads it as text, "
        f"so convert it to text or remove it from {setting(spec, 'sources')}"
    )


def _check_file(name: str, data: bytes, fmt: str | None, spec) -> None:
    if fmt == "arrow":
        raise UserError(
            f"{name}: {setting(spec, 'format')} arrow expects a save_to_disk folder, not a file; point at the folder"
        )
    if not data.strip():  # also catches 0 bytes
        raise UserError(f"{name}: the file is empty; add text to it or remove it from {setting(spec, 'sources')}")


def decode(name: str, data: bytes, encoding: str | None, key: str = "data.encoding") -> str:
    """Strict decoding; an error names file:line of the first bad byte and the setting `key` that fixes it."""
    # Strict decoding: a wrong guess would silently turn text into mojibake that trains the tokenizer.
    try:
        return data.decode(encoding or "utf-8-sig", errors="strict")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{name}:{line}: not valid {encoding or 'UTF-8'} (byte 0x{data[e.start]:02x}); "
            f"set {key} to the file's encoding, e.g. latin-1"
        ) from None


def cut_text(name: str, text: str, unit: str) -> list[dict]:
    """Rows of a plain text: each line, each blank-line separated paragraph, or the whole text."""
    if unit == "file":
        return [{"text": text, "origin": f"{name}:1"}] if text.strip() else []
    # split("\n"), not splitlines(): the latter also splits on \x0c, \u2028 ... and line numbers would drift.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if unit == "line":
        return [{"text": line, "origin": f"{name}:{i}"} for i, line in enumerate(lines, 1) if line.strip()]
    rows, start, block = [], 0, []
    for i, line in enumerate(lines + [""], 1):
        if line.strip():
            start = start or i
            block.append(line)
        elif block:
            rows.append({"text": "\n".join(block), "origin": f"{name}:{start}"})
            start, block = 0, []
    return rows


def text_value(where: str, column: str, value, key: str = "data.text_column") -> str:
    """The value itself when it is a string, else an error naming where it is and the setting `key`."""
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise UserError(f"{where}: {column!r} is {kind}, not a string; fix the value or set {key} to a text column")
    return value


def _jsonl_records(name: str, text: str, columns: dict[str, str]) -> list[tuple[str, dict]]:
    out = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            # Some messages end in "at" already ("Unterminated string starting at").
            reason = f"{e.msg.removesuffix(' at')} at column {e.colno}"
            raise UserError(f"{name}:{i}: not a JSON object: {reason}; write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise UserError(
                f"{name}:{i}: not a JSON object: found a {type(obj).__name__}; write one JSON object per line"
            )
        for column, key in columns.items():
            if column not in obj:
                found = ", ".join(obj) or "none"
                raise UserError(f"{name}:{i}: no key {column!r} (found: {found}); set {key} to the key that holds it")
        out.append((f"{name}:{i}", {c: obj[c] for c in columns}))
    return out


def _csv_records(name: str, text: str, columns: dict[str, str], delimiter: str) -> list[tuple[str, dict]]:
    # The default limit (128 KiB per field) is too small for whole documents; restore it for other users.
    old_limit = csv.field_size_limit(2**31 - 1)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        out, header, index, last = [], None, {}, 0
        for record in reader:
            start, last = last + 1, reader.line_num  # a quoted field may span lines: report where the record starts
            if not record:
                continue
            if header is None:
                header = record
                for column, key in columns.items():
                    if column not in header:
                        raise UserError(
                            f"{name}:{start}: no column {column!r} (found: {', '.join(header)}); set {key} to one of them"
                        )
                index = {c: header.index(c) for c in columns}
                continue
            if max(index.values()) >= len(record):
                raise UserError(
                    f"{name}:{start}: the row has {len(record)} fields, the header {len(header)}; fix the row"
                )
            out.append((f"{name}:{start}", {c: record[j] for c, j in index.items()}))
        return out
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise UserError(f"{name}:{reader.line_num}: not valid {kind} ({e}); fix the quoting") from None
    finally:
        csv.field_size_limit(old_limit)


def _parquet_records(name: str, data: bytes, spec, columns: dict[str, str]) -> list[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise UserError(
            f"{name}: not a readable Parquet file ({e}); check the file or set {setting(spec, 'format')}"
        ) from None
    return column_records(name, table.column_names, lambda c: table.column(c).to_pylist(), columns)


def column_records(name: str, found: list[str], values, columns: dict[str, str]) -> list[tuple[str, dict]]:
    """Records of a columnar table (Parquet, a `datasets` Dataset); `values(column)` gives one column as a list."""
    for column, key in columns.items():
        if column not in found:
            raise UserError(f"{name}: no column {column!r} (found: {', '.join(found)}); set {key} to one of them")
    data = {c: list(values(c)) for c in columns}
    rows = len(next(iter(data.values()))) if data else 0
    return [(f"{name}#{i}", {c: data[c][i] for c in columns}) for i in range(rows)]
