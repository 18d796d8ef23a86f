"""Read and validate every source of a PrepareSpec before anything else happens.

Rows are `{"text": str, "origin": str}`; origin is `path:line` (1-based) for text, JSONL and CSV,
`path#row` (0-based row index) for Parquet and `save_to_disk` folders. `read_table`, `files`,
`dataset_folder` and `digest` also serve other specs with `format` and `encoding` fields (the
labeled-data spec); messages name their settings through `formats.setting`.
"""

import codecs
import hashlib
import os
import sys
from pathlib import Path

from tasks import s3, storage
from tasks.data import formats
from tasks.data.spec import PrepareSpec
from tasks.errors import UserError

EXTENSIONS = {".txt": "text", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
PACKAGES = ("pydoc-topics",)
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def read_sources(spec: PrepareSpec) -> list[dict]:
    """All rows of all sources, in source order; raises UserError on the first problem found."""
    check_encoding(spec)
    rows = []
    for src in spec.sources:
        found = _read_source(src, spec)
        if not found:
            raise UserError(
                f"{src}: produced no rows; check data.text_column and data.text_unit, or remove it from data.sources"
            )
        rows.extend(found)
    return rows


def source_digests(spec: PrepareSpec) -> dict[str, str]:
    """{source: content digest} for the stage cache key: content, never paths or mtimes."""
    return {src: digest(src, spec) for src in spec.sources}


def check_encoding(spec) -> None:
    """A named encoding must be one Python knows."""
    if spec.encoding is not None:
        try:
            codecs.lookup(spec.encoding)
        except LookupError:
            raise UserError(
                f"{formats.setting(spec, 'encoding')} {spec.encoding!r} is not a known text encoding; "
                "use a Python codec name such as utf-8 or latin-1"
            ) from None


def _read_source(src: str, spec: PrepareSpec) -> list[dict]:
    if src.startswith("package:"):
        return _read_package(src, spec)
    if src.startswith("hf:") or dataset_folder(src, spec):
        column, key = spec.text_column, formats.setting(spec, "text_column")
        found = read_table(src, spec, {column: key})
        return [
            {"text": formats.text_value(origin, column, rec[column], key), "origin": origin} for origin, rec in found
        ]
    return [row for f in files(src, spec) for row in formats.parse(f, _read(f), _format(f, spec), spec)]


def read_table(src: str, spec, columns: dict[str, str]) -> list[tuple[str, dict]]:
    """`(origin, {column: value})` for every record of a tabular source: JSONL, CSV/TSV or Parquet files, folders, S3, save_to_disk, hf:."""
    if src.startswith("hf:"):
        return _dataset_records(src, _load_hf(src, spec), columns)
    folder = dataset_folder(src, spec)
    if folder:
        return _dataset_records(str(folder), _load_dataset_folder(folder), columns)
    return [rec for f in files(src, spec) for rec in formats.records(f, _read(f), _format(f, spec), spec, columns)]


def _read(name: str) -> bytes:
    """A file's bytes, gunzipped when its name ends in .gz (`train.jsonl.gz` reads as JSONL)."""
    data = storage.read_bytes(name)
    return formats.gunzip(name, data) if Path(name).suffix.lower() == ".gz" else data


def files(src: str, spec) -> list[str]:
    """The files a local or s3:// source names, in order: itself, or its folder's (prefix's) supported non-hidden files."""
    if s3.is_s3(src):
        if spec.format == "arrow":
            raise UserError(
                f"{src}: save_to_disk folders are read from local disk only; download it and point at the folder"
            )
        return list(_s3_files(src, spec))
    return [str(f) for f in _local_files(_local_path(src, spec), spec)]


def dataset_folder(src: str, spec) -> Path | None:
    """The local save_to_disk folder the source names, or None when it names something else."""
    if src.startswith(("package:", "hf:")) or s3.is_s3(src):
        return None
    path = _local_path(src, spec)
    return path if _is_dataset_folder(path, spec) else None


def digest(src: str, spec) -> str:
    """Content digest of one source: file bytes (compressed files as they are), folder contents, S3 ETags, hub revision."""
    if src.startswith("package:"):
        _package_name(src)
        return f"{src}@python-{' '.join(sys.version.split())}"
    if src.startswith("hf:"):
        return f"hf:{_hf_id(src, spec)[0]}@{_hf_revision(src)}"
    if s3.is_s3(src):
        etags = _s3_files(src, spec)
        if list(etags) == [src]:
            return f"etag:{etags[src]}"
        return (
            "etags:sha256:" + hashlib.sha256("\n".join(f"{u} {tag}" for u, tag in etags.items()).encode()).hexdigest()
        )
    path = _local_path(src, spec)
    if path.is_file():
        return "sha256:" + _file_sha256(path)
    found = _dataset_files(path) if _is_dataset_folder(path, spec) else _local_files(path, spec)
    pairs = "\n".join(f"{f.relative_to(path).as_posix()} {_file_sha256(f)}" for f in found)
    return "sha256:" + hashlib.sha256(pairs.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- where the bytes come from ------------------------------------------------------------------


def _local_path(src: str, spec) -> Path:
    path = storage.file_uri_to_path(src)
    if not path.exists():
        raise UserError(
            f"{src}: no such file or folder (working directory {Path.cwd()}); fix the path in {formats.setting(spec, 'sources')}"
        )
    return path


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _supported(name: str, spec: PrepareSpec) -> bool:
    # With an explicit format every file counts; with auto only the known extensions do.
    return spec.format != "auto" or _suffix(name) in EXTENSIONS


def _suffix(name: str) -> str:
    """The extension that says the format, under a .gz if there is one."""
    path = Path(name)
    return (path.with_suffix("") if path.suffix.lower() == ".gz" else path).suffix.lower()


def _local_files(path: Path, spec: PrepareSpec) -> list[Path]:
    """The file itself, or a folder's supported non-hidden files, recursively, sorted by relative path."""
    if path.is_file():
        return [path]
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path).as_posix())),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    files = [p for p in files if _supported(p.name, spec)]
    if not files:
        raise UserError(
            f"{path}: the folder has no supported files ({' '.join(EXTENSIONS)}); add files or set {formats.setting(spec, 'format')}"
        )
    return files


