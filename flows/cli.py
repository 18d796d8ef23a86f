"""`multistep run CONFIG [--set a.b=c ...]`: run a preset with the embedded stack (or the servers the environment names).

`multistep sweep CONFIG [--seeds 0 1 2] [--set a.b=c ...] [--json]`: conditions × seeds, one pipeline each, and a significance table.

`multistep lineage MODEL_URI [--json]`: print the stages, datasets and sources behind a registered model version.
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from flows import embedded, supervise
from tasks.interrupt import Interrupted


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:  # the process's own command line (the `multistep` script, `python -m flows.cli`)
        supervise.exit_now(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="multistep", description="Multi-step LLM training as a Prefect workflow.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline preset end to end")
    run.add_argument("config", help="a YAML preset, e.g. configs/default.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. pretrain.train.max_steps=50",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="end with one line of JSON: the result URIs (model, datasets, runs), for scripts",
    )
    sweep = sub.add_parser(
        "sweep",
        help="run a sweep: conditions × seeds (× grid), one pipeline each, then a table with paired intervals against the baseline",
    )
    sweep.add_argument("config", help="a sweep YAML file, e.g. configs/sweeps/sst2-augment-gains.yaml")
    sweep.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        metavar="SEED",
        help="the seeds instead of the file's, e.g. --seeds 0 1 2",
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sweep field, e.g. base.finetune.train.max_steps=50 or execution.mode=pools",
    )
    sweep.add_argument(
        "--json",
        action="store_true",
        help="end with one line of JSON: the report (rows, cells, MLflow run), for scripts",
    )
    evaluate = sub.add_parser("evaluate", help="score registered model versions on a prepared dataset, side by side")
    evaluate.add_argument(
        "models",
        nargs="+",
        metavar="MODEL_URI",
        help="models:/<name>/<version>, models:/<name>@champion, a folder, package:minilm …; the first is the reference for the intervals",
    )
    evaluate.add_argument(
        "data",
        metavar="DATASET_URI",
        help="a dataset a prepare stage returned: runs:/<run_id>/labeled (or /dataset, /augmented)",
    )
    evaluate.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="which split to score (default test)"
    )
    evaluate.add_argument(
        "--max-rows", type=int, default=None, help="score at most this many rows, chosen by content hash"
    )
    evaluate.add_argument("--json", action="store_true", help="end with one line of JSON: the metrics per model")
    lineage = sub.add_parser("lineage", help="print the ancestry of a model version: stages, datasets, sources")
    lineage.add_argument(
        "model",
        metavar="MODEL_URI",
        help="models:/<name>/<version> or models:/<name>@<alias> (or a dataset URI a stage returned, runs:/<run_id>/<artifact>)",
    )
    lineage.add_argument("--json", action="store_true", help="print the tree as JSON instead of text")
    stack = sub.add_parser(
        "stack",
        help="start (up) or stop (down) the team stack on this machine: Prefect, MLflow, S3, a cpu and a gpu worker",
    )
    stack.add_argument("action", choices=["up", "down"])
    deploy = sub.add_parser(
        "deploy",
        help="make the work pools, the crash detection and the bucket, and register deployments/prefect.yaml (PREFECT_API_URL)",
    )
    deploy.add_argument(
        "--gpus", type=int, default=1, help="GPU stages that may run at once on the gpu pool: one per card (default 1)"
    )
    deploy.add_argument(
        "--crash-after",
        type=int,
        default=90,
        metavar="SECONDS",
        help="mark a flow run Crashed after this long without a heartbeat (default 90; workers beat every 30 s)",
    )
    deploy.add_argument("--prefect-file", default="deployments/prefect.yaml")
    args = parser.parse_args(argv)
    if args.command in ("stack", "deploy"):
        return _operate(args)
    _embedded_defaults()
    if args.command == "lineage":
        return _lineage(args)  # reads MLflow only: no Prefect server to start
    # First: the server boots in its own process while this one imports Prefect, MLflow and torch.
    local_prefect = embedded.launch(Path(os.environ["MULTISTEP_HOME"]).resolve())
    supervise.install()
    from tasks.errors import UserError  # after the environment is set: prefect reads it at import

    try:
        if args.command == "evaluate":
            return _evaluate(args, local_prefect)
        return _sweep(args, local_prefect) if args.command == "sweep" else _run(args, local_prefect)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        return supervise.stopped(exc)


def _operate(args) -> int:
    """`stack` and `deploy`: setting up servers, not running pipelines."""
    from tasks.errors import UserError

    if args.command == "deploy" and (args.gpus < 1 or args.crash_after < 10):
        print("error: --gpus must be at least 1 and --crash-after at least 10 seconds", file=sys.stderr)
        return 2
    try:
        if args.command == "stack":
            from flows import stack

            return stack.main([args.action])
        from flows import deploy

        deploy.deploy(gpus=args.gpus, crash_after_s=args.crash_after, prefect_file=args.prefect_file)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _embedded_defaults() -> None:
    """Without servers configured, keep Prefect's and MLflow's state under .multistep/ (what `make ui` browses)."""
    home = Path(os.environ.setdefault("MULTISTEP_HOME", ".multistep")).resolve()
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
        # The ephemeral server starts before anything else would create its folder, and cannot open its database without it.
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # the embedded server has no network
    # Forced, not defaulted: a pickle can run code when loaded, and nothing multistep loads needs one.
    asked = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    if asked is not None and asked.strip().lower() not in ("false", "0"):
        print(
            f"warning: MLFLOW_ALLOW_PICKLE_DESERIALIZATION={asked} is ignored: multistep never unpickles models "
            "(safetensors only), so it runs with false.",
            file=sys.stderr,
        )
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # datasets and models here are small


def _run(args, local_prefect: str | None) -> int:
    from flows.spec import load
    from tasks import backend
    from tasks.data.preflight import check_local

    spec = load(args.config, args.overrides)
    backend.configure(spec.execution.experiment)  # fail fast on an unreachable tracking server
    check_local(spec.data if spec.pretrain else None, spec.labeled if spec.finetune else None)  # and on bad files
    _hide_tracebacks_of_user_errors()
    from flows.pipeline import llm_pipeline
    from flows.stages import STAGES
    from tasks.report import pipeline_summary

    start = time.perf_counter()
    result = _call(llm_pipeline, spec, local_prefect)
    # The flow put the summary on its MLflow run and in Prefect (tasks/report.publish); the terminal gets it plain.
    print(pipeline_summary(result, time.perf_counter() - start, STAGES))
    if args.json:
        print(json.dumps(result))
    return 0


def _sweep(args, local_prefect: str | None) -> int:
    from flows import sweep
    from flows.sweep_spec import load
    from tasks import backend
    from tasks.sweep_report import render

    spec = load(args.config, args.overrides, args.seeds)
    found = sweep.plan(spec, source=args.config)  # every input mistake before anything runs
    backend.configure(found.cells[0].spec.execution.experiment)
    _hide_tracebacks_of_user_errors()
    report = _call(sweep.sweep, spec, local_prefect)
    print(render(report))
    if args.json:
        print(json.dumps(report))
    # every cell ran; the table says which failed
    return 1 if any(c["status"] == "failed" for c in report["cells"]) else 0


def _call(flow, spec, local_prefect: str | None):
    """Run a flow; on a local server (embedded or `make ui`'s), without heartbeats: nothing there watches them (no crash
    detection), and each subflow's exit would wait up to 1 s for the heartbeat thread."""
    if not local_prefect:
        return supervise.run(lambda: flow(spec))
    if not embedded.ready():
        # Still booting (on a fresh home it migrates its database for seconds): meanwhile import the training stack,
        # which the first stage that runs would import anyway.
        import tasks.train  # noqa: F401
    embedded.wait_ready()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return supervise.run(lambda: flow(spec))


