"""Stage-scoped code versions: a stage's cache key changes with the modules it runs, and only with those."""

import shutil

import pytest

from flows.stages import STAGES
from tasks import code

TRAINING = {"pretrain", "finetune"}


@pytest.fixture
def tree(tmp_path):
    """A copy of the package's sources that a test may edit."""
    for package in code.PACKAGES:
        shutil.copytree(code.PACKAGE_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "README.md").write_text("# multistep\n")
    return tmp_path


def versions(root):
    code.version.cache_clear()
    return {name: code.version(stage.code, root) for name, stage in STAGES.items()}


def append(path, text="\n# an edit\n"):
    path.write_text(path.read_text() + text)


def test_editing_the_team_stack_or_the_readme_reruns_no_stage(tree):
    before = versions(tree)
    append(tree / "flows" / "stack.py")
    append(tree / "flows" / "cli.py")
    append(tree / "README.md")
    assert versions(tree) == before


def test_editing_the_trainer_setup_reruns_the_training_stages_and_only_those(tree):
    before = versions(tree)
    append(tree / "tasks" / "train.py")
    after = versions(tree)
    changed = {name for name in STAGES if after[name] != before[name]}
    assert TRAINING <= changed
    assert not changed & {"prepare", "prepare-labeled"}


def test_imports_inside_functions_and_relative_imports_are_followed(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "stage.py").write_text(
        "def run():\n    from tasks import helper\n    from .sub import deep\n"
    )
    (tmp_path / "tasks" / "helper.py").write_text("import json\n")
    (tmp_path / "tasks" / "sub").mkdir()
    (tmp_path / "tasks" / "sub" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "sub" / "deep.py").write_text("")
    (tmp_path / "tasks" / "unused.py").write_text("")
    found = [p.relative_to(tmp_path).as_posix() for p in code.closure("tasks.stage", tmp_path)]
    assert found == [
        "tasks/__init__.py",
        "tasks/helper.py",
        "tasks/stage.py",
        "tasks/sub/__init__.py",
        "tasks/sub/deep.py",
    ]
