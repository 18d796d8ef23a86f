"""Extractive-QA rows `{question, context, answers, title, origin}` from SQuAD JSON or from tables with an answers column.

`answers` is a list of `{text, answer_start}`, `answer_start` a character offset into the context (Python str index);
answers that do not sit where they say are dropped and counted by `align`, a missing question or context is an error.
"""

import json
import reprlib

from tasks.data.labeled.spec import LabeledSpec
from tasks.errors import UserError

FIX = "give it one or remove the record"


def is_squad(spec: LabeledSpec, src: str) -> bool:
    """Whether a source is read as SQuAD JSON: `format: squad`, or auto and a .json / .json.gz name."""
    auto = spec.format == "auto" and src.lower().endswith((".json", ".json.gz"))
    return spec.format == "squad" or (auto and not src.startswith("hf:"))


def parse(name: str, text: str) -> list[dict]:
    """The questions of one SQuAD file, in file order; origin is `file:data[a].paragraphs[p].qas[q]` and the question id."""
    try:
        top = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{name}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); fix the file") from None
    if not isinstance(top, dict) or not isinstance(top.get("data"), list):
        raise UserError(
            f"{name}: not SQuAD JSON (no top-level `data` list); give SQuAD v1.1 JSON, "
            "or JSONL with question, context and answers columns (set labeled.format to jsonl)"
        )
    rows = []
    for a, article in enumerate(top["data"]):
        where = f"{name}:data[{a}]"
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{where}: the article has no `paragraphs` list; fix the record or remove it")
        title = article.get("title") if isinstance(article.get("title"), str) else ""
        for p, paragraph in enumerate(paragraphs):
            here = f"{where}.paragraphs[{p}]"
            paragraph = paragraph if isinstance(paragraph, dict) else {}
            context = _text(paragraph.get("context"), here, "context")
            for q, qa in enumerate(paragraph.get("qas") or []):
                qa = qa if isinstance(qa, dict) else {}
                origin = f"{here}.qas[{q}]" + (f" id {qa['id']}" if isinstance(qa.get("id"), str) else "")
                rows.append(
                    {
                        "question": _text(qa.get("question"), origin, "question"),
                        "context": context,
                        "answers": [_answer(x, origin) for x in qa.get("answers") or []],
                        "title": title,
                        "origin": origin,
                    }
                )
    return rows


def table_columns(spec: LabeledSpec) -> dict[str, str]:
    """{source column: the setting that names it} for JSONL/CSV/Parquet QA sources."""
    columns = {spec.question_column: "question_column", spec.context_column: "context_column"}
    columns[spec.answers_column] = "answers_column"
    if spec.title_column:
        columns[spec.title_column] = "title_column"
    return {column: spec.setting(field) for column, field in columns.items()}


def table_row(spec: LabeledSpec, origin: str, record: dict) -> dict:
    """One table record as a QA row; answers as Hugging Face's squad stores them, `{text: [...], answer_start: [...]}`."""
    found = record[spec.answers_column]
    if isinstance(found, str):  # CSV cells hold the answers as JSON
        try:
            found = json.loads(found)
        except json.JSONDecodeError:
            found = None
    if isinstance(found, dict) and isinstance(found.get("text"), list) and isinstance(found.get("answer_start"), list):
        if len(found["text"]) == len(found["answer_start"]):
            found = [{"text": t, "answer_start": s} for t, s in zip(found["text"], found["answer_start"])]
    if not isinstance(found, list):
        raise UserError(
            f"{origin}: {spec.answers_column!r} is {reprlib.repr(record[spec.answers_column])}, not "
            "{text: [...], answer_start: [...]} of equal length; fix the value or set labeled.answers_column"
        )
    title = record.get(spec.title_column) if spec.title_column else ""
    return {
        "question": _text(record[spec.question_column], origin, spec.question_column, spec.setting("question_column")),
        "context": _text(record[spec.context_column], origin, spec.context_column, spec.setting("context_column")),
        "answers": [_answer(x, origin) for x in found],
        "title": title if isinstance(title, str) else str(title),
        "origin": origin,
    }


def _text(value, where: str, field: str, setting: str | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        which = f"set {setting} to the column that holds it, or {FIX}" if setting else FIX
        raise UserError(f"{where}: the record has no {field}; {which}")
    return value


def _answer(value, where: str) -> dict:
    text, start = (value.get("text"), value.get("answer_start")) if isinstance(value, dict) else (None, None)
    if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
        raise UserError(
            f"{where}: the answer {reprlib.repr(value)} is not {{text: str, answer_start: int}}; fix it or remove it"
        )
    return {"text": text, "answer_start": start}


def align(raw: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Drop answers whose `answer_start` does not point at their text, then questions left without an answer (in place).

    Returns per split: answers dropped, questions dropped because every answer was misaligned, questions that had none.
    """
    counts = {"misaligned_answers": {}, "misaligned_answer": {}, "no_answer": {}}
    for split, rows in raw.items():
        kept, dropped, lost, none = [], 0, 0, 0
        for row in rows:
            good = [a for a in row["answers"] if _points_at(row["context"], a)]
            dropped += len(row["answers"]) - len(good)
            if good:
                kept.append({**row, "answers": good})
            elif row["answers"]:
                lost += 1
            else:
                none += 1
        raw[split] = kept
        counts["misaligned_answers"][split] = dropped
        counts["misaligned_answer"][split] = lost
        counts["no_answer"][split] = none
    return counts


def _points_at(context: str, answer: dict) -> bool:
    start, text = answer["answer_start"], answer["text"]
    return bool(text.strip()) and 0 <= start and context[start : start + len(text)] == text


def group(row: dict) -> str:
    """What the split hash sees: the article title, else the context, so that no article (paragraph) is in two splits."""
    return row["title"] or row["context"]
