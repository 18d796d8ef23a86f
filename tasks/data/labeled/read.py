"""Read each split's sources into raw rows, checking columns and text types; labels stay as found until `rows.py`."""

import gzip
import zlib

from tasks import s3, storage
from tasks.data import formats, sources
from tasks.data.labeled import squad
from tasks.data.labeled.spec import SPLITS, LabeledSpec
from tasks.errors import UserError


def read_splits(spec: LabeledSpec) -> dict[str, list[dict]]:
    """{split: raw rows} for the splits whose sources are given; classification rows {text, [text_pair], label, origin}, sft {prompt, response, origin}."""
    sources.check_encoding(spec)
    out = {}
    for split in SPLITS:
        given = getattr(spec, split)
        if not given:
            continue
        if spec.format == "parallel":
            out[split] = _parallel(spec, split, *given)
            continue
        out[split] = []
        for src in given:
            if spec.task == "extractive-qa":
                found = _qa(spec, src)
            else:
                found = _label_prefixed(spec, src) if spec.format == "label-prefixed" else _table(spec, src)
            if not found:
                raise UserError(f"{src}: produced no rows; check the file, or remove it from labeled.{split}")
            out[split].extend(found)
    return out


def source_names(spec: LabeledSpec) -> dict[str, str]:
    """Every source by a stable input name: `train0`, `train1`, `validation0`, ..."""
    return {f"{split}{i}": src for split in SPLITS for i, src in enumerate(getattr(spec, split))}


def source_digests(spec: LabeledSpec) -> dict[str, str]:
    """{input name: content digest} of every source, named as `source_names` names them; .gz files are digested as stored."""
    return {name: sources.digest(src, spec) for name, src in source_names(spec).items()}


def _roles(spec: LabeledSpec) -> dict[str, str]:
    """{row field: source column} for the task."""
    if spec.task in ("sft", "math"):
        return {"prompt": spec.prompt_column, "response": spec.response_column}
    pair = {"text_pair": spec.text_pair_column} if spec.text_pair_column else {}
    return {"text": spec.text_column, **pair, "label": spec.label_column}


def _table(spec: LabeledSpec, src: str) -> list[dict]:
    roles = _roles(spec)
    keys = {column: spec.setting(f"{role}_column") for role, column in roles.items()}
    rows = []
    for origin, record in sources.read_table(src, spec, keys):
        row = {}
        for role, column in roles.items():
            value = record[column]
            row[role] = value if role == "label" else formats.text_value(origin, column, value, keys[column])
        rows.append({**row, "origin": origin})
    return rows


def _qa(spec: LabeledSpec, src: str) -> list[dict]:
    """Question rows {question, context, answers, title, origin} from SQuAD JSON files or a table with an answers column."""
    if squad.is_squad(spec, src):
        return [row for name in sources.files(src, spec) for row in squad.parse(name, _text(spec, name))]
    return [squad.table_row(spec, *found) for found in sources.read_table(src, spec, squad.table_columns(spec))]


def _text(spec: LabeledSpec, name: str) -> str:
    """A file's text: gunzipped when it ends in .gz, then strictly decoded."""
    data = storage.read_bytes(name)
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(
                f"{name}: not a readable gzip file ({e}); check the file or drop the .gz from its name"
            ) from None
    return formats.decode_file(name, data, spec)


def _lines(text: str) -> list[str]:
    # split("\n"), not splitlines(): the latter also splits on \x0c, \u2028 ... and line numbers would drift.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines  # the newline that ends the file starts no line


def _label_prefixed(spec: LabeledSpec, src: str) -> list[dict]:
    rows = []
    for name in sources.files(src, spec):
        for i, line in enumerate(_lines(_text(spec, name)), 1):
            if not line.strip():
                continue
            parts = line.split(None, 1)
            if len(parts) < 2 or not parts[1].strip():
                raise UserError(
                    f"{name}:{i}: the label {parts[0]!r} has no text after it; write `LABEL text` on each line or remove the line"
                )
            rows.append({"text": parts[1], "label": parts[0], "origin": f"{name}:{i}"})
    return rows


def _one_file(spec: LabeledSpec, split: str, src: str) -> str:
    expected = src if s3.is_s3(src) else str(storage.file_uri_to_path(src))
    if sources.files(src, spec) != [expected]:  # a folder or prefix, even one holding a single file
        raise UserError(
            f"{src}: format parallel reads two files, not a folder; set labeled.{split} to [prompt_file, response_file]"
        )
    return expected


def _parallel(spec: LabeledSpec, split: str, prompts: str, responses: str) -> list[dict]:
    p_name, r_name = _one_file(spec, split, prompts), _one_file(spec, split, responses)
    p_lines, r_lines = _lines(_text(spec, p_name)), _lines(_text(spec, r_name))
    if len(p_lines) != len(r_lines):
        raise UserError(
            f"{p_name} has {len(p_lines)} lines but {r_name} has {len(r_lines)}; parallel files need one response line "
            f"per prompt line: fix the files or the pair in labeled.{split}"
        )
    return [
        {"prompt": p, "response": r, "origin": f"{p_name}:{i}"} for i, (p, r) in enumerate(zip(p_lines, r_lines), 1)
    ]
