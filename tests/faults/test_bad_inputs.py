"""Bad inputs end to end through `multistep run`: exit 2, one sentence naming the input, nothing registered, nothing left running."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def run_and_look_for_survivors(args: list[str], home: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `multistep ARGS`; once it has exited, list the processes still running with its MULTISTEP_HOME, then end them."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"MULTISTEP_HOME": str(home)}
    # Prefect's default of 20 s to start the embedded server is too short on a loaded 2-core machine (as in conftest).
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "cli.out", "w+") as out, open(home / "cli.err", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        left = []
        try:
            proc.wait(timeout=300)
            left = [p for p in psutil.process_iter() if _belongs_to(p, home)]
        finally:
            for p in left:  # what the check found, then the CLI's process group: a failed test leaves nothing either
                p.kill()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read()), [
            " ".join(p.info["cmdline"] or []) for p in left
        ]


def _belongs_to(process: psutil.Process, home: Path) -> bool:
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        process.info = {"cmdline": process.cmdline()}
        return process.environ().get("MULTISTEP_HOME") == str(home) or str(home) in " ".join(process.info["cmdline"])
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@pytest.fixture
def refused(tmp_path, corpus, tiny_overrides, registered_versions):
    """Run the tiny preset with extra `--set` items; check exit 2, the one sentence, an empty registry and no survivors."""

    def check(*extra: str) -> str:
        home = tmp_path / "home"
        sets = [*tiny_overrides(corpus), *extra]
        result, survivors = run_and_look_for_survivors(
            ["run", "configs/default.yaml", *sum((["--set", s] for s in sets), [])], home
        )
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and result.stderr.count(errors[0].removeprefix("error: ")) == 1, result.stderr[-3000:]
        assert registered_versions(home) == []
        assert survivors == []
        return errors[0]

    return check


@pytest.fixture
def weights_only(tmp_path) -> Path:
    """A model folder with config.json and model.safetensors only: no tokenizer files."""
    from tasks import model as models
    from tasks.data.spec import TokenizerSpec
    from tasks.spec import ModelSpec
    from tasks.tokenizer import train_tokenizer

    tok = train_tokenizer(["a tiny vocabulary"], TokenizerSpec(kind="char"))
    folder = tmp_path / "weights-only"
    models.build(ModelSpec(n_layer=1, n_head=2, n_embd=16, n_positions=32), tok).save_pretrained(folder)
    return folder


def test_a_model_folder_without_tokenizer_files_cannot_supply_the_tokenizer(refused, weights_only):
    # It used to train on nothing: 0 tokens from the text, a "unigram baseline" of 1.00, exit 0 and a registered version.
    assert refused(f"pretrain.init={weights_only}", "data.tokenizer.kind=model") == (
        f"error: Model folder {weights_only} has no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json, vocab.txt, "
        "tokenizer.model, spiece.model): save the tokenizer it was trained with into it (tokenizer.save_pretrained), "
        "or set data.tokenizer.kind to bpe or char."
    )


def test_a_pickle_only_model_folder_is_refused_for_its_weights(refused, weights_only):
    from safetensors.torch import load_file

    torch.save(load_file(weights_only / "model.safetensors"), weights_only / "pytorch_model.bin")
    (weights_only / "model.safetensors").unlink()
    # It used to be told "fewer than one block of data.block_size".
    message = refused(f"pretrain.init={weights_only}", "data.tokenizer.kind=model")
    assert message.startswith(
        f"error: Model folder {weights_only} holds only pickle weights (pytorch_model.bin), which can run code when loaded: "
        "convert them to safetensors"
    ), message


def test_a_binary_source_is_refused_as_binary_even_with_the_encoding_the_old_message_advised(refused, tmp_path):
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 64)  # an executable's header, then anything
    assert refused(f"data.sources=[{binary}]", "data.encoding=latin-1") == (
        f"error: {binary}: a binary file, not text (a NUL byte at offset 7); no data.encoding reads it as text, "
        "so convert it to text or remove it from data.sources"
    )


def test_a_gsm8k_solution_without_its_final_answer_is_refused_with_its_line(tmp_path, registered_versions):
    import gzip
    import json

    train = tmp_path / "train.jsonl.gz"
    records = [
        {"question": "How many legs do 2 cats have?", "answer": "2 x 4 = <<2*4=8>>8\n#### 8"},
        {"question": "How many legs do 3 cats have?", "answer": "3 x 4 = <<3*4=12>>12 legs."},
    ]
    train.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    home = tmp_path / "home"
    sets = [f"labeled.train=[{train}]", f"labeled.test=[{train}]"]
    result, survivors = run_and_look_for_survivors(
        ["run", "configs/gsm8k-smollm2.yaml", *sum((["--set", s] for s in sets), [])], home
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {train}:2: the solution has no final answer `#### <number>`; end it with one, "
        "or set labeled.allow_missing_answer to true to drop such rows"
    ], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and registered_versions(home) == [] and survivors == []


def test_causal_lm_pretraining_continued_from_an_encoder_is_refused(refused, tmp_path, corpus):
    from tests.tasks.tiny_folders import bert_folder

    init = bert_folder(tmp_path / "bert", corpus.read_text().split("\n\n"))
    assert refused(f"pretrain.init={init}", "data.tokenizer.kind=model", "pretrain.objective=clm") == (
        f"error: pretrain.objective clm needs a decoder, but pretrain.init {init} is a bert encoder: "
        "set pretrain.objective to mlm, or continue a decoder such as package:smollm2-135m."
    )
