"""The CLI's early read of a run's local data: local sources are read with the stages' own checks, remote ones not."""

import pytest

from tasks.data import preflight
from tasks.data.labeled.spec import LabeledSpec
from tasks.data.spec import PrepareSpec
from tasks.errors import UserError


def test_local_sources_are_read_with_the_stages_checks(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="empty.txt"):
        preflight.check_local(PrepareSpec(sources=[str(empty)]), None)
    table = tmp_path / "rows.tsv"
    table.write_text("sentence\tpolarity\nfine\t1\n")
    with pytest.raises(UserError, match="labeled.label_column"):
        preflight.check_local(None, LabeledSpec(train=[str(table)], text_column="sentence"))


def test_a_run_with_any_remote_source_is_left_to_its_stages(tmp_path, monkeypatch):
    def fetched(*args, **kwargs):
        raise AssertionError("read before the stage")

    monkeypatch.setattr(preflight.sources, "read_sources", fetched)
    monkeypatch.setattr(preflight.read, "read_splits", fetched)
    local = tmp_path / "rows.txt"
    local.write_text("a line\n")
    preflight.check_local(
        PrepareSpec(sources=[str(local), "s3://bucket/corpus.txt"]),
        LabeledSpec(train=["hf:stanfordnlp/sst2"], test=[str(local)]),
    )
    with pytest.raises(AssertionError, match="before the stage"):  # and the local ones are read
        preflight.check_local(PrepareSpec(sources=[str(local)]), None)
