"""The pretrain stage's body: a causal LM (or an encoder, for mlm) from scratch or from a model URI, trained on packed
blocks with HF Trainer."""

import mlflow
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer, set_seed

from tasks import distributed, heads, objectives, registry
from tasks import model as models
from tasks import tokenizer as tokenizers
from tasks.data import prepared
from tasks.errors import UserError
from tasks.pretrain.spec import PretrainSpec
from tasks.tracking import StageRun
from tasks.train import BlockDataset, arguments, clean_up, fit, work_dir


def run(spec: PretrainSpec, dataset: str, register_as: str, ctx: StageRun) -> str:
    """Train on the dataset's train blocks and register the result; returns `models:/<register_as>/<version>`."""
    existing = registry.find_version(register_as, ctx.key)
    if existing:  # a crash after registration: the work is done
        print(f"pretrain: {existing} was already registered by this stage")
        return existing
    distributed.check(spec.train, ctx.stage)
    model, tokenizer, blocks = setup(spec, dataset)
    mlflow.log_params(
        {"parameters": model.num_parameters(), "train_blocks": blocks.shape[0], "block_size": blocks.shape[1]}
    )

    if spec.train.max_steps and spec.train.devices > 1:
        distributed.launch(spec, {"dataset": dataset}, ctx, model)
    elif spec.train.max_steps:
        single = build(spec, model, tokenizer, blocks, ctx)
        fit(single, ctx, spec.train.keep_checkpoints)
        model = single.model
    mlm = spec.objective == "mlm"
    task = "fill-mask" if mlm else "text-generation"
    logged = models.log(model, tokenizer, task=task, name=register_as)
    tags = {"multistep.parent_model": spec.init or "", "multistep.objective": spec.objective}
    version = registry.register(logged, register_as, ctx, tags, task=task)
    clean_up(ctx)
    print(f"pretrain: registered {version}")
    return version


def setup(spec: PretrainSpec, dataset: str):
    """The model to train (seeded, so every torchrun rank starts alike), its tokenizer and the train blocks [n, block_size]."""
    blocks = prepared.load_blocks(dataset, "train")
    tokenizer = prepared.load_tokenizer(dataset)
    set_seed(spec.train.seed)
    mlm = spec.objective == "mlm"
    if spec.whole_word_mask and tokenizers.word_starts(tokenizer) is None:
        raise UserError(
            "pretrain.whole_word_mask needs word boundaries, and the dataset's tokenizer (a character vocabulary, or one "
            "without WordPiece ## pieces or a space marker) has none: set pretrain.whole_word_mask to false."
        )
    if spec.init:
        where = models.locate(spec.init)
        objectives.check_init(spec.objective, spec.init, where, tokenizer)
        # The dataset's tokenizer is the one trained with: the model folder need not hold one (data.tokenizer.kind bpe/char).
        auto = AutoModelForMaskedLM if mlm else AutoModelForCausalLM
        model, _ = models.load(spec.init, auto=auto, where=where, tokenizer=False)
        if mlm:
            heads.keep_pooler(model, where.model)
    else:
        if mlm and tokenizer.mask_token is None:  # tokenizers trained by prepare have only <|endoftext|>
            tokenizer.add_special_tokens({"mask_token": "[MASK]"})
        model = models.build(spec.model, tokenizer)
    _check_fits(model, tokenizer, blocks.shape[1], spec)
    return model, tokenizer, blocks


def build(spec: PretrainSpec, model, tokenizer, blocks, ctx: StageRun) -> Trainer:
    """The stage's Trainer over packed blocks."""
    mlm = spec.objective == "mlm"
    dataset = (
        WordBlocks(blocks, tokenizers.word_starts(tokenizer)) if spec.whole_word_mask else BlockDataset(blocks, not mlm)
    )
    # Every weight of a language model takes part in its loss: DDP need not search each step's graph for unused ones.
    args = arguments(spec.train, work_dir(ctx), ddp_find_unused_parameters=False)
    return Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator(spec, tokenizer) if mlm else None
    )


def collator(spec: PretrainSpec, tokenizer) -> DataCollatorForLanguageModeling:
    """mlm's collator: it masks each batch afresh (torch's RNG, so a resumed run masks as an uninterrupted one would)."""
    if not spec.whole_word_mask:
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=spec.mlm_probability)
    # A whole word is always replaced by [MASK]; said here, or transformers warns that it overrides the 80/10/10 split.
    return DataCollatorForLanguageModeling(
        tokenizer,
        whole_word_mask=True,
        mlm_probability=spec.mlm_probability,
        mask_replace_prob=1,
        random_replace_prob=0,
    )


class WordBlocks(BlockDataset):
    """Packed blocks for whole-word masking, with the character offsets transformers reads word boundaries from.

    Packing dropped the text, so the offsets are made up: one character per piece, and a one-character gap before each
    piece that begins a word (`word_starts`), which is all the collator compares (a gap: a new word)."""

    def __init__(self, blocks: np.ndarray, word_starts: np.ndarray):
        super().__init__(blocks, labels=False)
        self.word_starts = torch.from_numpy(word_starts).long()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.blocks[i]
        start = torch.arange(len(ids)) + torch.cumsum(self.word_starts[ids], 0)
        return {"input_ids": ids, "offset_mapping": torch.stack([start, start + 1], dim=1)}


def trainer(spec: PretrainSpec, dataset: str, ctx: StageRun) -> Trainer:
    """What each torchrun rank trains: the Trainer the single-process path builds."""
    return build(spec, *setup(spec, dataset), ctx)


def _check_fits(model, tokenizer, block_size: int, spec: PretrainSpec) -> None:
    positions = models.max_positions(model.config)
    if positions and block_size > positions:
        source = spec.init or "pretrain.model.n_positions"
        raise UserError(
            f"data.block_size ({block_size}) is larger than the {positions} positions of {source}: "
            f"set data.block_size to at most {positions}."
        )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise UserError(
            f"The dataset's tokenizer has {len(tokenizer)} tokens but {spec.init} embeds only "
            f"{model.get_input_embeddings().num_embeddings}: prepare the data with data.tokenizer.kind=model."
        )
