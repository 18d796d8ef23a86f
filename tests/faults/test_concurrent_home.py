"""Two `multistep run`s started at once on a fresh MULTISTEP_HOME both succeed: the embedded stores (MLflow's SQLite
database, Prefect's under PREFECT_HOME) are created under a file lock, not by two migrations racing."""


def test_two_first_runs_at_once_on_one_fresh_home_both_succeed(
    tmp_path, corpus, tiny_overrides, start_cli, registered_versions
):
    home = tmp_path / "home"
    # another corpus, so that the two pipelines share no stage (that race is not this one)
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(reversed(corpus.read_text().split("\n\n"))))
    started = [
        # PREFECT_HOME unset: each CLI keeps Prefect's database under the fresh home, as a user's first runs do.
        start_cli(["run", "configs/default.yaml", *sum((["--set", o] for o in tiny_overrides(data, name=name)), [])], home, name=name, PREFECT_HOME=None)
        for name, data in (("one", corpus), ("two", other))
    ]  # fmt: skip
    for cli in started:
        result = cli.finish(timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (home / "prefect" / "prefect.db").is_file()
    assert sorted(v.name for v in registered_versions(home)) == ["one-base", "two-base"]
