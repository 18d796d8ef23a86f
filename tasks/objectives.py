"""What a pretraining objective needs of the model it continues: an architecture it fits (mlm an encoder, clm a decoder)
and, for mlm, a mask token. Shared by the pretrain stage and the prepare stage, which checks before it reads the corpus."""

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from tasks import model as models
from tasks.errors import UserError


def architecture(where: models.Located) -> tuple[str, str]:
    """(model_type, "encoder" | "decoder" | "other") from the saved config alone, without loading weights."""
    if where.adapter_base:  # a LoRA adapter continues its base model's architecture
        where = models.locate(where.adapter_base)
    config = models.saved_config(where)
    kind = config.model_type
    # BERT-like types are in both mappings (BertLMHeadModel): an encoder unless it was saved as a decoder.
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return kind, "encoder"
    return kind, "decoder" if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "other"


def check_init(objective: str, init: str, where: models.Located, tokenizer) -> None:
    """Refuse an objective the init model was not built for, and mlm with a tokenizer that has no mask token."""
    kind, role = architecture(where)
    if role == "other":
        raise UserError(
            f"pretrain.init {init} is a {kind} model, with neither a masked-LM nor a causal-LM head in transformers: "
            "continue an encoder (pretrain.objective mlm, e.g. package:minilm) or a decoder (clm, e.g. package:smollm2-135m)."
        )
    if objective == "mlm" and role == "decoder":
        raise UserError(
            f"pretrain.objective mlm needs an encoder, but pretrain.init {init} is a decoder-only {kind} model: "
            "set pretrain.objective to clm, or continue an encoder such as package:minilm."
        )
    if objective == "clm" and role == "encoder":
        raise UserError(
            f"pretrain.objective clm needs a decoder, but pretrain.init {init} is a {kind} encoder: "
            "set pretrain.objective to mlm, or continue a decoder such as package:smollm2-135m."
        )
    if objective == "mlm" and tokenizer.mask_token is None:
        # From scratch a [MASK] is added to the vocabulary; a trained model has no embedding row for one.
        raise UserError(
            f"pretrain.objective mlm needs a mask token, and the tokenizer pretrain.init {init} is continued with has none: "
            "continue an encoder whose own tokenizer has one (e.g. package:minilm), with data.tokenizer.kind model."
        )
