"""What each augmentation buys on SST-2 with 500 labeled rows: dev accuracy (mean ± std over seeds) and robustness.

Runs configs/sst2-augment.yaml once per condition and seed through the CLI, all in one MULTISTEP_HOME so stages that
two conditions share (the round-0 teacher, the labeled data) run once, then reads the registered versions' metrics.
Not a timing benchmark: its baseline is the `none` condition, measured in the same run.

    .venv/bin/python benchmarks/augment_gains.py                       # all conditions, seeds 0 1 2
    .venv/bin/python benchmarks/augment_gains.py --conditions none eda --seeds 0
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONDITIONS = {
    "none": ["augment=null"],
    "eda": ["augment.pseudo=null"],
    "pseudo": ["augment.eda=null"],
    "eda+pseudo": [],
    "adversarial-examples": ["augment.eda=null", "augment.pseudo=null", "augment.adversarial={}"],
    "fgm": ["augment=null", "finetune.adversarial.method=fgm"],
}
ROBUSTNESS = ["finetune.attack.rows=200"]  # every condition's model is attacked on the same 200 dev rows


def run(condition: str, seed: int, home: Path) -> dict:
    sets = [f"finetune.train.seed={seed}", f"augment.eda.seed={seed}", *ROBUSTNESS, *CONDITIONS[condition]]
    cmd = [sys.executable, "-m", "flows.cli", "run", "configs/sst2-augment.yaml", *(f"--set={s}" for s in sets), "--json"]
    env = {**os.environ, "MULTISTEP_HOME": str(home)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    (home / f"{condition}-{seed}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"{condition} seed {seed} failed (exit {done.returncode}); see {home}/{condition}-{seed}.log")
    return json.loads(done.stdout.strip().splitlines()[-1])


def metrics(version_uri: str, home: Path) -> dict[str, float]:
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    from mlflow.tracking import MlflowClient

    name, version = version_uri.removeprefix("models:/").split("/")
    tags = MlflowClient().get_model_version(name, version).tags
    return {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}


def student(pipeline_run: str, home: Path) -> str | None:
    """The last self-training student, kept or not (the pipeline returns it only when it beat its teacher)."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{pipeline_run}'", output_format="list")
    rounds = sorted((r for r in runs if r.info.run_name.startswith("finetune-round") and r.info.run_name != "finetune-round0"), key=lambda r: r.info.run_name)
    return rounds[-1].data.tags.get("multistep.output") if rounds else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--home", type=Path, default=REPO / ".multistep-augment-gains")
    args = parser.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    results = {}
    for seed in args.seeds:
        for condition in args.conditions:
            out = run(condition, seed, args.home)
            found = metrics(out["model"], args.home)
            last = student(out["pipeline_run"], args.home)
            if last:
                found["student_test_accuracy"] = metrics(last, args.home)["test_accuracy"]
            results.setdefault(condition, []).append(found)
            print(f"{condition:>22} seed {seed}: dev accuracy {found['test_accuracy']:.4f}, robust {found.get('test_robust_accuracy', float('nan')):.4f}, "
                  f"attack success {found.get('test_attack_success_rate', float('nan')):.3f} ({out['model']})"
                  + (f"; student {found['student_test_accuracy']:.4f} ({last})" if last else ""), flush=True)
    base = statistics.mean(m["test_accuracy"] for m in results.get("none", [])) if "none" in results else None
    print(f"\n| condition | dev accuracy (mean ± std, {len(args.seeds)} seeds) | vs none | robust accuracy | attack success rate | student before the stop rule |")
    print("|---|---|---:|---:|---:|---|")
    for condition, runs in results.items():
        acc = [m["test_accuracy"] for m in runs]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        delta = f"{100 * (statistics.mean(acc) - base):+.1f} pt" if base is not None else "n/a"
        robust = statistics.mean(m.get("test_robust_accuracy", float("nan")) for m in runs)
        success = statistics.mean(m.get("test_attack_success_rate", float("nan")) for m in runs)
        students = [m["student_test_accuracy"] for m in runs if "student_test_accuracy" in m]
        shown = f"{statistics.mean(students):.4f}" if students else "—"
        print(f"| {condition} | {statistics.mean(acc):.4f} ± {std:.4f} | {delta} | {robust:.4f} | {success:.3f} | {shown} |")


if __name__ == "__main__":
    main()
