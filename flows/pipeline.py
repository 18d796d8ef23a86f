"""llm_pipeline: the DAG of DESIGN.md §2 as a table of contents."""

import re
import time
from functools import partial

from prefect import flow

from flows import dispatch
from flows.spec import PipelineSpec
from flows.stages import (
    STAGES,
    augment_stage,
    evaluate_stage,
    finetune_stage,
    gate_stage,
    prepare_labeled_stage,
    prepare_stage,
    pretrain_stage,
    soup_stage,
    transfer_stage,
)
from tasks import registry, report, rounds
from tasks.spec import OptionalStr
from tasks.tracking import pipeline_run


def run_name() -> str:
    """The pipeline flow run's name (Prefect asks before the run starts): see `name_for`."""
    from prefect.runtime import flow_run

    return name_for(flow_run.name, flow_run.parameters.get("spec"))


def name_for(current: str | None, spec: PipelineSpec | dict | None) -> str:
    """`<pipeline name>-<MMDD-HHMM>`, or the name the run was given (typed in the Prefect form, set by a sweep)."""
    # Prefect names an unnamed run with two random words (`classy-jackalope`); any other name was chosen by someone.
    if current and not re.fullmatch(r"[a-z]+-[a-z]+", current):
        return current
    name = spec.name if isinstance(spec, PipelineSpec) else (spec or {}).get("name", PipelineSpec().name)
    return f"{name}-{time.strftime('%m%d-%H%M')}"


@flow(name="llm-pipeline", log_prints=True, flow_run_name=run_name)
def llm_pipeline(spec: PipelineSpec = PipelineSpec(), parent_run_id: OptionalStr = None) -> dict[str, str]:
    """Prepare a corpus, pretrain, evaluate, transfer, augment, fine-tune, then gate the result against the champion: each stage optional, unchanged ones reused from MLflow.

    Args:
        spec: The pipeline: every stage's settings.
        parent_run_id: MLflow run to nest this pipeline's run under (a sweep sets it for its cells); empty: a top-level run.
    """
    return run_pipeline(spec, parent_run_id=parent_run_id)


def run_pipeline(spec: PipelineSpec, retrain: bool = False, parent_run_id: str | None = None) -> dict[str, str]:
    """The DAG; with `retrain`, fine-tuning starts from the gate's champion (see registry.retraining_start)."""
    ex, out, model, start = spec.execution, {}, None, time.perf_counter()
    dispatch.prepare(planned(spec), ex)
    with pipeline_run(spec.name, spec, ex.experiment, parent_run_id) as parent:
        if spec.pretrain:
            out["dataset"] = dispatch.call(
                prepare_stage,
                ex,
                parent,
                spec=spec.data,
                tokenizer_from=spec.pretrain.init,
                objective=spec.pretrain.objective,
            )
            model = out["base"] = dispatch.call(
                pretrain_stage, ex, parent, spec=spec.pretrain, dataset=out["dataset"], name=spec.name
            )
        if spec.evaluate:
            out["evaluation"] = dispatch.call(
                evaluate_stage, ex, parent, spec=spec.evaluate, model=model, dataset=out["dataset"]
            )
        if spec.transfer:
            init = spec.transfer.init or model
            model = out["transferred"] = dispatch.call(
                transfer_stage, ex, parent, spec=spec.transfer, model=init, name=spec.name
            )
        if spec.finetune:
            labeled = out["labeled"] = dispatch.call(prepare_labeled_stage, ex, parent, spec=spec.labeled)
            init = spec.finetune.init or model
            if retrain:
                init = registry.retraining_start(
                    spec.name + spec.finetune.register_suffix, spec.gate.alias, labeled, fallback=init
                )
            # more than one student, or augmented rows: the loops are in tasks/rounds.py
            made = []  # every student, in order: a soup's ingredients
            if spec.rounds or spec.augment:
                tune = partial(student, ex, parent, init, labeled, made)
                model = rounds.adjust_and_retry(spec, tune, parent) if spec.rounds else rounds.self_train(spec, tune)
            else:
                model = dispatch.call(
                    finetune_stage, ex, parent, spec=spec.finetune, model=init, dataset=labeled, name=spec.name
                )
            out["finetuned"] = model
            if spec.soup:  # the rounds' models averaged; a round that repeated another's recipe gave the same model
                ingredients = list(dict.fromkeys(made))
                model = out["soup"] = dispatch.call(
                    soup_stage, ex, parent, spec=spec.soup, models=ingredients, dataset=labeled
                )
        if spec.gate:
            out["gate"] = dispatch.call(
                gate_stage, ex, parent, spec=spec.gate, model=model, dataset=out.get("labeled") or out["dataset"]
            )
    result = {"pipeline_run": parent, "model": model, **out}
    report.publish(result, time.perf_counter() - start, STAGES, spec)
    return result


def student(
    ex, parent: str, init: str, labeled: str, made: list[str], spec: PipelineSpec, teacher: str | None, round: int
) -> str:
    """One student: the labeled data augmented (with `teacher` for the model-driven operations), fine-tuned from `init`;
    its version is appended to `made`."""
    data = labeled
    if spec.augment:  # without a teacher only EDA has work to do, but the pool is checked before anything trains
        synonyms = spec.augment.synonym_model or init
        data = dispatch.call(
            augment_stage,
            ex,
            parent,
            spec=spec.augment,
            dataset=labeled,
            teacher=teacher,
            synonym_model=synonyms,
            round=round,
        )
    model = dispatch.call(
        finetune_stage, ex, parent, spec=spec.finetune, model=init, dataset=data, name=spec.name, round=round
    )
    made.append(model)
    return model


def planned(spec: PipelineSpec) -> list[tuple[str, str]]:
    """(stage, hardware) for every stage flow the spec will run, so that pools mode can check them all before the first."""
    stages = [(name, s.hardware) for name, s in STAGES.items() if getattr(spec, s.runs_if) is not None]
    return [(name, spec.augment.hardware if hardware == "spec" else hardware) for name, hardware in stages]
