"""Continued (adaptive) pretraining through llm_pipeline from model folders with tokenizers of their own: masked LM from a
tiny BERT, causal LM from a tiny Llama, each on the corpus encoded by the model's own tokenizer (data.tokenizer.kind model)."""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks import model as models
from tasks.data import prepared
from tasks.errors import UserError
from tasks.finetune.classify import load_classifier
from tests.tasks.tiny_folders import bert_folder, llama_folder, wordpiece

pytestmark = pytest.mark.usefixtures("prefect_api")


def continued(corpus: Path, init: Path, objective: str) -> list[str]:
    return [
        "name=dapt",
        f"data.sources=[{corpus}]",
        "data.tokenizer.kind=model",
        "data.block_size=32",
        "data.split.validation=0.1",
        "data.split.test=0.1",
        f"pretrain.init={init}",
        f"pretrain.objective={objective}",
        "pretrain.train.max_steps=4",
        "pretrain.train.batch_size=8",
        "pretrain.train.warmup_steps=0",
        "pretrain.train.lr=0.01",
        "pretrain.train.log_every=2",
        "pretrain.train.checkpoint_every=4",
        "evaluate=null",
        "gate=null",
    ]


def changed(init: Path, model) -> bool:
    """Whether training moved the input embeddings away from the init folder's."""
    before, _ = models.load(str(init), auto=type(model), tokenizer=False)
    return not torch.equal(before.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_continued_masked_lm_from_a_bert_folder_with_its_own_tokenizer(home, corpus, tmp_path):
    # A BertModel with a pooler and no MLM head, as package:minilm ships.
    init = bert_folder(tmp_path / "bert", corpus.read_text().split("\n\n"), encoder=True)
    overrides = [*continued(corpus, init, "mlm"), "pretrain.whole_word_mask=true"]  # words from the ## pieces
    result = llm_pipeline(load("configs/default.yaml", overrides))

    # Every block is one BERT input: [CLS], 30 tokens of text whose documents end in [SEP], [SEP].
    blocks, tok = prepared.load_blocks(result["dataset"], "train"), prepared.load_tokenizer(result["dataset"])
    assert (blocks[:, 0] == tok.cls_token_id).all() and (blocks[:, -1] == tok.sep_token_id).all()
    assert tok.get_vocab() == models.load_tokenizer(init).get_vocab()
    encoder, registered_tok = models.load(result["base"], auto=AutoModelForMaskedLM)
    assert type(encoder).__name__ == "BertForMaskedLM" and registered_tok.mask_token == "[MASK]"
    assert changed(init, encoder)
    version = MlflowClient().get_model_version("dapt-base", "1")
    assert version.tags["multistep.objective"] == "mlm" and version.tags["multistep.parent_model"] == str(init)

    # BertForMaskedLM drops the init's pooler: the continuation must still register it, or the classifier fine-tuned
    # from the result starts with a random pooler (SST-2, 500 rows: 8.4 of 16.6 points lost). The MLM loss never
    # reaches it, so it stays as the init had it.
    source = AutoModel.from_pretrained(init).pooler.state_dict()
    classifier, _ = load_classifier(result["base"], ["neg", "pos"])
    assert all(torch.equal(v, source[k]) for k, v in classifier.bert.pooler.state_dict().items())


def test_continued_causal_lm_from_a_llama_folder_with_its_own_tokenizer(home, corpus, tmp_path):
    init = llama_folder(tmp_path / "llama", corpus.read_text().split("\n\n"))
    result = llm_pipeline(load("configs/default.yaml", continued(corpus, init, "clm")))

    # The template puts <s> before each text, so every block starts with it; documents end in </s>.
    blocks, tok = prepared.load_blocks(result["dataset"], "train"), prepared.load_tokenizer(result["dataset"])
    assert (blocks[:, 0] == tok.bos_token_id).all() and (blocks[:, 1:] == tok.eos_token_id).any()
    decoder, _ = models.load(result["base"], auto=AutoModelForCausalLM)
    assert type(decoder).__name__ == "LlamaForCausalLM" and changed(init, decoder)
    assert MlflowClient().get_model_version("dapt-base", "1").tags["multistep.objective"] == "clm"


def stage_runs(stage: str) -> list:
    return MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()], f"tags.`multistep.stage` = '{stage}'"
    )


@pytest.mark.parametrize(
    "folder, objective, message",
    [
        (
            lambda path, texts: llama_folder(path, texts),
            "mlm",
            "pretrain.objective mlm needs an encoder, but pretrain.init {init} is a decoder-only llama model: "
            "set pretrain.objective to clm, or continue an encoder such as package:minilm.",
        ),
        (
            lambda path, texts: bert_folder(path, texts),
            "clm",
            "pretrain.objective clm needs a decoder, but pretrain.init {init} is a bert encoder: "
            "set pretrain.objective to mlm, or continue a decoder such as package:smollm2-135m.",
        ),
        (
            lambda path, texts: bert_folder(path, texts, wordpiece(texts, drop=("[CLS]", "[SEP]"))),
            "mlm",
            "The tokenizer of {init} has neither an eos nor a sep token, so packed documents could not be told apart: "
            "use a model whose tokenizer has one, or set data.tokenizer.kind to bpe or char to train one that has.",
        ),
        (
            lambda path, texts: bert_folder(path, texts, wordpiece(texts, drop=("[MASK]",))),
            "mlm",
            "pretrain.objective mlm needs a mask token, and the tokenizer pretrain.init {init} is continued with has none: "
            "continue an encoder whose own tokenizer has one (e.g. package:minilm), with data.tokenizer.kind model.",
        ),
    ],
    ids=["mlm-on-a-decoder", "clm-on-an-encoder", "no-eos-nor-sep", "no-mask-token"],
)
def test_a_model_that_cannot_be_continued_so_is_refused_before_any_data_is_prepared(
    home, corpus, tmp_path, registered_versions, folder, objective, message
):
    init = folder(tmp_path / "init", corpus.read_text().split("\n\n"))
    with pytest.raises(UserError) as refused:
        llm_pipeline(load("configs/default.yaml", continued(corpus, init, objective)))
    assert str(refused.value) == message.format(init=init)
    assert registered_versions(home) == [] and stage_runs("pretrain") == []
    (prepare,) = stage_runs("prepare")
    assert not MlflowClient().list_artifacts(prepare.info.run_id)  # refused before anything was written


def test_whole_word_masking_without_word_boundaries_is_refused_before_training(
    home, corpus, tiny_overrides, registered_versions
):
    overrides = [
        "pretrain.model.arch=bert",
        "pretrain.objective=mlm",
        "pretrain.whole_word_mask=true",
        "evaluate=null",
        "gate=null",
    ]
    with pytest.raises(UserError) as refused:
        llm_pipeline(load("configs/default.yaml", tiny_overrides(corpus) + overrides))  # a character tokenizer
    assert str(refused.value) == (
        "pretrain.whole_word_mask needs word boundaries, and the dataset's tokenizer (a character vocabulary, or one "
        "without WordPiece ## pieces or a space marker) has none: set pretrain.whole_word_mask to false."
    )
    assert registered_versions(home) == [] and not MlflowClient().list_artifacts(stage_runs("pretrain")[0].info.run_id)


def test_continuing_with_mlm_needs_the_models_own_tokenizer(corpus, tmp_path):
    with pytest.raises(
        UserError, match="pretrain.objective mlm continues pretrain.init with the mask token of its own"
    ):
        load("configs/default.yaml", [*continued(corpus, tmp_path, "mlm"), "data.tokenizer.kind=bpe"])
