"""Scheduled retraining: fine-tune the champion on the newest labeled data; the gate promotes the result only if it is better."""

from prefect import flow

from flows.pipeline import run_pipeline
from flows.spec import PipelineSpec
from tasks.errors import UserError


@flow(name="retrain", log_prints=True)
def retrain(spec: PipelineSpec) -> dict[str, str]:
    """Fine-tune `models:/<name>@champion` on the labeled sources as they are now and gate it; unchanged data reuses every stage."""
    if not (spec.finetune and spec.gate) or spec.pretrain or spec.transfer:
        raise UserError(
            "retrain fine-tunes the champion and gates the result: give it labeled, finetune and gate, and set pretrain and transfer to null"
        )
    return run_pipeline(spec, retrain=True)
