"""`multistep lineage`: the ancestry of a model version, read back from the tags and data cards stages leave in MLflow.

This module builds the tree (`ancestry`); `render` turns it into text.
"""

import json
import re
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks import backend
from tasks.errors import UserError
from tasks.tracking import DIGEST, PREFECT_FLOW_RUN, ROUND, STAGE, resolve_version

INPUT = "multistep.input."
# Inputs in the order a reader follows them: what a stage started from, what it learned from, then raw sources.
ORDER = (
    "model",
    "init",
    "tokenizer_from",
    "dataset",
    "teacher",
    "synonym_model",
    "source",
    "train",
    "validation",
    "test",
    "pool",
)
HOW_TO_ASK = "pass models:/<name>/<version> or models:/<name>@<alias> (or a dataset URI a stage returned, runs:/<run_id>/<artifact>)"


def connect() -> str:
    """Point MLflow at the tracking store the pipelines wrote to, without creating an empty one; returns its URI."""
    uri = backend.tracking_uri()
    if uri.startswith(("http://", "https://")):
        backend.check_server(uri)
    elif uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(
            f"There is no MLflow store at {uri.removeprefix('sqlite:///')}: run a pipeline first (`multistep run configs/<preset>.yaml`), "
            "or set MULTISTEP_HOME or MLFLOW_TRACKING_URI to where one ran."
        )
    mlflow.set_tracking_uri(uri)
    return uri


def ancestry(uri: str) -> dict:
    """The tree of stages, datasets and sources behind a model version (or a stage's dataset), one node per URI."""
    if uri.startswith("models:/"):
        _check_model(uri)
    elif uri.startswith("runs:/"):
        _check_run(uri)
    else:
        raise UserError(f"{uri} is not a registered model version, so it has no recorded lineage: {HOW_TO_ASK}.")
    return _node(uri, {}, {})


def _node(uri: str, seen: dict[str, dict], sources: dict[str, str]) -> dict:
    if uri.startswith("models:/"):
        return _model(uri, seen)
    if uri.startswith("runs:/"):
        return _dataset(uri, seen)
    # package:, hf:, local paths, s3://: leaves, digested as the stage that read them recorded (not as they are now).
    return _blank(uri, "source", digest=sources.get(uri))


def _blank(uri: str, kind: str, **fields) -> dict:
    return {
        "uri": uri,
        "kind": kind,
        "stage": None,
        "run_id": None,
        "prefect_flow_run": None,
        "digest": None,
        "details": {},
        "inputs": {},
        **fields,
    }


def _again(uri: str, node: dict) -> dict:
    """A node met before (a shared parent, or a cycle): its own fields, no subtree."""
    return {**node, "uri": uri, "inputs": {}, "see_above": True}


def _model(uri: str, seen: dict[str, dict]) -> dict:
    try:
        mv = resolve_version(uri)
    except UserError as exc:  # a parent deleted since: say so in the tree rather than lose the rest of it
        return _blank(uri, "model", error=str(exc))
    key = f"models:/{mv.name}/{mv.version}"
    if key in seen:
        return _again(uri, seen[key])
    tags = mv.tags
    run_id = tags.get("multistep.stage_run") or mv.run_id
    run_tags = _run_tags(run_id)
    node = _blank(
        uri,
        "model",
        stage=tags.get(STAGE) or run_tags.get(STAGE),
        run_id=run_id,
        prefect_flow_run=tags.get(PREFECT_FLOW_RUN) or run_tags.get(PREFECT_FLOW_RUN) or None,
        digest=tags.get(DIGEST),
    )
    seen[key] = node
    details = {
        "version": key,
        "method": tags.get("multistep.method"),
        "labels": tags["multistep.labels"].split(",") if tags.get("multistep.labels") else None,
        "operations": _json(tags.get("multistep.operations")),
        "round": _int(run_tags.get(ROUND)),
        "metrics": {k.removeprefix("metric."): _number(v) for k, v in sorted(tags.items()) if k.startswith("metric.")}
        or None,
        "parent_model": tags.get("multistep.parent_model"),
        "adapter_base": tags.get("multistep.adapter_base"),
        "git_commit": tags.get("git.commit"),
        "code_version": tags.get("multistep.code_version"),
        "pipeline_run": tags.get("multistep.pipeline_run") or run_tags.get("mlflow.parentRunId"),
    }
    node["details"] = {k: v for k, v in details.items() if v not in (None, "")}
    node["inputs"] = {name: _node(u, seen, {}) for name, u in _inputs(tags) or _inputs(run_tags)}
    return node


