"""The layout of DESIGN §7, computed from the source: stages import no other stage, tasks/ has no import cycle, each spec
module is pure pydantic and the one place its specs are imported from, and no module grows past ~300 lines."""

import ast
from pathlib import Path

from flows.stages import STAGES
from tasks import code

ROOT = code.PACKAGE_ROOT
MAX_LINES = 300
# Every stage may read datasets through tasks.data (the data contract of DESIGN §3); beyond that, a stage imports only
# shared helpers, and these.
ALLOWED = {("tasks.gate", "tasks.evaluate.scoring")}  # the gate scores both models as `multistep evaluate` does


def modules(package: str) -> dict[str, Path]:
    """Module name → file, for every module of a top-level package."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def graph() -> dict[str, set[str]]:
    return {name: code.named(name) for package in code.PACKAGES for name in modules(package)}


def stage_packages() -> set[str]:
    """The package of each body module in the stage table."""
    return {s.code.rsplit(".", 1)[0] for s in STAGES.values()}


def stage_package(module: str) -> str | None:
    """The stage package a module belongs to, or None for a shared helper."""
    return max((p for p in stage_packages() if module == p or module.startswith(p + ".")), key=len, default=None)


def test_each_stage_is_a_package():
    assert "tasks" not in stage_packages(), "a stage's body sits in a package of its own under tasks/ (DESIGN §7)"


def test_no_stage_imports_another_stages_modules():
    sideways = []
    for name, targets in graph().items():
        mine = stage_package(name)
        for target in targets:
            theirs = stage_package(target)
            if (
                mine
                and theirs
                and theirs != mine
                and not target.startswith("tasks.data")
                and (mine, target) not in ALLOWED
            ):
                sideways.append(f"{name} → {target}")
    assert not sideways, "stages import each other's modules (move what they share into a helper module): " + ", ".join(
        sideways
    )


def test_no_import_cycle():
    edges, cycles = graph(), []
    state: dict[str, str] = {}  # module → "open" while its imports are being followed, "done" after

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" → ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_spec_modules_import_only_pydantic_typing_and_other_specs():
    specs = [name for name in modules("tasks") if name == "tasks.spec" or name.endswith(".spec")]
    assert len(specs) >= 9  # the base, and each stage's
    impure = []
    for name in specs:
        for node in ast.walk(ast.parse(code.module_file(name).read_text())):
            found = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            impure += [
                f"{name} imports {m}" for m in found if m.split(".")[0] not in ("pydantic", "typing") and m not in specs
            ]
    assert not impure, ", ".join(impure)


def test_each_spec_is_imported_from_the_module_that_defines_it():
    defined = {}  # spec class → the module that defines it
    for package in code.PACKAGES:
        for name, path in modules(package).items():
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef) and node.name.endswith("Spec"):
                    assert node.name not in defined, f"{node.name} is defined in {defined.get(node.name)} and {name}"
                    defined[node.name] = name
    elsewhere = []
    for path in sorted(p for folder in (*code.PACKAGES, "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = {}  # local name → the project module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if alias.name in defined and node.module != defined[alias.name]:
                        elsewhere.append(
                            f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from {node.module}"
                        )
                    if code.module_file(f"{node.module}.{alias.name}"):
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                aliases.update({alias.asname: alias.name for alias in node.names if alias.asname})
        for node in ast.walk(tree):  # `module.SomeSpec`
            if isinstance(node, ast.Attribute) and node.attr in defined and isinstance(node.value, ast.Name):
                module = aliases.get(node.value.id)
                if module and module != defined[node.attr]:
                    elsewhere.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {node.attr} from {module}")
    assert not elsewhere, "import each spec from the module that defines it: " + ", ".join(elsewhere)


def test_modules_stay_under_300_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for package in code.PACKAGES
        for path in modules(package).values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these along their natural lines (DESIGN §7): {long}"
