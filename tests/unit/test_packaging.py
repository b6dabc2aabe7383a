"""functions/requirements.txt (what `sam build` installs) matches pyproject.toml's runtime dependencies."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.template_support import REPO_ROOT


def _key(requirement: Requirement) -> tuple[str, frozenset[str], str, str]:
    return (
        canonicalize_name(requirement.name),
        frozenset(requirement.extras),
        str(requirement.specifier),
        str(requirement.marker or ""),
    )


def _requirements_txt() -> list[Requirement]:
    requirements = []
    for line in (REPO_ROOT / "functions" / "requirements.txt").read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            requirements.append(Requirement(line))
    return requirements


def _pyproject_dependencies() -> list[Requirement]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        return [Requirement(line) for line in tomllib.load(file)["project"]["dependencies"]]


def test_lambda_requirements_match_the_project_dependencies() -> None:
    lambda_side = {_key(r) for r in _requirements_txt()}
    project_side = {_key(r) for r in _pyproject_dependencies()}

    assert not lambda_side - project_side, f"only in functions/requirements.txt: {lambda_side - project_side}"
    assert not project_side - lambda_side, f"only in pyproject.toml: {project_side - lambda_side}"


def test_each_dependency_is_listed_once() -> None:
    names = [canonicalize_name(r.name) for r in _requirements_txt()]

    assert len(names) == len(set(names)), f"listed twice in functions/requirements.txt: {names}"