def _s3_files(src: str, spec: PrepareSpec) -> dict[str, str]:
    """{URI: ETag} of the object the source names, or of the supported non-hidden objects under it."""
    objects = s3.s3_etags(src)
    if not objects:
        raise UserError(
            f"{src}: no object or prefix with that name; check the bucket and key in {formats.setting(spec, 'sources')}"
        )
    if list(objects) == [src]:  # one object, named exactly
        return objects
    base = src.rstrip("/") + "/"
    files = {u: tag for u, tag in objects.items() if not _hidden(u[len(base) :]) and _supported(u, spec)}
    if not files:
        raise UserError(
            f"{src}: the prefix has no supported files ({' '.join(EXTENSIONS)}); add files or set {formats.setting(spec, 'format')}"
        )
    return files


def _format(name: str, spec: PrepareSpec) -> str:
    if spec.format != "auto":
        return spec.format
    suffix = _suffix(name)
    if suffix not in EXTENSIONS:
        raise UserError(
            f"{name}: unknown file type {suffix or '(none)'!r}; use {' '.join(EXTENSIONS)} or set {formats.setting(spec, 'format')}"
        )
    return EXTENSIONS[suffix]


# ---- datasets folders, the hub, packages --------------------------------------------------------


def _is_dataset_folder(path: Path, spec: PrepareSpec) -> bool:
    marked = path.is_dir() and any((path / m).is_file() for m in _DATASET_MARKERS)
    if spec.format == "arrow" and not marked:
        markers = " or ".join(_DATASET_MARKERS)
        raise UserError(
            f"{path}: not a save_to_disk folder (no {markers}); set {formats.setting(spec, 'format')} to match the files"
        )
    return marked and spec.format in ("auto", "arrow")


def _dataset_files(path: Path) -> list[Path]:
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())


def _dataset_records(name: str, ds, columns: dict[str, str]) -> list[tuple[str, dict]]:
    """Records of a Dataset, or of a DatasetDict's "train" split, or of all its splits (by name) when it has none."""
    if isinstance(ds, dict):  # a DatasetDict
        splits = ["train"] if "train" in ds else sorted(ds)
        return [rec for split in splits for rec in _dataset_records(f"{name}/{split}", ds[split], columns)]
    return formats.column_records(name, ds.column_names, lambda c: ds[c], columns)


def _load_dataset_folder(path: Path):
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several kinds for a damaged folder
        raise UserError(
            f"{path}: not a readable save_to_disk folder ({type(e).__name__}: {e}); save it again with save_to_disk"
        ) from None


def _hf_id(src: str, spec=None) -> tuple[str, str | None]:
    dataset_id, _, split = src[3:].partition(":")
    if not dataset_id:
        raise UserError(f"{src}: no dataset id; write hf:<owner/name> or hf:<owner/name>:<split>")
    offline = {os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    if offline & {"1", "true", "yes", "on"}:
        raise UserError(
            f"{src}: hf: sources need network and offline mode is on (HF_HUB_OFFLINE); "
            f"download the data and point {formats.setting(spec, 'sources')} at the local folder instead"
        )
    return dataset_id, split or None


def _load_hf(src: str, spec):
    import datasets

    dataset_id, split = _hf_id(src, spec)
    try:
        return datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # network, auth and missing-dataset errors come from several libraries
        raise UserError(
            f"{src}: could not load from the Hugging Face Hub ({type(e).__name__}); hf: sources need network, "
            f"so download the data and point {formats.setting(spec, 'sources')} at the local folder instead"
        ) from e


def _hf_revision(src: str) -> str:
    dataset_id, _ = _hf_id(src)
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset_id, timeout=10).sha or "unknown"
    except Exception:  # the digest is best effort; reading the source reports the real problem
        return "unknown"


def _package_name(src: str) -> str:
    name = src.removeprefix("package:")
    if name not in PACKAGES:
        raise UserError(f"{src}: unknown package source; use one of {', '.join('package:' + p for p in PACKAGES)}")
    return name


def _read_package(src: str, spec: PrepareSpec) -> list[dict]:
    _package_name(src)
    try:
        from pydoc_data.topics import topics  # CPython's bundled documentation
    except ImportError:  # some Linux distributions strip it from their Python
        raise UserError(
            f"{src}: this Python has no pydoc_data module; install the full Python or use another source"
        ) from None
    return [
        row for topic in sorted(topics) for row in formats.cut_text(f"{src}/{topic}", topics[topic], spec.text_unit)
    ]