def _lineage(args) -> int:
    from tasks import lineage
    from tasks.errors import UserError
    from tasks.lineage.render import render

    try:
        lineage.connect()
        tree = lineage.ancestry(args.model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(tree, indent=2) if args.json else render(tree))
    return 0


def _hide_tracebacks_of_user_errors() -> None:
    """Prefect logs every flow exception with its traceback; for input errors the one sentence is enough.

    On the terminal it is said once, by the CLI's `error:` line: each flow the error passes through would add two
    more lines (the exception, then the Failed state). Prefect's API log, which the UI shows, keeps them.
    """
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    from tasks.errors import UserError

    ensure_logging_setup()  # the console handler must exist to take the filter below

    def strip(record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text, record.multistep_user_error = None, None, True
        elif (
            record.getMessage().startswith("Finished in state Failed(")
            and "exception: UserError: " in record.getMessage()
        ):
            record.multistep_user_error = True  # the state's message is all that says which exception failed it
        return True

    logging.getLogger("prefect.flow_runs").addFilter(strip)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(lambda record: not getattr(record, "multistep_user_error", False))


def _evaluate(args, local_prefect: str | None) -> int:
    from flows.evaluation import evaluate_pipeline

    _hide_tracebacks_of_user_errors()
    embedded.wait_ready()
    result = supervise.run(lambda: evaluate_pipeline(args.models, args.data, split=args.split, max_rows=args.max_rows))
    if args.json:
        print(json.dumps(result["results"], default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
