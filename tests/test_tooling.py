"""The project's habits are checked, not only written down: pre-commit runs what CI runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _make_lint_commands() -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has a lint target"
    return [line.strip().replace("$(BIN)/", ".venv/bin/") for line in recipe.group(1).splitlines()]


def test_pre_commit_runs_the_same_checks_as_make_lint() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert entries == _make_lint_commands()


def test_make_lint_checks_import_direction_and_complexity() -> None:
    assert any("lint-imports" in command for command in _make_lint_commands())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"max-complexity\s*=\s*12", pyproject)
    assert re.search(r'select\s*=\s*\[[^\]]*"C90', pyproject)


# Commits before this one predate the rule; history is not rewritten.
_SUBJECT_RULE_FROM = "7fc45c1"


def test_commit_subjects_fit_in_72_characters() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    known = subprocess.run(
        [git, "cat-file", "-e", f"{_SUBJECT_RULE_FROM}^{{commit}}"], cwd=ROOT, capture_output=True
    )
    if known.returncode != 0:
        pytest.skip("a shallow clone without the commit the rule starts from")
    subjects = subprocess.run(
        [git, "log", "--format=%h %s", f"{_SUBJECT_RULE_FROM}..HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    too_long = [line for line in subjects if len(line.split(" ", 1)[1]) > 72]
    assert too_long == []
