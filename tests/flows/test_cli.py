"""`multistep run` as a user runs it: bad input ends in one sentence, a non-zero exit, and nothing registered."""

import json
import os
import socket

import pytest


def assert_refused(result, *needles: str) -> None:
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, result.stderr[-3000:]
    # Once: Prefect's flow-run log lines would repeat it for every flow the error passed through.
    assert result.stderr.count(message[0].removeprefix("error: ")) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in message[0], message[0]


@pytest.fixture
def refused(tmp_path, tiny_overrides, run_cli, registered_versions):
    """Run the tiny preset with a bad input; check the refusal and that nothing was registered."""

    def check(data_file, *needles, extra=(), **env):
        home = tmp_path / "home"
        args = [
            "run",
            "configs/default.yaml",
            *sum((["--set", o] for o in tiny_overrides(data_file) + list(extra)), []),
        ]
        result = run_cli(args, home, **env)
        assert_refused(result, *needles)
        assert registered_versions(home) == []
        return result

    return check


def test_missing_file(tmp_path, refused):
    refused(tmp_path / "nope.txt", "nope.txt", "no such file", "data.sources")


def test_empty_file(tmp_path, refused):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    refused(empty, "empty.txt", "empty")


def test_invalid_utf8_names_the_line_and_the_encoding_setting(tmp_path, refused):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\nanother fine line\ncaf\xe9 au lait\n")
    refused(bad, "bad.txt:4", "data.encoding")


def test_malformed_jsonl_line(tmp_path, refused):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n{"text": "two"\n{"text": "three"}\n')
    refused(bad, "bad.jsonl:2", "JSON")


def test_csv_without_the_text_column(tmp_path, refused):
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nhello there,1\n")
    refused(bad, "bad.csv", "'text'", "sentence", "data.text_column")


def test_unknown_spec_key_suggests_the_right_one(corpus, refused):
    refused(corpus, "unknown key `pretrain.train.max_step`", "max_steps", extra=["pretrain.train.max_step=3"])


def test_block_size_beyond_the_models_positions(corpus, refused):
    refused(corpus, "data.block_size (64)", "n_positions (32)", extra=["data.block_size=64"])


def test_unreachable_tracking_server(corpus, refused):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(
        corpus,
        f"http://127.0.0.1:{port}",
        "unreachable",
        "MLFLOW_TRACKING_URI",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
    )


def test_a_bad_file_is_refused_before_the_cli_asks_prefect_for_anything(tmp_path, refused):
    """The CLI reads local data first: with a Prefect API nobody serves, the file's own error still comes out."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n{"text": "two"\n')
    refused(bad, "bad.jsonl:2", "JSON", PREFECT_API_URL=f"http://127.0.0.1:{port}/api")


@pytest.mark.parametrize("value, warned", [("true", True), ("1", True), ("false", False), (None, False)])
def test_unpickling_stays_off_whatever_the_environment_says(tmp_path, monkeypatch, capsys, value, warned):
    from flows import cli

    monkeypatch.setenv("MULTISTEP_HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", value)
    cli._embedded_defaults()
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    warning = (
        f"warning: MLFLOW_ALLOW_PICKLE_DESERIALIZATION={value} is ignored: multistep never unpickles models "
        "(safetensors only), so it runs with false.\n"
    )
    assert capsys.readouterr().err == (warning if warned else "")


def test_missing_config_file(tmp_path, run_cli):
    assert_refused(run_cli(["run", "configs/nope.yaml"], tmp_path / "home"), "configs/nope.yaml", "does not exist")


def test_failed_run_keeps_earlier_results(tmp_path, corpus, tiny_overrides, run_cli, registered_versions, processes_of):
    home = tmp_path / "home"
    sets = sum((["--set", o] for o in tiny_overrides(corpus)), [])
    ok = run_cli(["run", "configs/default.yaml", *sets, "--json"], home)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert processes_of(home) == []  # the CLI stopped its Prefect server before it exited
    assert "registered: models:/tiny-base/1" in ok.stdout
    # --json: the result URIs last
    assert json.loads(ok.stdout.strip().splitlines()[-1])["model"] == "models:/tiny-base/1"
    assert "validation  perplexity" in ok.stdout and "unigram baseline" in ok.stdout
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe")
    failed = run_cli(["run", "configs/default.yaml", *sets, "--set", f"data.sources=[{bad}]"], home)
    assert_refused(failed, "bad.txt:1")
    assert processes_of(home) == []
    assert [int(v.version) for v in registered_versions(home)] == [1]


@pytest.fixture
def refused_finetune(tmp_path, run_cli, registered_versions):
    """Run the SST-2 MiniLM preset on a tiny TSV with a bad input; check the refusal and an empty registry."""

    def check(tsv_text: str, *needles, extra=()):
        data = tmp_path / "tiny.tsv"
        data.write_text(tsv_text)
        home = tmp_path / "home"
        sets = [
            f"labeled.train=[{data}]",
            "labeled.test=[]",
            "labeled.split.validation=0.25",
            "labeled.split.test=0.25",
            "finetune.train.max_steps=2",
            "finetune.train.checkpoint_every=2",
            *extra,
        ]
        result = run_cli(["run", "configs/sst2-minilm.yaml", *sum((["--set", s] for s in sets), [])], home)
        assert_refused(result, *needles)
        assert registered_versions(home) == []
        return result

    return check


GOOD_TSV = "sentence\tlabel\n" + "".join(
    f"row number {i} is {'good' if i % 2 else 'bad'}\t{i % 2}\n" for i in range(40)
)


def test_label_column_missing(refused_finetune):
    refused_finetune(
        GOOD_TSV.replace("\tlabel\n", "\tpolarity\n", 1), "tiny.tsv", "'label'", "polarity", "labeled.label_column"
    )


def test_lora_target_the_model_lacks_lists_the_ones_it_has(refused_finetune):
    refused_finetune(
        GOOD_TSV,
        "no module named 'qkv'",
        "query",
        "value",
        extra=["finetune.method=lora", "finetune.lora_targets=[qkv]"],
    )


def test_a_soup_without_rounds_names_the_fix(refused_finetune):
    refused_finetune(GOOD_TSV, "soup averages the models of rounds", "set rounds", extra=["soup={method: greedy}"])


def test_unknown_package(refused_finetune):
    refused_finetune(GOOD_TSV, "package:bert-huge", "package:minilm", extra=["finetune.init=package:bert-huge"])


def test_a_search_range_that_is_empty_names_its_key(refused_finetune):
    result = refused_finetune(GOOD_TSV, "`rounds.search.lr` is not a range", extra=["rounds.search.lr=[]"])
    assert result.returncode == 2


def test_a_worker_poll_that_is_no_number_stops_the_stack_before_anything_starts(tmp_path, run_cli, processes_of):
    home = tmp_path / "home"
    result = run_cli(["stack", "up"], home, MULTISTEP_WORKER_POLL_S="soon")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: MULTISTEP_WORKER_POLL_S='soon' is not a number of seconds: set it to e.g. 1, or unset it"
    )
    assert not (home / "stack" / "pids.json").exists() and processes_of(home) == []
