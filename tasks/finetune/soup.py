"""The soup stage's body: average fine-tuned classifiers that share an architecture and an initialisation (a uniform or
greedy model soup, Wortsman et al. 2022), score the soup like a fine-tune, register it under the same name."""

from collections.abc import Callable

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from tasks import model as models
from tasks import registry
from tasks.data import labeled
from tasks.errors import UserError
from tasks.finetune import classify
from tasks.finetune.average import State, load_into, mean, mismatch, weights
from tasks.finetune.spec import SoupSpec
from tasks.tracking import StageRun, log_metrics, resolve_version
from tasks.train import clean_up, work_dir

PARENT = "multistep.parent_model"
# The recipe tags a soup takes from its ingredients (they share them: the gate scores the soup with these lengths).
INHERITED = (PARENT, "multistep.method", "multistep.labels", registry.MAX_LENGTH, registry.MAX_NEW_TOKENS)


def run(spec: SoupSpec, ingredients: list[str], data: str, ctx: StageRun) -> str:
    """Check the ingredients, average them (uniformly or greedily by validation accuracy), score validation and test,
    register the soup as a new version of the ingredients' model; returns its version URI."""
    versions = {uri: version(uri) for uri in ingredients}
    register_as = versions[ingredients[0]].name
    if existing := registry.find_version(register_as, ctx.key):
        print(f"soup: {existing} was already registered by this stage")
        return existing
    states = check(ingredients, versions)
    tags = {uri: v.tags for uri, v in versions.items()}
    labels = labeled.card(data)["labels"]
    max_length = int(tags[ingredients[0]].get(registry.MAX_LENGTH, 128))
    model, tok = classify.load_classifier(ingredients[0], labels)
    rows = {s: labeled.load_rows(data, s) for s in ("train", "validation", "test")}
    splits = classify.encode_splits(tok, rows, labels, max_length)
    trainer = evaluator(model, tok, ctx)

    def score(state: State) -> float:
        load_into(model, state)
        return trainer.evaluate(splits["validation"], metric_key_prefix="validation")["validation_accuracy"]

    if spec.method == "greedy":
        kept, _ = greedy(states, score)
    else:
        kept = list(states)
    load_into(model, mean([states[uri] for uri in kept]))
    dropped = [uri for uri in ingredients if uri not in kept]
    print(f"soup: {spec.method} soup of {', '.join(kept)}" + (f"; left out {', '.join(dropped)}" if dropped else ""))
    metrics = {"soup_ingredients": float(len(kept))}
    for split in ("validation", "test"):
        if len(splits[split]):
            found = trainer.evaluate(splits[split], metric_key_prefix=split)
            metrics.update({k: v for k, v in found.items() if k.endswith(("accuracy", "macro_f1", "loss"))})
    if len(splits["test"]):
        metrics.update(classify.report(trainer, splits["test"], rows["test"], labels))
    print("soup: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    first = tags[ingredients[0]]
    lineage = {k: first[k] for k in INHERITED if k in first}
    lineage |= {"multistep.soup.method": spec.method, "multistep.soup.ingredients": ",".join(kept)}
    lineage |= {"multistep.soup.left_out": ",".join(dropped)}
    return register(model, tok, register_as, metrics, lineage, ctx)


def version(uri: str):
    """The registry version behind an ingredient URI; a soup averages registered fine-tunes only."""
    if not uri.startswith("models:/"):
        raise UserError(
            f"soup averages registered fine-tuned versions (models:/name/version), and {uri} is not one: "
            "let the pipeline's rounds give soup its models, or set soup to null"
        )
    return resolve_version(uri)


def check(ingredients: list[str], versions: dict) -> dict[str, State]:
    """Each ingredient's weights, once they are known to share an architecture and an initialisation; otherwise a
    UserError naming `soup`, the two models that differ, and the fix."""
    if len(set(ingredients)) < 2:
        raise UserError(
            f"soup needs at least two different fine-tuned models and got {', '.join(ingredients)}: "
            "raise rounds.max_rounds (with strategies that change the seed or the learning rate), or set soup to null"
        )
    first, tags = ingredients[0], {uri: v.tags for uri, v in versions.items()}
    for uri in ingredients[1:]:
        if versions[uri].name != versions[first].name:
            raise UserError(
                f"soup registers the soup as a new version of its ingredients' model, and {first} and {uri} are two "
                "models: soup the rounds of one pipeline, or set soup to null"
            )
        if tags[uri].get(PARENT) != tags[first].get(PARENT):
            raise UserError(
                f"soup averages fine-tunes of one initialisation, but {first} started from {tags[first].get(PARENT)} "
                f"and {uri} from {tags[uri].get(PARENT)}: soup the rounds of one pipeline (one finetune.init), or set soup to null"
            )
    where = {uri: models.locate(uri) for uri in ingredients}
    for uri, place in where.items():
        if place.adapter_base:
            raise UserError(
                f"soup averages whole models, and {uri} is a LoRA adapter alone: set finetune.merge_lora to true, or set soup to null"
            )
    kinds = {uri: type(models.saved_config(place)).__name__ for uri, place in where.items()}
    for uri in ingredients[1:]:
        if kinds[uri] != kinds[first]:
            raise UserError(
                f"soup averages models of one architecture, but {first} is a {kinds[first]} and {uri} a {kinds[uri]}: "
                "soup the rounds of one pipeline (one finetune.init), or set soup to null"
            )
    states = {uri: weights(place.model) for uri, place in where.items()}
    problem = mismatch(states)
    if problem:
        raise UserError(
            f"soup averages models of one architecture, but {problem}: soup the rounds of one pipeline (one finetune.init), "
            "or set soup to null"
        )
    return states


def greedy(states: dict[str, State], score: Callable[[State], float]) -> tuple[list[str], float]:
    """Wortsman et al.'s greedy soup: ingredients by their own validation score, best first, each added only if the
    soup's score does not drop; returns the kept ones and the soup's score."""
    alone = {uri: score(state) for uri, state in states.items()}
    order = sorted(states, key=lambda uri: -alone[uri])  # a stable sort: ties keep the rounds' order
    kept, best = [order[0]], alone[order[0]]
    for uri in order[1:]:
        found = score(mean([states[k] for k in [*kept, uri]]))
        print(f"soup: with {uri} validation accuracy {found:.4f} ({'kept' if found >= best else 'left out'})")
        if found >= best:
            kept, best = [*kept, uri], found
    return kept, best


def evaluator(model, tok, ctx: StageRun) -> Trainer:
    """A Trainer that only scores (accuracy, macro-F1, loss) on this machine's device."""
    args = TrainingArguments(
        output_dir=work_dir(ctx),
        per_device_eval_batch_size=32,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
    )
    return Trainer(
        model=model,
        args=args,
        data_collator=DataCollatorWithPadding(tok),
        compute_metrics=classify.scores,
        processing_class=tok,
    )


def register(model, tok, register_as: str, metrics: dict[str, float], tags: dict[str, str], ctx: StageRun) -> str:
    """Log the soup, register it once per stage key with its lineage, put its metrics on the version."""
    logged = models.log(model, tok, task="text-classification", name=register_as)
    log_metrics(ctx.run_id, metrics)
    version = registry.register(logged, register_as, ctx, tags, task="text-classification")
    registry.set_tags(version, {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()})
    clean_up(ctx)
    print(f"soup: registered {version}")
    return version
