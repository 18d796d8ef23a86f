"""From raw rows to the stored splits: labels checked and made strings, texts normalised, splits drawn and capped."""

import hashlib
import json
import re
import reprlib

from tasks import answers
from tasks.data import clean, decontaminate
from tasks.data.labeled import groups, squad
from tasks.data.labeled.spec import SPLITS, LabeledSpec
from tasks.errors import UserError

# The label types accepted, by the name messages use; bool is its own type although Python makes it an int.
_KINDS = {str: "a string", int: "an integer", bool: "a boolean"}


def build(spec: LabeledSpec, raw: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], dict]:
    """The stored splits, and the card's counts: rows read, rows removed and why, where each split came from."""
    if spec.task == "classification":
        _labels_to_strings(spec, raw)
    drawn = [s for s in ("validation", "test") if s not in raw]
    how = "a hash of the article title (else the context)" if spec.task == "extractive-qa" else "content hash"
    how = f"drawn from train by {how}" + (", near duplicates together" if spec.split.group else "")
    counts = {
        "rows_read": {s: len(raw.get(s, [])) for s in SPLITS},
        "removed": {"empty_text": {s: 0 for s in SPLITS}, "over_max_rows": {}},
        "split_from": {s: how if s in drawn else "given" for s in SPLITS},
        "groups": None,  # how the drawn splits were grouped, when they were
    }
    if spec.task == "extractive-qa":  # before drawing: a question that loses every answer is dropped, not trained on
        found = squad.align(raw)
        counts["misaligned_answers"] = {s: found["misaligned_answers"].get(s, 0) for s in SPLITS}
        for why in ("misaligned_answer", "no_answer"):
            counts["removed"][why] = {s: found[why].get(s, 0) for s in SPLITS}
        for name, rows in raw.items():
            if not rows:
                raise UserError(
                    f"labeled.{name}: none of its {counts['rows_read'][name]} questions has an answer whose answer_start "
                    "points at the answer's text in the context; fix the answer offsets in the files"
                )
    if spec.task == "math":
        counts["removed"]["no_final_answer"] = _solutions(spec, raw)
    splits = {}
    for name, rows in raw.items():
        splits[name] = _drop_empty(spec, rows)
        counts["removed"]["empty_text"][name] = len(rows) - len(splits[name])
        if not splits[name]:
            fields = " or ".join(_text_fields(spec)) + (" after normalising" if spec.normalize else "")
            raise UserError(
                f"labeled.{name}: all {len(rows)} rows have an empty {fields}; "
                f"check labeled.{'text' if spec.task == 'classification' else 'prompt'}_column and the files"
            )
    if drawn:
        parts, counts["groups"] = _draw(spec, splits["train"], drawn)
        splits.update(parts)
    # Evaluation rows are capped first, so that the overlap is measured (and dropped) against what is evaluated.
    for name in ("validation", "test", "train"):
        if name == "train":
            counts["contamination"], splits["train"] = _contamination(spec, splits)
            counts["removed"]["contaminated"] = {
                "train": counts["contamination"]["dropped"],
                "validation": 0,
                "test": 0,
            }
        cap = spec.max_train_rows if name == "train" else spec.max_eval_rows
        capped = subset(splits[name], cap, spec.split.salt, lambda r: _key(spec, r))
        counts["removed"]["over_max_rows"][name] = len(splits[name]) - len(capped)
        splits[name] = capped
    if spec.task == "classification":
        _check_label_sets(spec, splits)
    elif spec.task in ("sft", "math"):
        splits = {
            n: [{**r, "prompt": spec.prompt_template.replace("{prompt}", r["prompt"])} for r in rows]
            for n, rows in splits.items()
        }
    return splits, counts


def _contamination(spec: LabeledSpec, splits: dict[str, list[dict]]) -> tuple[dict, list[dict]]:
    """Overlap of the training rows with validation and with test; the training rows, without the overlapping ones when asked."""
    train = [_key(spec, r) for r in splits["train"]]
    report = {"ngram": spec.contamination_ngram, "contained_min_words": spec.split.contained_min_words}
    hit = [False] * len(train)
    for name in ("validation", "test"):
        evaluation = [_key(spec, r) for r in splits[name]]
        report[name], flags = decontaminate.overlap(train, evaluation, spec.contamination_ngram)
        hit = [a or b for a, b in zip(hit, flags)]
        # reported only: a phrase inside a training sentence is a leak that `overlap` cannot see (see split.group)
        short = [len(decontaminate.words(t)) < spec.split.contained_min_words for t in evaluation]
        inside = decontaminate.inside(train, evaluation, spec.contamination_ngram)
        report[name]["eval_rows_inside"] = sum(inside)
        report[name]["eval_rows_inside_under_min_words"] = sum(a and b for a, b in zip(inside, short))
    kept = [r for r, h in zip(splits["train"], hit) if not h] if spec.decontaminate else splits["train"]
    report["dropped"] = len(splits["train"]) - len(kept)
    return report, kept


