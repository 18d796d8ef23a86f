"""A worker starts every stage flow in a fresh process that imports its entrypoint: that import must stay light."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every spec module too: the CLI and the Prefect form read specs without running a stage.
SPECS = tuple(sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "tasks").rglob("spec.py")))
ENTRYPOINTS = (
    "flows.stages",
    "flows.pipeline",
    "flows.retrain",
    "flows.evaluation",
    "flows.sweep",
    "flows.sweep_spec",
    "flows.spec",
    *SPECS,
)
# What only training and scoring need, seconds to import; prefect and mlflow bring numpy, pandas and pyarrow themselves.
HEAVY = ("torch", "transformers", "peft", "accelerate", "sklearn")

# Runs in the child: notes the project lines that led to the first import of each heavy package, then imports the
# entrypoints and prints what it noted.
PROBE = """
import json, sys, traceback

heavy, root, entrypoints = json.loads(sys.argv[1])
found = {}


class Probe:
    def find_spec(self, name, path=None, target=None):
        if name in heavy and name not in found:
            found[name] = [f"{f.filename[len(root) + 1:]}:{f.lineno}" for f in traceback.extract_stack() if f.filename.startswith(root)]
        return None


sys.meta_path.insert(0, Probe())
for module in entrypoints:
    __import__(module)
print(json.dumps(found))
"""


def test_flow_entrypoints_and_specs_import_without_torch_or_transformers():
    assert {"tasks.spec", "tasks.finetune.spec", "tasks.gate.spec"} <= set(SPECS)
    args = json.dumps([HEAVY, str(ROOT), ENTRYPOINTS])
    done = subprocess.run([sys.executable, "-c", PROBE, args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    chains = "; ".join(f"{name} via {' → '.join(lines)}" for name, lines in sorted(found.items()))
    assert not found, f"importing {', '.join(ENTRYPOINTS)} loads {chains}: import it inside the function that needs it"
