"""benchmarks/gpu_check.py on the CPU: every part trains through the pipeline's code and gpu.json holds its numbers."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PARTS = ["env", "gpt2_pipeline", "gpt2_bare", "smollm2_full", "smollm2_lora", "minilm_classify"]


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmarks import each other as scripts do
    import gpu_check

    return gpu_check


def test_every_part_reports_its_numbers(gpu_check, tmp_path):
    code = gpu_check.main(["--cpu", "--out", str(tmp_path), "--steps", "1", "--warmup", "1", "--in-process"])
    report = json.loads((tmp_path / "gpu.json").read_text())
    parts = report["parts"]
    assert {p: r["status"] for p, r in parts.items()} == dict.fromkeys(PARTS, "ok"), parts
    assert code == 0
    # The --cpu preset's GPT-2 (vocabulary 2,048, 2 layers, width 64, context 128): 239,360 weights, of which 8,192 are
    # the position table; 6 N + 12 L T d = 6 × 231,168 + 12 × 2 × 128 × 64 FLOPs per token.
    peak = parts["env"]["matmul_bf16_tflops"]
    assert report["peak_tflops"] == peak > 0
    for part in ("gpt2_pipeline", "gpt2_bare"):
        r = parts[part]
        assert (r["parameters"], r["flops_per_token"]) == (239_360, 1_583_616)
        assert r["tokens_per_second"] > 0 and r["peak_memory_mb"] > 0
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * 1_583_616 / (peak * 1e12))
    # Full trains every weight of the 2-layer Llama; LoRA (rank 16) only q/k/v/o's adapters: 2 × 4 × (64 × 16 + 16 × 64).
    full, lora = parts["smollm2_full"], parts["smollm2_lora"]
    assert (full["trainable"], lora["trainable"], lora["parameters"] - full["parameters"]) == (
        3_277_120,
        16_384,
        16_384,
    )
    for r in (full, lora, parts["minilm_classify"]):
        assert r["steps_per_second"] > 0 and r["peak_memory_mb"] > 0
    summary = report["summary"]
    assert summary["gpt2_pipeline_over_bare"] == pytest.approx(
        parts["gpt2_pipeline"]["tokens_per_second"] / parts["gpt2_bare"]["tokens_per_second"]
    )
    assert summary["smollm2_lora_over_full_steps_per_second"] == pytest.approx(
        lora["steps_per_second"] / full["steps_per_second"]
    )


def test_parts_past_the_budget_are_skipped_and_reported(gpu_check, tmp_path):
    code = gpu_check.main(["--cpu", "--out", str(tmp_path), "--budget", "5", "--in-process"])
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert {p: r["status"] for p, r in report["parts"].items()} == dict.fromkeys(PARTS, "skipped")
    assert report["summary"] == {}
    assert code == 1


def test_a_part_runs_in_a_process_of_its_own(gpu_check, tmp_path):
    (tmp_path / "logs").mkdir()
    with gpu_check._scratch_home():
        env = gpu_check._run("env", gpu_check.PRESETS["cpu"], 120, tmp_path, in_process=False)
        # A failing part (a device torch does not know): the last line of the child's log is its error in gpu.json.
        failed = gpu_check._run("env", replace(gpu_check.PRESETS["cpu"], device="nodevice"), 120, tmp_path, False)
    assert env["status"] == "ok" and env["matmul_bf16_tflops"] > 0 and env["cuda"] is None
    assert failed["status"] == "error"
    assert failed["error"].startswith("RuntimeError: Expected one of cpu, cuda")
    assert failed["error"].endswith("device string: nodevice")
    assert (
        failed["log_tail"][-1]
        == failed["error"]
        == (tmp_path / "logs" / "env.log").read_text().strip().splitlines()[-1]
    )


def test_a_gpt2_part_that_fails_to_compile_is_measured_without(gpu_check, tmp_path, monkeypatch):
    import torch

    def no_compiler(model, **kwargs):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    args = ["--cpu", "--compile", "--parts", "gpt2_bare", "--steps", "1", "--warmup", "1", "--in-process"]
    code = gpu_check.main([*args, "--out", str(tmp_path)])
    bare = json.loads((tmp_path / "gpu.json").read_text())["parts"]["gpt2_bare"]
    assert (bare["status"], bare["compile"], bare["compile_error"]) == ("ok", False, "RuntimeError: no C compiler")
    assert bare["tokens_per_second"] > 0
    assert code == 0


def test_without_the_model_packages_the_fine_tunes_train_fresh_weights_of_the_shipped_shapes(
    gpu_check, tmp_path, monkeypatch
):
    """An offline GPU machine gets the packages' shapes (`gpu.sh --pack`), not their weights: same model, other values."""
    import importlib.util

    import gpu_parts
    import torch

    from tasks.finetune import classify

    shapes = tmp_path / "shapes"
    gpu_parts.save_shapes(str(shapes))
    monkeypatch.setenv(gpu_parts.SHAPES_ENV, str(shapes))
    assert gpu_parts.shapes("minilm") is None  # the package is installed here: its weights are used
    shipped, shipped_tok = classify.load_classifier("package:minilm", ["negative", "positive"])
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith(("gt_all", "llm_")) else find_spec(name, *a),
    )
    assert gpu_parts.shapes("minilm") == f"{shapes}/minilm"

    fresh, fresh_tok = gpu_parts._from_shape(f"{shapes}/minilm", gpu_parts._auto("minilm"), num_labels=2)
    assert type(fresh) is type(shipped) and fresh.num_parameters() == shipped.num_parameters()
    assert not torch.equal(fresh.bert.embeddings.word_embeddings.weight, shipped.bert.embeddings.word_embeddings.weight)
    assert fresh_tok("a quietly moving film")["input_ids"] == shipped_tok("a quietly moving film")["input_ids"]
    llama, tok = gpu_parts._smollm2("package:smollm2-135m")
    assert (llama.config.num_hidden_layers, llama.config.hidden_size, len(tok)) == (30, 576, 49152)

    settings = replace(gpu_check.PRESETS["cpu"], steps=1, warmup=1)
    with gpu_check._scratch_home():
        result = gpu_parts.minilm_classify(settings)
    assert result["weights"] == "random, shape of package:minilm (its package is not installed)"
