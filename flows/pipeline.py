"""llm_pipeline: the DAG of DESIGN.md §2 as a table of contents."""

from functools import partial

from prefect import flow

from flows import dispatch
from flows.spec import PipelineSpec
from flows.stages import (
    augment_stage, evaluate_stage, finetune_stage, gate_stage, prepare_labeled_stage, prepare_stage, pretrain_stage, transfer_stage,
)
from tasks import registry, rounds, tracking
from tasks.tracking import pipeline_run


@flow(name="llm-pipeline", log_prints=True)
def llm_pipeline(spec: PipelineSpec = PipelineSpec(), parent_run_id: str | None = None) -> dict[str, str]:
    """Prepare a corpus, pretrain, evaluate, transfer, augment, fine-tune, then gate the result against the champion: each stage optional, unchanged ones reused from MLflow.

    Args:
        spec: The pipeline: every stage's settings.
        parent_run_id: MLflow run to nest this pipeline's run under (a sweep sets it for its cells); empty: a top-level run.
    """
    return run_pipeline(spec, parent_run_id=parent_run_id)


def run_pipeline(spec: PipelineSpec, retrain: bool = False, parent_run_id: str | None = None) -> dict[str, str]:
    """The DAG; with `retrain`, fine-tuning starts from the gate's champion (see registry.retraining_start)."""
    out: dict[str, str] = {}
    dispatch.prepare(planned(spec), spec.execution)
    with pipeline_run(spec.name, spec, spec.execution.experiment, parent_run_id) as parent:
        run = partial(dispatch.call, execution=spec.execution, experiment=spec.execution.experiment, parent_run_id=parent)
        model = None
        if spec.pretrain:
            out["dataset"] = run(prepare_stage, spec=spec.data, tokenizer_from=spec.pretrain.init)
            model = out["base"] = run(pretrain_stage, spec=spec.pretrain, dataset=out["dataset"], name=spec.name)
        if spec.evaluate:
            out["evaluation"] = run(evaluate_stage, spec=spec.evaluate, model=model, dataset=out["dataset"])
        if spec.transfer:
            model = out["transferred"] = run(transfer_stage, spec=spec.transfer, model=spec.transfer.init or model, name=spec.name)
        if spec.finetune:
            out["labeled"] = run(prepare_labeled_stage, spec=spec.labeled)
            init, teacher = spec.finetune.init or model, spec.augment.teacher if spec.augment else None
            if retrain:
                init = registry.retraining_start(spec.name + spec.finetune.register_suffix, spec.gate.alias, out["labeled"], fallback=init)
            if spec.rounds:
                model = out["finetuned"] = adjust_and_retry(run, spec, init, out["labeled"], parent)
            else:
                tune = partial(augment_and_finetune, run, spec, init, out["labeled"])
                model = out["finetuned"] = tune(teacher=teacher, round=1 if teacher else 0)
                if spec.augment and spec.augment.model_driven:
                    model = out["finetuned"] = self_train(tune, spec.augment, model, first_round=1 if teacher else 0)
        if spec.gate:
            lengths = {"max_length": spec.finetune.max_length, "max_new_tokens": spec.finetune.max_new_tokens} if spec.finetune else {}
            out["gate"] = run(gate_stage, spec=spec.gate, model=model, dataset=out.get("labeled") or out["dataset"], **lengths)
    return {"pipeline_run": parent, "model": model, **out}


def planned(spec: PipelineSpec) -> list[tuple[str, str]]:
    """(stage, hardware) for every stage flow the spec will run, so that pools mode can check them all before the first."""
    stages = [("prepare", "cpu"), ("pretrain", "gpu")] if spec.pretrain else []
    stages += [("evaluate", "gpu")] if spec.evaluate else []
    stages += [("transfer", "gpu")] if spec.transfer else []
    stages += [("prepare-labeled", "cpu")] if spec.finetune else []
    stages += [("augment", spec.augment.hardware)] if spec.augment else []
    stages += [("finetune", "gpu")] if spec.finetune else []
    stages += [("gate", "gpu")] if spec.gate else []
    return stages


def augment_and_finetune(run, spec: PipelineSpec, init: str, labeled: str, *, teacher: str | None, round: int) -> str:
    """One student: the labeled data augmented (with `teacher` for the model-driven operations), fine-tuned from `init`."""
    data = labeled
    if spec.augment:  # without a teacher only EDA has work to do, but the pool is checked before anything trains
        data = run(augment_stage, spec=spec.augment, dataset=labeled, teacher=teacher, synonym_model=spec.augment.synonym_model or init, round=round)
    return run(finetune_stage, spec=spec.finetune, model=init, dataset=data, name=spec.name, round=round)


def adjust_and_retry(run, spec: PipelineSpec, init: str, labeled: str, parent: str) -> str:
    """Rounds of fine-tuning, each under the next strategy; stop after `patience` rounds without a better validation score."""
    metric, sign = rounds.validation_metric(spec.labeled.task)
    best, best_score, stale = None, None, 0
    for r in range(1, spec.rounds.max_rounds + 1):
        strategy = spec.rounds.strategy(r)
        adjusted = rounds.apply(spec, strategy)
        teacher = best if strategy.pseudo_refresh else (adjusted.augment.teacher if adjusted.augment else None)
        model = augment_and_finetune(run, adjusted, init, labeled, teacher=teacher, round=r)
        score = registry.metric(model, metric)
        tracking.log_round(parent, r, metric, score, strategy.describe(), model)
        print(f"round {r} ({strategy.describe()}): {metric} {score:.4f} → {model}")
        if best is None or sign * (score - best_score) > spec.rounds.min_delta:
            best, best_score, stale = model, score, 0
        else:
            stale += 1
            if stale >= spec.rounds.patience:
                print(f"rounds: {stale} round(s) without a better {metric} than {best_score:.4f}; stopping, {best} is the challenger")
                break
    return best


def self_train(tune, augment, teacher: str, first_round: int) -> str:
    """Teacher → student rounds; stop when a student's validation accuracy gains less than `min_gain`; returns the best model."""
    for round in range(first_round + 1, augment.rounds + 1):
        student = tune(teacher=teacher, round=round)
        before, after = registry.metric(teacher, "validation_accuracy"), registry.metric(student, "validation_accuracy")
        if before is None:  # a given teacher that no multistep stage scored: the first student simply takes over
            teacher = student
            continue
        print(f"self-training round {round}: validation accuracy {before:.4f} (teacher {teacher}) → {after:.4f} (student {student})")
        if after - before < augment.min_gain or after <= before:
            print(f"self-training: stopping, the student did not beat its teacher by augment.min_gain ({augment.min_gain}); keeping {teacher}")
            return teacher
        teacher = student
    return teacher
