"""evaluate_pipeline: score any model versions on any prepared dataset, side by side, with intervals against the first.

A worker imports this module before it runs the flow: the scoring, which loads torch and transformers, is imported
inside the flow.
"""

from prefect import flow

from tasks.tracking import pipeline_run


@flow(name="evaluate-models", log_prints=True)
def evaluate_pipeline(
    models: list[str], dataset: str, split: str = "test", max_rows: int | None = None, experiment: str = "multistep"
) -> dict:
    """Score each model URI on the dataset URI's split (one nested MLflow run each); the first model is the reference for the intervals."""
    from tasks.evaluate import scoring

    with pipeline_run("evaluate-models", None, experiment) as parent:
        results = scoring.compare(models, dataset, split=split, max_rows=max_rows, parent_run_id=parent)
    return {"pipeline_run": parent, "results": results}
