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


def _pyproject() -> dict:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_the_declared_build_backend_can_build_the_declared_licence_metadata() -> None:
    """An SPDX `license` string and `license-files` (PEP 639) need setuptools 77 or later: an older
    backend allowed by the bound rejects the metadata ("project.license must be valid exactly by one
    definition") and `pip install .` fails on a machine that resolves to it."""
    project = _pyproject()
    requires = [Requirement(r) for r in project["build-system"]["requires"]]
    setuptools = next(r for r in requires if canonicalize_name(r.name) == "setuptools")
    uses_pep_639 = isinstance(project["project"].get("license"), str) or "license-files" in project["project"]

    assert uses_pep_639
    assert not setuptools.specifier.contains("76.9"), f"{setuptools} admits a backend without PEP 639"
    assert setuptools.specifier.contains("77.0")


def test_the_licence_file_is_shipped_and_is_the_declared_licence() -> None:
    project = _pyproject()["project"]

    assert project["license-files"] == ["LICENSE"]
    text = (REPO_ROOT / "LICENSE").read_text()
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in text.splitlines()[1] and "Version 2.0, January 2004" in text
