"""Run a task preset end to end through the CLI and report what it reached, read back from MLflow: the wall time and
peak RSS of the run, and the task's results.

- extractive QA (`configs/squad-minilm.yaml`): test exact match and F1 on the held-out articles, and the curve of
  validation F1 against steps (the `eval_f1` history of the finetune run);
- math (`configs/gsm8k-smollm2.yaml`): extracted-answer accuracy on the fixed test slice before and after fine-tuning,
  greedy and (when the preset asks) self-consistency, with McNemar's exact p and a paired bootstrap 95% interval of the
  gain over the same problems, and one worked example.

    .venv/bin/python benchmarks/task_results.py configs/squad-minilm.yaml
    .venv/bin/python benchmarks/task_results.py configs/gsm8k-smollm2.yaml --set finetune.train.max_steps=50

Each run gets a fresh MULTISTEP_HOME (under /tmp unless --home), so nothing is reused from an earlier run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def run_preset(config: str, overrides: list[str], home: Path) -> tuple[dict, float, float]:
    """The CLI's --json result, the wall seconds and the peak RSS (GB) of the run's processes."""
    env = {**os.environ, "MULTISTEP_HOME": str(home), "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    args = [sys.executable, "-m", "flows.cli", "run", config, "--json", *sum((["--set", o] for o in overrides), [])]
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (home / "run.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"the run failed ({done.returncode}); its output is in {home / 'run.log'}:\n{done.stderr[-3000:]}")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return json.loads(done.stdout.strip().splitlines()[-1]), wall, peak_gb


def finetune_run(client, result: dict):
    version = client.get_model_version(*result["finetuned"].removeprefix("models:/").split("/"))
    return version, client.get_run(version.run_id)


def report_qa(client, result: dict) -> list[str]:
    version, run = finetune_run(client, result)
    m = run.data.metrics
    curve = [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, "eval_f1")]
    return [
        f"test (held-out articles): exact match {100 * m['test_exact_match']:.1f}, F1 {100 * m['test_f1']:.1f}",
        f"validation: exact match {100 * m['validation_exact_match']:.1f}, F1 {100 * m['validation_f1']:.1f}",
        "validation F1 by step: " + ", ".join(f"{s}: {100 * v:.1f}" for s, v in curve),
        f"training: {m.get('train_seconds', float('nan')):.0f} s, {m.get('train_windows', 0):.0f} windows",
    ]


def report_math(client, result: dict) -> list[str]:
    import mlflow

    from tasks import answers, metrics

    version, run = finetune_run(client, result)
    m = run.data.metrics
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="generations.json")
    table = json.loads(Path(path).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]

    def correct(column: str) -> np.ndarray:
        return np.array([answers.hit(r[column], r["reference"]) for r in rows])

    lines = [f"problems scored: {len(rows)} (greedy)"]
    voted_rows = sum(r.get("after_voted") is not None for r in rows)
    comparisons = [("greedy", "before_answer", "after_answer", len(rows))]
    if voted_rows:
        comparisons += [
            ("self-consistency", "before_voted", "after_voted", voted_rows),
            ("after: voted vs greedy", "after_answer", "after_voted", voted_rows),
        ]
    for label, a_col, b_col, n in comparisons:
        a, b = correct(a_col)[:n], correct(b_col)[:n]
        test = metrics.mcnemar(b, a)
        interval = metrics.paired_bootstrap(b.astype(float), a.astype(float), samples=10000)
        lines.append(
            f"{label} on {n}: {100 * a.mean():.1f}% → {100 * b.mean():.1f}%, {100 * (b.mean() - a.mean()):+.1f} pt "
            f"[{100 * interval['low']:+.1f}, {100 * interval['high']:+.1f}] (paired bootstrap 95%), "
            f"McNemar p {test['p_value']:.3g} ({test['a_only']} gained, {test['b_only']} lost)"
        )
    lines.append("metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(m.items()) if "answer" in k))
    lines.append(f"training: {m.get('train_seconds', float('nan')):.0f} s")
    after, before = correct("after_answer"), correct("before_answer")
    pick = next(
        (i for i in range(len(rows)) if after[i] and not before[i]), next((i for i in range(len(rows)) if after[i]), 0)
    )
    lines.append("worked example:\n" + json.dumps(rows[pick], indent=2, ensure_ascii=False))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--home", type=Path, help="MULTISTEP_HOME for the run (default: a fresh temporary folder)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="task-results-"))
    result, wall, peak = run_preset(args.config, args.overrides, home)

    sys.path.insert(0, str(ROOT))
    os.environ["MULTISTEP_HOME"] = str(home)
    from mlflow.tracking import MlflowClient

    from tasks.backend import configure
    from tasks.data import labeled

    configure("multistep")
    client = MlflowClient()
    task = labeled.card(result["labeled"])["task"]
    lines = [f"{args.config} {' '.join(args.overrides)}", f"wall {wall:.0f} s, peak RSS {peak:.1f} GB, home {home}"]
    lines += report_qa(client, result) if task == "extractive-qa" else report_math(client, result)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
