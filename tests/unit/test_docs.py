"""The docs stand on their own and name every part of the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "functions" / "sandcastle"


def test_the_readme_folder_table_lists_every_package_and_top_level_module() -> None:
    listed = set(re.findall(r"^\| `functions/sandcastle/([^`]+?)/?` \|", (ROOT / "README.md").read_text(), re.M))
    parts = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    parts |= {path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"}

    assert sorted(parts - listed) == []


def test_the_architecture_page_refers_to_nothing_outside_the_repository() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()

    assert re.findall(r"\.\./[\w./-]+|/work/[\w./-]+", text) == []
    for target in re.findall(r"\]\(([^)#]+)\)", text):  # relative links point at files that exist
        assert target.startswith("http") or (ROOT / "docs" / target).exists(), target
