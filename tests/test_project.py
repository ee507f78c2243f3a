"""The project's own house rules: CI lints before it tests, and the README's "Where things live" names every module."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nullspace_hf"


def _commands(script: Path) -> list[str]:
    return [line.strip() for line in script.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_ruff_check_before_the_readme_test_command():
    commands = _commands(ROOT / ".ci" / "run")
    assert commands[-1] == "python -m pytest tests"
    assert "ruff check ." in commands and commands.index("ruff check .") < len(commands) - 1
    assert any("pip install" in command and "ruff" in command for command in commands)
    assert "&& python -m pytest tests\n" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_lint_is_configured_in_pyproject():
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]
    assert ruff["line-length"] == 120 and ruff["target-version"] == "py310"
    assert {"E", "F", "I", "UP", "B"} <= set(ruff["lint"]["select"])


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (.ci/run installs it)")
def test_ruff_check_passes():
    result = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def _where_things_live() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Where things live")
    return readme[start:readme.index("\n## ", start + 1)]


def _named(module: Path, table: str) -> bool:
    """Whether a row of the table names ``module``: by its path in the first cell (``nullspace_hf/lock.py``,
    ``preemption.py``), or, inside a folder of the package, by its name or its sub-folder in the folder's row."""
    parts = module.relative_to(PACKAGE).parts
    for line in table.splitlines():
        cells = line.split("|")
        if len(cells) < 4:
            continue
        first, rest = cells[1], "|".join(cells[2:])
        if len(parts) == 1 and "`nullspace_hf/" in first and (
                f"`nullspace_hf/{parts[0]}`" in first or f"`{parts[0]}`" in first):
            return True
        if len(parts) > 1 and f"`nullspace_hf/{parts[0]}/`" in first and (
                f"`{parts[1]}`" in rest or f"`{parts[1]}/`" in rest):
            return True
    return False


def test_the_readme_names_every_module_of_the_package():
    table = _where_things_live()
    top_level = list(PACKAGE.glob("*.py"))
    nested = [path for path in PACKAGE.glob("*/**/*.py") if path.name != "__init__.py"]
    missing = [path.relative_to(ROOT).as_posix() for path in [*top_level, *nested] if not _named(path, table)]
    assert not missing, f"README.md's 'Where things live' does not name {missing}"
    assert "`nullspace_hf/errors.py`" in table and "`inspect.py`" in table  # the check reads the right table
