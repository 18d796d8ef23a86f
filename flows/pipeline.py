"""llm_pipeline: the DAG of DESIGN.md §2 as a table of contents."""

from functools import partial

from prefect import flow

from flows import dispatch
from flows.spec import PipelineSpec
from flows.stages import (
    augment_stage, evaluate_stage, finetune_stage, gate_stage, prepare_labeled_stage, prepare_stage, pretrain_stage, transfer_stage,
)
from tasks import registry
from tasks.tracking import pipeline_run


@flow(name="llm-pipeline", log_prints=True)
def llm_pipeline(spec: PipelineSpec = PipelineSpec()) -> dict[str, str]:
    """Prepare a corpus, pretrain, evaluate, transfer, augment, fine-tune, then gate the result against the champion: each stage optional, unchanged ones reused from MLflow."""
    out: dict[str, str] = {}
    with pipeline_run(spec.name, spec, spec.execution.experiment) as parent:
        run = partial(dispatch.call, retries=spec.execution.stage_retries, experiment=spec.execution.experiment, parent_run_id=parent)
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
            tune = partial(augment_and_finetune, run, spec, spec.finetune.init or model, out["labeled"])
            teacher = spec.augment.teacher if spec.augment else None
            model = out["finetuned"] = tune(teacher=teacher, round=1 if teacher else 0)
            if spec.augment and spec.augment.model_driven:
                model = out["finetuned"] = self_train(tune, spec.augment, model, first_round=1 if teacher else 0)
        if spec.gate:
            lengths = {"max_length": spec.finetune.max_length, "max_new_tokens": spec.finetune.max_new_tokens} if spec.finetune else {}
            out["gate"] = run(gate_stage, spec=spec.gate, model=model, dataset=out.get("labeled") or out["dataset"], **lengths)
    return {"pipeline_run": parent, "model": model, **out}


def augment_and_finetune(run, spec: PipelineSpec, init: str, labeled: str, *, teacher: str | None, round: int) -> str:
    """One student: the labeled data augmented (with `teacher` for the model-driven operations), fine-tuned from `init`."""
    data = labeled
    if spec.augment:  # without a teacher only EDA has work to do, but the pool is checked before anything trains
        data = run(augment_stage, spec=spec.augment, dataset=labeled, teacher=teacher, synonym_model=spec.augment.synonym_model or init, round=round)
    return run(finetune_stage, spec=spec.finetune, model=init, dataset=data, name=spec.name, round=round)


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