def _dataset(uri: str, seen: dict[str, dict]) -> dict:
    if uri in seen:
        return _again(uri, seen[uri])
    run_id = uri.removeprefix("runs:/").split("/", 1)[0]
    try:
        tags = MlflowClient().get_run(run_id).data.tags
    except MlflowException as exc:
        return _blank(
            uri,
            "dataset",
            run_id=run_id,
            error=f"run {run_id} is not in the tracking store ({exc.message.splitlines()[0]})",
        )
    card = _card(uri)
    node = _blank(
        uri,
        "dataset",
        stage=tags.get(STAGE),
        run_id=run_id,
        prefect_flow_run=tags.get(PREFECT_FLOW_RUN) or None,
        digest=tags.get(DIGEST) or card.get("digest"),
    )
    seen[uri] = node
    augment = card.get("augment") or {}
    details = {
        "round": _int(tags.get(ROUND)),
        "task": card.get("task"),
        "rows": {
            split: info["rows"]
            for split, info in card.get("splits", {}).items()
            if isinstance(info, dict) and "rows" in info
        }
        or None,
        "operations": augment.get("operations"),
        "parent": augment.get("parent"),
        "pipeline_run": tags.get("mlflow.parentRunId"),
    }
    node["details"] = {k: v for k, v in details.items() if v not in (None, "")}
    node["inputs"] = {name: _node(u, seen, card.get("sources") or {}) for name, u in _inputs(tags)}
    return node


def _inputs(tags: dict[str, str]) -> list[tuple[str, str]]:
    found = [(k.removeprefix(INPUT), v) for k, v in tags.items() if k.startswith(INPUT) and v]
    return sorted(found, key=lambda item: _order(item[0]))


def _order(name: str) -> tuple:
    base, number = re.fullmatch(r"(.*?)(\d*)", name).groups()
    return (ORDER.index(base) if base in ORDER else len(ORDER), base, int(number) if number else -1)


def _run_tags(run_id: str | None) -> dict[str, str]:
    try:
        return MlflowClient().get_run(run_id).data.tags if run_id else {}
    except MlflowException:  # the run was deleted; the version's own tags still tell most of the story
        return {}


def _card(uri: str) -> dict:
    """The dataset's card.json, or {} for an artifact without one (an evaluation report) or one that is gone."""
    try:
        return json.loads(Path(mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/card.json")).read_text())
    except (MlflowException, OSError, ValueError):
        return {}


def _json(text: str | None):
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:  # cut at the tag's length limit
        return text


def _int(text: str | None) -> int | None:
    return int(text) if text not in (None, "") and text.lstrip("-").isdigit() else None


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


# ---- errors a user can cause ----------------------------------------------------------------------


def _check_model(uri: str) -> None:
    """Raise one sentence naming what exists when `uri` names no registered version."""
    ref = uri.removeprefix("models:/")
    name, alias = ref.split("@", 1) if "@" in ref else (ref.partition("/")[0], None)
    version = None if alias is not None else ref.partition("/")[2]
    if not name or not (alias or version):
        raise UserError(f"{uri} names no version: {HOW_TO_ASK}.")
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
        listed = f"it holds {_few(names)}" if names else "it holds no models yet (run a pipeline first)"
        raise UserError(
            f"Model {uri} is not in the registry at {mlflow.get_tracking_uri()}: no registered model is named {name!r}, and {listed}; "
            "browse the registry with `make ui`."
        ) from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{_quote(name)}'"))
    aliases = dict(getattr(model, "aliases", None) or {})
    if (alias is not None and alias not in aliases) or (
        version is not None and (not version.isdigit() or int(version) not in versions)
    ):
        which = f"no alias @{alias}" if alias is not None else f"no version {version}"
        held = (
            f"version{'s' if len(versions) > 1 else ''} {_few([str(v) for v in versions])}"
            if versions
            else "no versions"
        )
        if aliases:
            held += " and aliases " + ", ".join(f"@{a} → {v}" for a, v in sorted(aliases.items()))
        raise UserError(
            f"Model {uri} is not in the registry: {name!r} has {which}, only {held}; browse the registry with `make ui`."
        )


def _check_run(uri: str) -> None:
    run_id = uri.removeprefix("runs:/").split("/", 1)[0]
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(
            f"{uri}: there is no run {run_id!r} in the tracking store at {mlflow.get_tracking_uri()}: {HOW_TO_ASK}."
        ) from None


def _few(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
