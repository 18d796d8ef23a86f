"""llm_pipeline: the DAG of DESIGN.md §2 as a table of contents."""

from functools import partial

from prefect import flow

from flows import dispatch
from flows.spec import PipelineSpec
from flows.stages import evaluate_stage, prepare_stage, pretrain_stage
from tasks.tracking import pipeline_run


@flow(name="llm-pipeline", log_prints=True)
def llm_pipeline(spec: PipelineSpec = PipelineSpec()) -> dict[str, str]:
    """Prepare data, pretrain a causal LM, evaluate it; unchanged stages are reused from MLflow."""
    with pipeline_run(spec.name, spec, spec.execution.experiment) as parent:
        run = partial(dispatch.call, retries=spec.execution.stage_retries, experiment=spec.execution.experiment, parent_run_id=parent)
        dataset = run(prepare_stage, spec=spec.data, tokenizer_from=spec.pretrain.init)
        model = run(pretrain_stage, spec=spec.pretrain, dataset=dataset, name=spec.name)
        evaluation = run(evaluate_stage, spec=spec.evaluate, model=model, dataset=dataset)
    return {"pipeline_run": parent, "dataset": dataset, "model": model, "evaluation": evaluation}
