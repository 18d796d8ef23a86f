"""`multistep deploy`: what pools mode needs on a Prefect server, made idempotently, then deployments/prefect.yaml registered.

The work pools `cpu` and `gpu` (the gpu pool limited to one flow run per card), the automation that marks a flow run
Crashed when its heartbeats stop (Prefect does not notice a dead worker by itself), and the S3 bucket behind
MLFLOW_ARTIFACTS_DESTINATION.
"""

import os
import subprocess
import sys
from datetime import timedelta

from tasks.errors import UserError
from tasks.tracking import PACKAGE_ROOT

CRASH_AUTOMATION = "multistep: crash flow runs whose heartbeats stopped"


def ensure_pools(cpu: str = "cpu", gpu: str = "gpu", gpus: int = 1) -> None:
    """Process work pools for CPU and GPU stages; the GPU pool runs at most `gpus` flow runs at once (one per card)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        for name, limit in ((cpu, None), (gpu, gpus)):
            try:
                client.read_work_pool(name)
                if limit is not None:
                    client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))
            except ObjectNotFound:
                template = ProcessWorker.get_default_base_job_template()
                client.create_work_pool(
                    WorkPoolCreate(name=name, type="process", base_job_template=template, concurrency_limit=limit)
                )
                print(
                    f"deploy: created work pool {name}" + (f" (at most {limit} flow run(s) at once)" if limit else "")
                )


def ensure_crash_detection(after_s: int = 90) -> None:
    """The automation of Prefect's "detect zombie flows" guide: no heartbeat for `after_s` seconds marks a run Crashed."""
    from prefect import get_client
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(CRASH_AUTOMATION):
            if old.trigger.within == timedelta(seconds=after_s):
                return
            client.delete_automation(old.id)
    Automation(
        name=CRASH_AUTOMATION,
        description="Workers send a heartbeat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds; a run that falls silent "
        "died with its worker, and the pipeline dispatches a Crashed stage again (it resumes from its checkpoint).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },  # fmt: skip
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=f"multistep: no heartbeat for {after_s} s; its worker died"
            )
        ],
    ).create()
    print(f"deploy: flow runs silent for {after_s} s will be marked Crashed")


def ensure_bucket() -> None:
    """Create the bucket of MLFLOW_ARTIFACTS_DESTINATION when it is an S3 URI and does not exist yet."""
    from botocore.exceptions import ClientError

    from tasks import s3

    destination = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if not s3.is_s3(destination):
        return
    bucket, _ = s3.split_s3(destination)
    client = s3.s3_client()
    try:
        s3.check_store(destination)
    except UserError as exc:
        if "not found" not in str(exc):
            raise
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as e:
            raise UserError(
                f"cannot create bucket {bucket} for MLFLOW_ARTIFACTS_DESTINATION ({e}); create it yourself"
            ) from None
        print(f"deploy: created bucket s3://{bucket}")


def register(prefect_file: str = "deployments/prefect.yaml") -> None:
    """`prefect deploy --all` for the project's prefect.yaml, from the repository root."""
    env = {**os.environ, "MULTISTEP_ROOT": os.environ.get("MULTISTEP_ROOT", str(PACKAGE_ROOT))}
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file]
    done = subprocess.run(cmd, cwd=PACKAGE_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"`prefect deploy` failed for {prefect_file}:\n{(done.stdout + done.stderr)[-3000:]}")
    names = [line.split("'")[1] for line in done.stdout.splitlines() if "Deployment '" in line and "'" in line]
    print(f"deploy: registered {len(names)} deployments from {prefect_file}")


def deploy(
    gpus: int = 1,
    crash_after_s: int = 90,
    prefect_file: str = "deployments/prefect.yaml",
    register_deployments: bool = True,
) -> None:
    """Everything pools mode needs on the server that PREFECT_API_URL names."""
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError(
            "deploy registers against a Prefect server: set PREFECT_API_URL (`make stack` writes it to .multistep/stack/env)"
        )
    ensure_pools(gpus=gpus)
    ensure_crash_detection(crash_after_s)
    ensure_bucket()
    if register_deployments:
        register(prefect_file)
