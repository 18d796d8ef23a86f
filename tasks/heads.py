"""A fresh classification head on a model's body, and the architectures the project knows the structure of.

The transfer stage puts a head on when asked (`transfer.labels`); the finetune stage when a classifier's head names other
labels than the data's.
"""

import copy
from pathlib import Path

from safetensors import safe_open
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from tasks.errors import UserError

# model_type → path of the block ModuleList under `model.base_model` (GPT2Model, LlamaModel, BertModel).
BLOCKS = {"gpt2": "h", "llama": "layers", "bert": "encoder.layer"}
# Sequence classification on these reads the last non-pad token, so the config needs a pad id.
DECODERS = {"gpt2", "llama"}


def arch(model: nn.Module) -> str:
    """The model's `model_type`, when it is one of BLOCKS; else a UserError."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in BLOCKS:
        raise UserError(
            f"transfer: {type(model).__name__} is not supported for structure surgery: use a GPT-2, Llama or BERT model."
        )
    return kind


def classification_head(model_or_dir: PreTrainedModel | str | Path, tokenizer, labels: list[str]) -> PreTrainedModel:
    """The model's body under a freshly initialised sequence-classification head for `labels`."""
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise UserError(f"transfer.labels {labels}: a classifier needs at least 2 distinct labels.")
    if isinstance(model_or_dir, PreTrainedModel):
        body = model_or_dir
    else:
        try:
            body = AutoModel.from_pretrained(model_or_dir, use_safetensors=True, trust_remote_code=False)
        except OSError as exc:
            reason = str(exc).splitlines()[0]
            raise UserError(
                f"Cannot load a model from {model_or_dir} ({reason}): point at a folder written by save_pretrained."
            ) from None
    kind = arch(body)
    config = copy.deepcopy(body.config)
    config.id2label = dict(enumerate(labels))  # num_labels follows id2label
    config.label2id = {label: i for i, label in enumerate(labels)}
    if kind in DECODERS:
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise UserError(
                    "The tokenizer has neither a pad nor an eos token: set its pad_token before adding a classification head."
                )
            tokenizer.pad_token = tokenizer.eos_token
        config.pad_token_id = tokenizer.pad_token_id  # the head reads the last token that is not pad
    # Built from the config, then only the body's weights loaded: the head is always new, even when the source
    # already had one of the same shape (from_pretrained would reuse it, and fail on a different shape).
    model = AutoModelForSequenceClassification.from_config(config, dtype=body.dtype)
    missing, unexpected = model.base_model.load_state_dict(body.base_model.state_dict(), strict=False)
    # Only BERT's pooler may be missing: BertForMaskedLM has none, so it starts fresh like the head.
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise UserError(
            f"transfer: the body of {type(body).__name__} does not fit {type(model).__name__} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}): start from a base or LM model of a supported architecture."
        )
    return model.to(body.device).train(body.training)


def keep_pooler(model: PreTrainedModel, folder: str | Path) -> None:
    """Give a BERT masked-LM the pooler its checkpoint in `folder` holds, frozen, so that saving the model keeps it.

    BertForMaskedLM builds its encoder without a pooler and drops a checkpoint's: masked-LM continued from
    package:minilm then registered a model without MiniLM's trained pooler, and a classifier fine-tuned from it started
    with a random one (SST-2, 500 rows: -16.6 points, -8.2 with the pooler kept). Frozen: the MLM loss never reaches
    it, and DDP refuses trainable weights that get no gradient."""
    base = model.base_model
    if model.config.model_type != "bert" or base.pooler is not None:
        return
    weights = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                if key.removeprefix(f"{model.base_model_prefix}.").startswith("pooler."):
                    weights[key.split("pooler.", 1)[1]] = f.get_tensor(key)
    if not weights:
        return
    from transformers.models.bert.modeling_bert import BertPooler  # here: only a BERT masked-LM continuation needs it

    pooler = BertPooler(model.config)
    pooler.load_state_dict(weights)
    base.pooler = pooler.to(model.device, model.dtype).requires_grad_(False)
