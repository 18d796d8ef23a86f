"""train.compile: kept where torch.compile works, eager with one warning where it fails (a warning, not a crash)."""

import pytest
import torch

from tasks import train
from tasks.spec import TrainSpec


@pytest.fixture(autouse=True)
def fresh_probe():
    """The probe runs once per process: each test starts without its answer, and leaves none behind."""
    train.compile_failure.cache_clear()
    yield
    train.compile_failure.cache_clear()


def test_a_failing_torch_compile_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch, capsys):
    def broken(fn, *args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nsecond line of detail")

    monkeypatch.setattr(torch, "compile", broken)
    args = train.arguments(TrainSpec(compile=True), str(tmp_path))
    assert args.torch_compile is False
    assert capsys.readouterr().out == (
        "warning: train.compile is on, but torch.compile fails here (RuntimeError: InvalidCxxCompiler: No working C++ "
        "compiler found): training runs eagerly\n"
    )


def test_a_working_torch_compile_is_kept(tmp_path, monkeypatch, capsys):
    probed = []

    def works(fn, *args, **kwargs):
        probed.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", works)
    assert train.arguments(TrainSpec(compile=True), str(tmp_path)).torch_compile is True
    assert train.arguments(TrainSpec(compile=True), str(tmp_path)).torch_compile is True
    assert len(probed) == 1  # once per process
    assert capsys.readouterr().out == ""


def test_compile_off_never_probes(tmp_path, monkeypatch):
    def probed(*args, **kwargs):
        raise AssertionError("torch.compile was called with train.compile off")

    monkeypatch.setattr(torch, "compile", probed)
    assert train.arguments(TrainSpec(compile=False), str(tmp_path)).torch_compile is False