def label_order(labels) -> list[str]:
    """Label names in id order: by value when every label is an integer, else alphabetically."""
    labels = set(labels)
    if all(re.fullmatch(r"-?[0-9]+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _labels_to_strings(spec: LabeledSpec, raw: dict[str, list[dict]]) -> None:
    """Check every label (one type throughout, strings or integers) and replace it by its string form, cut at label_before."""
    first = None  # (type name, origin) of the first label seen
    for name in SPLITS:
        for row in raw.get(name, []):
            value, where = row["label"], row["origin"]
            if value is None:
                raise UserError(
                    f"{where}: the label {spec.label_column!r} is null; give every row a label or remove the row"
                )
            kind = _KINDS.get(type(value))
            if kind is None:
                raise UserError(
                    f"{where}: the label {reprlib.repr(value)} is a {type(value).__name__}, and labels must be strings or integers; "
                    "fix the data or set labeled.label_column to the label column"
                )
            if first is None:
                first = (kind, where)
            elif kind != first[0]:
                raise UserError(
                    f"{where}: the label {value!r} is {kind} but the first label (at {first[1]}) is {first[0]}; "
                    "write every label as the same type, e.g. all strings"
                )
            label = (json.dumps(value) if kind == "a boolean" else str(value)).strip()
            if spec.label_before is not None:
                label = label.split(spec.label_before, 1)[0].strip()
            if not label:
                cut = f" before labeled.label_before {spec.label_before!r}" if spec.label_before is not None else ""
                raise UserError(f"{where}: the label {value!r} is empty{cut}; give every row a label or remove the row")
            row["label"] = label


def _solutions(spec: LabeledSpec, raw: dict[str, list[dict]]) -> dict[str, int]:
    """Math: every solution must end in `#### <number>` (or, when allowed, is dropped and counted per split); the
    calculator annotations are stripped unless kept. Returns the dropped count per split."""
    dropped = {s: 0 for s in SPLITS}
    for name, rows in raw.items():
        kept = []
        for row in rows:
            if answers.final(row["response"]) is None:
                if not spec.allow_missing_answer:
                    raise UserError(
                        f"{row['origin']}: the solution has no final answer `#### <number>`; end it with one, or set "
                        "labeled.allow_missing_answer to true to drop such rows"
                    )
                dropped[name] += 1
                continue
            text = row["response"] if spec.keep_annotations else answers.strip_annotations(row["response"])
            kept.append({**row, "response": text})
        if rows and not kept:
            raise UserError(
                f"labeled.{name}: none of its {len(rows)} solutions ends in `#### <number>`; "
                "check labeled.response_column and the files"
            )
        raw[name] = kept
    return dropped


def _text_fields(spec: LabeledSpec) -> list[str]:
    if spec.task in ("sft", "math"):
        return ["prompt", "response"]
    if spec.task == "extractive-qa":
        return ["question", "context"]
    return ["text", "text_pair"] if spec.text_pair_column else ["text"]


def _drop_empty(spec: LabeledSpec, rows: list[dict]) -> list[dict]:
    """Rows with every text normalised (when asked); rows with an empty text are left out."""
    fields = _text_fields(spec)
    out = []
    for row in rows:
        if spec.normalize and spec.task != "extractive-qa":  # QA answers are offsets into the context as given
            row = {**row, **{f: clean.normalize(row[f]) for f in fields}}
        if all(row[f].strip() for f in fields):
            out.append(row)
    return out


def _key(spec: LabeledSpec, row: dict) -> str:
    """What the split and subset hashes see: the input texts, never the label or response, so that one input stays in one split."""
    if spec.task in ("sft", "math"):
        return row["prompt"]
    if spec.task == "extractive-qa":
        return row["question"] + "\n" + row["context"]
    return row["text"] + ("\t" + row["text_pair"] if spec.text_pair_column else "")


def _draw(spec: LabeledSpec, train: list[dict], drawn: list[str]) -> tuple[dict[str, list[dict]], dict | None]:
    """Training rows split by content hash, whole near-duplicate groups together when asked (and the groups' account);
    only the splits in `drawn` take a share (a given split's fraction is ignored)."""
    how = spec.split.replace(**{s: getattr(spec.split, s) if s in drawn else 0.0 for s in ("validation", "test")})
    if how.validation == how.test == 0:
        return {"train": train, **{name: [] for name in drawn}}, None
    # QA: every question of an article (without titles, of a context) hashes alike, so it lands in one split.
    unit = squad.group if spec.task == "extractive-qa" else lambda r: _key(spec, r)
    if spec.split.group:
        texts, units = [_key(spec, r) for r in train], [unit(r) for r in train]
        parts, report = groups.draw(train, texts, units, how, spec.contamination_ngram)
    else:
        parts, report = clean.split([{"text": unit(r), "row": r} for r in train], how), None
        parts = {name: [p["row"] for p in part] for name, part in parts.items()}
    return {name: parts[name] for name in ["train", *drawn]}, report


def subset(rows: list[dict], limit: int | None, salt: str, key) -> list[dict]:
    """At most `limit` rows, the first by a salted hash of their key (so file order does not bias the choice), kept in file order."""
    if limit is None or len(rows) <= limit:
        return rows
    rank = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"subset\0{salt}\0{key(rows[i])}".encode()).digest())
    return [rows[i] for i in sorted(rank[:limit])]


def _check_label_sets(spec: LabeledSpec, splits: dict[str, list[dict]]) -> None:
    seen = {r["label"] for r in splits["train"]}
    if len(seen) < 2:
        raise UserError(
            f"The training split has only one label ({', '.join(map(repr, seen))}) and a classifier needs at least two; "
            "check labeled.label_column and labeled.label_before, or add rows with other labels"
        )
    for name in ("validation", "test"):
        unseen = label_order({r["label"] for r in splits[name]} - seen)
        if unseen:
            capped = ", or raise labeled.max_train_rows" if spec.max_train_rows else ""
            raise UserError(
                f"The {name} split has labels that training never saw ({', '.join(unseen)}); "
                f"fix the data, or add training rows with those labels{capped}"
            )
