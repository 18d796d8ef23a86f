"""The pretrain stage: a causal LM from scratch or from a model URI, trained on packed blocks with HF Trainer."""

import mlflow
from pydantic import Field
from transformers import Trainer, set_seed

from tasks import model as models
from tasks import registry
from tasks.data import prepared
from tasks.errors import UserError
from tasks.spec import Spec
from tasks.tracking import StageRun
from tasks.train import BlockDataset, TrainSpec, arguments, clean_up, fit, work_dir


class PretrainSpec(Spec):
    init: str | None = None
    """Continue pretraining this model (models:/name/version, models:/name@alias, a local folder, hf:<id>); empty trains `model` from scratch."""
    model: models.ModelSpec = models.ModelSpec()
    """Architecture and size of a model trained from scratch (ignored when `init` is set)."""
    train: TrainSpec = TrainSpec()
    """Optimisation, logging and checkpointing."""
    register_suffix: str = Field("-base", pattern=r"^[A-Za-z0-9_.-]*$")
    """The model is registered as `<name><suffix>`."""


def run(spec: PretrainSpec, dataset: str, register_as: str, ctx: StageRun) -> str:
    """Train on the dataset's train blocks and register the result; returns `models:/<register_as>/<version>`."""
    existing = registry.find_version(register_as, ctx.key)
    if existing:  # a crash after registration: the work is done
        print(f"pretrain: {existing} was already registered by this stage")
        return existing
    blocks = prepared.load_blocks(dataset, "train")
    tokenizer = prepared.load_tokenizer(dataset)
    set_seed(spec.train.seed)
    if spec.init:
        model, _ = models.load(spec.init)
    else:
        model = models.build(spec.model, tokenizer)
    _check_fits(model, tokenizer, blocks.shape[1], spec)
    mlflow.log_params({"parameters": model.num_parameters(), "train_blocks": blocks.shape[0], "block_size": blocks.shape[1]})

    if spec.train.max_steps:
        trainer = Trainer(model=model, args=arguments(spec.train, work_dir(ctx)), train_dataset=BlockDataset(blocks))
        fit(trainer, ctx, spec.train.keep_checkpoints)
        model = trainer.model
    logged = models.log(model, tokenizer)
    version = registry.register(logged, register_as, ctx, {"multistep.parent_model": spec.init or ""})
    clean_up(ctx)
    print(f"pretrain: registered {version}")
    return version


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
