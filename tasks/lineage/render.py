"""The lineage tree as text: one line per node, with box-drawing branches."""

import re


def render(tree: dict) -> str:
    """The tree as text, one line per node: `<input>: <uri>  [<stage>, run <id>, flow run <id>]  <details>`."""
    lines = [_line(tree)]
    _branches(tree, "", lines)
    return "\n".join(lines)


def _branches(node: dict, prefix: str, lines: list[str]) -> None:
    children = list(node["inputs"].items())
    for i, (name, child) in enumerate(children):
        last = i == len(children) - 1
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{name}: {_line(child)}")
        _branches(child, prefix + ("   " if last else "│  "), lines)


def _line(node: dict) -> str:
    parts = [_short_uri(node["uri"])]
    where = []
    if node.get("stage"):
        round_ = node["details"].get("round")
        where.append(node["stage"] + (f" round {round_}" if round_ is not None else ""))
    if node.get("run_id"):
        where.append(f"run {node['run_id'][:8]}")
    if node.get("prefect_flow_run"):
        where.append(f"flow run {node['prefect_flow_run'][:8]}")
    if where:
        parts.append(f"[{', '.join(where)}]")
    if node.get("error"):
        parts.append(f"(missing: {node['error']})")
    elif node.get("see_above"):
        parts.append("(see above)")
    else:
        summary = _model_summary(node) if node["kind"] == "model" else _data_summary(node)
        if summary:
            parts.append(summary)
    return "  ".join(parts)


def _model_summary(node: dict) -> str:
    d = node["details"]
    out = []
    if d.get("version") and d["version"] != node["uri"]:
        out.append(f"= {d['version']}")
    if d.get("method"):
        out.append(d["method"])
    if isinstance(d.get("operations"), list):
        out.append("; ".join(_operation(op) for op in d["operations"]) or "no operations")
    elif d.get("operations"):
        out.append("operations (cut short, see --json)")
    if d.get("labels"):
        out.append("labels " + ",".join(d["labels"]))
    if d.get("adapter_base"):
        out.append(f"adapter on {d['adapter_base']}")
    if d.get("metrics"):
        out.append(_metrics(d["metrics"]))
    return ", ".join(out)


def _operation(op) -> str:
    if not isinstance(op, dict):
        return str(op)
    args = " ".join(f"{k}={_compact(v)}" for k, v in op.items() if k != "op")
    return f"{op.get('op', '?')} {args}".strip()


def _compact(value, limit: int = 40) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metrics(metrics: dict, limit: int = 4) -> str:
    # Held-out scores first: they are what a reader compares between versions.
    names = sorted(metrics, key=lambda k: (not k.startswith(("validation_", "test_", "eval_")), k))
    shown = [
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in ((k, metrics[k]) for k in names[:limit])
    ]
    return ", ".join(shown) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _data_summary(node: dict) -> str:
    d = node["details"]
    out = []
    if node.get("digest"):
        out.append(f"digest {_short_digest(node['digest'])}")
    if d.get("rows"):
        out.append(" / ".join(f"{n:,} {split}" for split, n in d["rows"].items()) + " rows")
    ops = d.get("operations") or {}
    if ops:
        added = ", ".join(
            f"{op} +{info.get('rows', 0):,} rows" if isinstance(info, dict) else op for op, info in ops.items()
        )
        teachers = sorted({info["teacher"] for info in ops.values() if isinstance(info, dict) and info.get("teacher")})
        out.append(added + (f" (teacher {', '.join(teachers)})" if teachers else ""))
    return ", ".join(out)


def _short_digest(digest: str) -> str:
    hexpart = digest.removeprefix("sha256:")
    return hexpart[:12] if re.fullmatch(r"[0-9a-f]{12,}", hexpart) else digest


def _short_uri(uri: str) -> str:
    match = re.fullmatch(r"runs:/([0-9a-f]{9,})(/.*)?", uri)
    return f"runs:/{match.group(1)[:8]}…{match.group(2) or ''}" if match else uri
