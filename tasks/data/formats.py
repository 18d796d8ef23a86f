"""Parse one file's bytes into rows, validating as it goes: strict decoding, JSON lines, named columns."""

import csv
import io
import json

from tasks.data.spec import PrepareSpec
from tasks.errors import UserError



def parse(name: str, data: bytes, fmt: str, spec: PrepareSpec) -> list[dict]:
    if fmt == "arrow":
        raise UserError(f"{name}: data.format arrow expects a save_to_disk folder, not a file; point at the folder")
    if not data.strip():  # also catches 0 bytes
        raise UserError(f"{name}: the file is empty; add text to it or remove it from data.sources")
    if fmt == "parquet":
        return _parse_parquet(name, data, spec)
    text = _decode(name, data, spec.encoding)
    if fmt == "text":
        return cut_text(name, text, spec.text_unit)
    if fmt == "jsonl":
        return _parse_jsonl(name, text, spec.text_column)
    return _parse_csv(name, text, spec.text_column, "\t" if fmt == "tsv" else ",")


def _decode(name: str, data: bytes, encoding: str | None) -> str:
    # Strict decoding: a wrong guess would silently turn text into mojibake that trains the tokenizer.
    try:
        return data.decode(encoding or "utf-8-sig", errors="strict")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{name}:{line}: not valid {encoding or 'UTF-8'} (byte 0x{data[e.start]:02x}); "
            "set data.encoding to the file's encoding, e.g. latin-1"
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


def _text_value(where: str, column: str, value) -> str:
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise UserError(f"{where}: {column!r} is {kind}, not a string; fix the value or set data.text_column to a text column")
    return value


def _parse_jsonl(name: str, text: str, column: str) -> list[dict]:
    rows = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            reason = f"{e.msg} at column {e.colno}"
            raise UserError(f"{name}:{i}: not a JSON object: {reason}; write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{name}:{i}: not a JSON object: found a {type(obj).__name__}; write one JSON object per line")
        if column not in obj:
            found = ", ".join(obj) or "none"
            raise UserError(f"{name}:{i}: no key {column!r} (found: {found}); set data.text_column to the key that holds the text")
        rows.append({"text": _text_value(f"{name}:{i}", column, obj[column]), "origin": f"{name}:{i}"})
    return rows


def _parse_csv(name: str, text: str, column: str, delimiter: str) -> list[dict]:
    # The default limit (128 KiB per field) is too small for whole documents; restore it for other users.
    old_limit = csv.field_size_limit(2**31 - 1)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows, header, index, last = [], None, 0, 0
        for record in reader:
            start, last = last + 1, reader.line_num  # a quoted field may span lines: report where the record starts
            if not record:
                continue
            if header is None:
                header = record
                if column not in header:
                    raise UserError(
                        f"{name}:{start}: no column {column!r} (found: {', '.join(header)}); set data.text_column to one of them"
                    )
                index = header.index(column)
                continue
            if index >= len(record):
                raise UserError(f"{name}:{start}: the row has {len(record)} fields, the header {len(header)}; fix the row")
            rows.append({"text": record[index], "origin": f"{name}:{start}"})
        return rows
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise UserError(f"{name}:{reader.line_num}: not valid {kind} ({e}); fix the quoting") from None
    finally:
        csv.field_size_limit(old_limit)


def _parse_parquet(name: str, data: bytes, spec: PrepareSpec) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{name}: not a readable Parquet file ({e}); check the file or set data.format") from None
    return column_rows(name, table.column_names, lambda: table.column(spec.text_column).to_pylist(), spec.text_column)


def column_rows(name: str, columns: list[str], values, column: str) -> list[dict]:
    if column not in columns:
        raise UserError(f"{name}: no column {column!r} (found: {', '.join(columns)}); set data.text_column to one of them")
    return [{"text": _text_value(f"{name}#{i}", column, v), "origin": f"{name}#{i}"} for i, v in enumerate(values())]
