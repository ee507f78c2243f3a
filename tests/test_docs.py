"""Every Python snippet of the README and docs/ runs as written.

The snippets of one page run in order in one namespace, as a reader pastes them into one session, from a
folder where ``nullspace_hf/`` is the package's folder (the README's commands run from the repository root).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPET = re.compile(r"```python\n(.*?)```", re.S)


def _snippets(page: Path) -> list[str]:
    return SNIPPET.findall(page.read_text(encoding="utf-8"))


def test_the_pages_with_snippets_are_the_expected_ones():
    """A page that gains its first snippet is tested too; this guards the list against silent shrinking."""
    assert {page.name for page in PAGES if _snippets(page)} == {"README.md", "applications.md", "evaluation.md",
                                                               "trainer.md"}


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if _snippets(page)], ids=lambda page: page.name)
def test_every_snippet_runs_as_written(page, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may come from the Hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nullspace_hf").symlink_to(ROOT / "nullspace_hf", target_is_directory=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__snippet__"}
    try:
        for index, code in enumerate(_snippets(page)):
            exec(compile(code, f"{page.name} snippet {index + 1}", "exec"), namespace)  # noqa: S102
    finally:
        torch.set_num_threads(threads)
