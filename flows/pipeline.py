"""llm_pipeline: the DAG of DESIGN.md §2 as a table of contents."""

from functools import partial

from prefect import flow

from flows import dispatch
from flows.spec import PipelineSpec
from flows.stages import evaluate_stage, finetune_stage, prepare_labeled_stage, prepare_stage, pretrain_stage, transfer_stage
from tasks.tracking import pipeline_run


@flow(name="llm-pipeline", log_prints=True)
def llm_pipeline(spec: PipelineSpec = PipelineSpec()) -> dict[str, str]:
    """Prepare a corpus, pretrain, evaluate, transfer, fine-tune: each stage optional, unchanged ones reused from MLflow."""
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
            model = out["finetuned"] = run(finetune_stage, spec=spec.finetune, model=spec.finetune.init or model, dataset=out["labeled"], name=spec.name)
    return {"pipeline_run": parent, "model": model, **out}
