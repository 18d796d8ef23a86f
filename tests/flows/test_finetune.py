"""Fine-tuning and transfer through llm_pipeline on tiny models: what gets registered, with which lineage and metrics."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModelForSequenceClassification

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks import model as models

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def pairs(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    words = ["cat", "dog", "house", "tree", "water", "bread", "sun", "moon"]
    path.write_text(
        "".join(
            json.dumps({"prompt": f"repeat {w} {i}", "response": f"{w} {i}"}) + "\n"
            for i in range(60)
            for w in words[:2]
        )
    )
    return path


def finetune_overrides(data: Path, *extra: str) -> list[str]:
    return [
        "labeled.task=classification",
        f"labeled.train=[{data}]",
        "labeled.text_column=sentence",
        "labeled.split.validation=0.2",
        "labeled.split.test=0.2",
        "finetune.train.max_steps=12",
        "finetune.train.batch_size=16",
        "finetune.train.lr=0.003",
        "finetune.train.warmup_steps=0",
        "finetune.train.checkpoint_every=6",
        "finetune.train.log_every=3",
        "finetune.max_length=16",
        *extra,
    ]


def test_classification_from_the_pretrained_model(home, corpus, sentiment, tiny_overrides, flow_run_logs):
    # 24 steps over whole rows (32 characters) learn the separable set: seed 42 reaches accuracy 1.0 on validation and
    # test; a classifier that learned nothing, or learned shuffled labels, stays near 0.5.
    spec = load(
        "configs/default.yaml",
        tiny_overrides(corpus)
        + finetune_overrides(
            sentiment,
            "finetune.train.max_steps=24",
            "finetune.train.checkpoint_every=12",
            "finetune.train.log_every=6",
            "finetune.max_length=32",
        ),
    )
    result = llm_pipeline(spec)
    assert result["finetuned"] == result["model"] == "models:/tiny/1"
    version = MlflowClient().get_model_version("tiny", "1")
    assert version.tags["multistep.parent_model"] == "models:/tiny-base/1"
    assert version.tags["multistep.labels"] == "0,1" and version.tags["multistep.method"] == "full"
    assert (
        float(version.tags["metric.validation_accuracy"]) >= 0.95
        and float(version.tags["metric.test_accuracy"]) >= 0.95
    )
    assert float(version.tags["metric.test_macro_f1"]) >= 0.95
    assert {"metric.test_ece", "metric.test_nll", "metric.test_precision_0", "metric.test_recall_1"} <= set(
        version.tags
    )
    files = {f.path for f in MlflowClient().list_artifacts(version.run_id, "evaluation")}
    assert {
        "evaluation/test_confusion.png",
        "evaluation/test_calibration.png",
        "evaluation/test_predictions.json",
        "evaluation/test_report.json",
    } <= files
    assert "loss_curves.png" in {f.path for f in MlflowClient().list_artifacts(version.run_id)}
    # The pipeline ends in a gate decision: the first classifier of its name is promoted.
    assert version.tags["gate.decision"] == "promoted" and version.tags["gate.metric"] == "accuracy"
    assert str(MlflowClient().get_model_version_by_alias("tiny", "champion").version) == "1"
    root = Path(mlflow.artifacts.download_artifacts(result["model"]))
    model = AutoModelForSequenceClassification.from_pretrained(root / "model", use_safetensors=True)
    assert model.config.id2label == {0: "0", 1: "1"}
    # Issue 14: what the registry and the Prefect log say about it.
    assert version.description.startswith("**models:/tiny/1**: classifier fine-tuned from models:/tiny-base/1 (full).")
    assert f"**Test metrics:** test_accuracy {float(version.tags['metric.test_accuracy']):.4g}" in version.description
    assert f"**Gate:** promoted — {version.tags['gate.reason']}" in version.description
    # validation is scored at each checkpoint (12, 24): one line each in the finetune flow run, with MLflow's values
    logs = flow_run_logs(version.tags["prefect.flow_run_id"])
    said = [m for m in logs if " evaluation: eval_" in m]
    # ...and only those: the scoring after training (validation, test) is the stage's own line, not a step's
    assert [m for m in logs if " evaluation: " in m] == said
    accuracy = MlflowClient().get_metric_history(version.run_id, "eval_accuracy")
    assert [m.step for m in accuracy] == [12, 24]
    assert [m.split(" evaluation:")[0] for m in said] == ["finetune: step 12/24", "finetune: step 24/24"]
    assert all(f"eval_accuracy {a.value:.4g}" in m for a, m in zip(accuracy, said))


def test_head_only_on_the_packaged_minilm(home, sentiment):
    spec = load(
        "configs/sst2-minilm.yaml",
        [
            "name=mini",
            f"labeled.train=[{sentiment}]",
            "labeled.test=[]",
            "labeled.split.validation=0.2",
            "labeled.split.test=0.2",
            "finetune.method=head",
            "finetune.train.max_steps=4",
            "finetune.train.checkpoint_every=2",
            "finetune.train.batch_size=8",
            "finetune.max_length=16",
        ],
    )
    result = llm_pipeline(spec)
    base, _ = models.load("package:minilm", auto=AutoModelForSequenceClassification, num_labels=2)
    tuned, _ = models.load(result["model"], auto=AutoModelForSequenceClassification)
    # Head-only: the encoder is the shipped one, bit for bit.
    for (name, a), b in zip(base.bert.state_dict().items(), tuned.bert.state_dict().values()):
        assert torch.equal(a, b), name
    assert MlflowClient().get_model_version("mini", "1").tags["multistep.method"] == "head"


def lora_sft(overrides: list[str], pairs) -> list[str]:
    """The tiny preset fine-tuned with LoRA on the prompt/response pairs (each test adds its steps and sizes)."""
    split = ["labeled.split.validation=0.2", "labeled.split.test=0.2"]
    return overrides + ["labeled.task=sft", f"labeled.train=[{pairs}]", *split, "finetune.method=lora"]


def test_lora_sft_merged_scores_generations_before_and_after(home, corpus, pairs, tiny_overrides):
    spec = load(
        "configs/default.yaml",
        lora_sft(tiny_overrides(corpus), pairs)
        + [
            "finetune.lora_rank=4",
            "finetune.train.max_steps=6",
            "finetune.train.batch_size=8",
            "finetune.train.checkpoint_every=3",
            "finetune.train.lr=0.01",
            "finetune.max_length=32",
            "finetune.generation_rows=4",
            "finetune.max_new_tokens=4",
        ],
    )
    result = llm_pipeline(spec)
    run = MlflowClient().get_run(MlflowClient().get_model_version("tiny", "1").run_id)
    assert {
        "bleu",
        "bleu_before",
        "chrf",
        "chrf_before",
        "exact_match",
        "test_loss",
        "test_loss_before",
        "trainable_fraction",
    } <= set(run.data.metrics)
    assert 0 < run.data.metrics["trainable_fraction"] < 0.2
    table = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/generations.json")).read_text()
    )
    assert set(table["columns"]) == {"prompt", "reference", "before", "after"}
    merged, _ = models.load(result["model"])  # a plain causal LM: the adapters were merged
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_transfer_registers_the_surgery_in_the_lineage(home, corpus, tiny_overrides):
    spec = load(
        "configs/default.yaml",
        tiny_overrides(corpus) + ["transfer.insert_identity_at=[1]", "transfer.add_tokens=[<q>]"],
    )
    result = llm_pipeline(spec)
    assert result["transferred"] == "models:/tiny-transfer/1"
    tags = MlflowClient().get_model_version("tiny-transfer", "1").tags
    assert [op["op"] for op in json.loads(tags["multistep.operations"])] == ["add_tokens", "insert_identity"]
    assert tags["multistep.parent_model"] == "models:/tiny-base/1"
    assert (
        MlflowClient()
        .get_model_version("tiny-transfer", "1")
        .description.startswith(
            "**models:/tiny-transfer/1**: causal LM made from models:/tiny-base/1 by model surgery (add_tokens, insert_identity)."
        )
    )
    base, tok = models.load("models:/tiny-base/1")
    grown, grown_tok = models.load(result["transferred"])
    assert grown.config.n_layer == base.config.n_layer + 1 and "<q>" in grown_tok.get_vocab()
    ids = torch.tensor([tok.encode("the data model")])
    assert torch.allclose(grown(ids).logits[..., : base.config.vocab_size], base(ids).logits, atol=1e-6)


def test_masked_lm_pretraining_then_classification(home, corpus, sentiment, tiny_overrides):
    from transformers import AutoModelForMaskedLM

    spec = load(
        "configs/default.yaml",
        tiny_overrides(corpus)
        + [
            "pretrain.model.arch=bert",
            "pretrain.objective=mlm",
            "pretrain.mlm_probability=0.2",
            "evaluate=null",
            *finetune_overrides(sentiment, "finetune.train.max_steps=6", "finetune.train.checkpoint_every=3"),
        ],
    )
    result = llm_pipeline(spec)
    encoder, tok = models.load(result["base"], auto=AutoModelForMaskedLM)
    assert type(encoder).__name__ == "BertForMaskedLM" and tok.mask_token == "[MASK]"
    base = MlflowClient().get_model_version("tiny-base", "1")
    assert base.tags["multistep.objective"] == "mlm"
    assert base.description.startswith("**models:/tiny-base/1**: masked LM pretrained from scratch.")
    assert MlflowClient().get_model_version("tiny", "1").tags["multistep.parent_model"] == result["base"]


def test_objective_must_fit_the_architecture():
    from tasks.errors import UserError

    with pytest.raises(UserError, match="pretrain.objective mlm does not fit pretrain.model.arch gpt2"):
        load("configs/default.yaml", ["pretrain.objective=mlm", "evaluate=null"])


def test_lora_adapter_version_records_its_base_and_loads_on_top_of_it(home, corpus, pairs, tiny_overrides):
    from peft import PeftModel

    spec = load(
        "configs/default.yaml",
        lora_sft(tiny_overrides(corpus), pairs)
        + [
            "finetune.merge_lora=false",
            "finetune.lora_rank=4",
            "finetune.train.max_steps=4",
            "finetune.train.batch_size=8",
            "finetune.train.checkpoint_every=2",
            "finetune.train.lr=0.05",
            "finetune.max_length=32",
            "finetune.generation_rows=0",
        ],
    )
    result = llm_pipeline(spec)
    version = MlflowClient().get_model_version("tiny", "1")
    assert version.tags["multistep.adapter_base"] == "models:/tiny-base/1"
    root = Path(mlflow.artifacts.download_artifacts(result["model"]))
    assert (root / "adapter_model.safetensors").exists() and not list(root.glob("model.safetensors"))
    adapted, tok = models.load(result["model"])
    base, _ = models.load("models:/tiny-base/1")
    assert isinstance(adapted, PeftModel)
    ids = torch.tensor([tok.encode("repeat cat 3")])
    assert not torch.allclose(adapted(input_ids=ids).logits, base(input_ids=ids).logits)  # the adapter was trained
    # The registry and the run's summary say how to load it: the project's loader, which puts it on its base.
    loads = 'model, tokenizer = load("models:/tiny/1", auto=AutoModelForCausalLM)'
    assert version.description.startswith(
        "**models:/tiny/1**: instruction-tuned causal LM (SFT), a LoRA adapter on models:/tiny-base/1."
    )
    assert f"```python\nfrom transformers import AutoModelForCausalLM\nfrom tasks.model import load\n{loads}\n```" in (
        version.description
    )
    summary = MlflowClient().get_run(result["pipeline_run"]).data.tags["mlflow.note.content"]
    assert (
        'load:       python -c "from transformers import AutoModelForCausalLM; from tasks.model import load; '
        "print(load('models:/tiny/1', auto=AutoModelForCausalLM))\""
    ) in summary
