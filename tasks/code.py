"""Which source a stage runs: the import closure of its module within the package, and the digest that enters its key.

A stage's cache key digests only the modules its body can execute, so editing `flows/stack.py` or the README re-runs
nothing, while editing `tasks/train.py` re-runs the stages that train. The closure is computed from the source (every
`import` statement, including those inside functions), not listed by hand, so a new import cannot be forgotten.
"""

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "tasks")


def module_file(name: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The source file of a project module (`tasks.train` → tasks/train.py, a package → its __init__.py), else None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = root.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def named(name: str, root: Path = PACKAGE_ROOT) -> set[str]:
    """Project modules that module `name` names in an import anywhere in its source (inside functions too)."""
    path = module_file(name, root)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from tasks import train` names a module, `from tasks.train import fit` does not
                found.add(f"{base}.{alias.name}" if module_file(f"{base}.{alias.name}", root) else base)
    return {m for m in found if module_file(m, root) is not None}


def imported(name: str, root: Path = PACKAGE_ROOT) -> set[str]:
    """Project modules that importing module `name` runs directly: those it names, and the packages around them
    (importing a.b.c runs a/__init__.py and a/b/__init__.py first)."""
    found = named(name, root)
    found |= {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found if module_file(m, root) is not None}


def closure(name: str, root: Path = PACKAGE_ROOT) -> list[Path]:
    """Every project source file that importing `name` (and calling anything in it) can execute, sorted."""
    seen, todo = set(), [name, *(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))]
    while todo:
        module = todo.pop()
        if module not in seen and module_file(module, root) is not None:
            seen.add(module)
            todo.extend(imported(module, root) - seen)
    return sorted(module_file(m, root) for m in seen)


@functools.cache
def version(module: str, root: Path = PACKAGE_ROOT) -> str:
    """Digest of the files in `module`'s import closure: their paths and bytes."""
    h = hashlib.sha256()
    for path in closure(module, root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
