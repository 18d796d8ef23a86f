"""A run's local data read once before anything starts, so that a bad file is reported in seconds: before the CLI's
Prefect server has booted and torch is imported (10-15 s on two cores). The stages read it again where they run (on a
worker, from the UI) and stay the authority; S3 and hf: sources are left to them, since reading them here would
fetch them twice."""

from tasks import s3
from tasks.data import sources
from tasks.data.labeled import read
from tasks.data.labeled.spec import SPLITS


def check_local(data, labeled) -> None:
    """Read a PrepareSpec's and a LabeledSpec's sources (either may be None) when all of them are local files or
    packages; raises the stages' own UserError on the first problem."""
    if data is not None and all(_local(src) for src in data.sources):
        sources.read_sources(data)
    if labeled is not None and all(_local(src) for split in SPLITS for src in getattr(labeled, split)):
        read.read_splits(labeled)


def _local(src: str) -> bool:
    return not (s3.is_s3(src) or src.startswith("hf:"))
