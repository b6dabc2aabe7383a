"""Settings: a deployed function refuses to start without its resource names; every setting is documented."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from sandcastle.config import CLOUD_REQUIRED, Settings
from sandcastle.errors import SettingMissing
from sandcastle.wiring import Dependencies, get_dependencies, reset_dependencies

NAMES = {"TABLE_NAME": "prod-runs", "ARTIFACTS_BUCKET": "prod-artifacts", "INBOX_BUCKET": "prod-inbox"}


@pytest.fixture
def in_a_lambda(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A Lambda's environment (Lambda sets AWS_LAMBDA_FUNCTION_NAME) with the template's resource names."""
    for name in ("STATE_MACHINE_ARN", "TENANT_FILES_ROLE_ARN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sandcastle-PrepareRunFunction")
    for name, value in NAMES.items():
        monkeypatch.setenv(name, value)
    reset_dependencies()
    yield monkeypatch
    reset_dependencies()


@pytest.mark.parametrize("variable", sorted(NAMES))
def test_a_deployed_function_without_a_resource_name_fails_naming_it(
    in_a_lambda: pytest.MonkeyPatch, variable: str
) -> None:
    # Given a function deployed without one of the names (or with it empty)
    in_a_lambda.delenv(variable)
    in_a_lambda.setenv("OPENAI_API_KEY", "sk-a-key-that-must-not-be-printed")

    # When its first invocation builds its dependencies, it fails before talking to any default resource
    with pytest.raises(ValidationError) as failure:
        get_dependencies()

    message = str(failure.value)
    assert f"{variable} must be set in function sandcastle-PrepareRunFunction's environment" in message
    assert "input_value" not in message and "printed" not in message  # pydantic echoes no part of the input


def test_an_empty_resource_name_is_missing_too(in_a_lambda: pytest.MonkeyPatch) -> None:
    in_a_lambda.setenv("TABLE_NAME", "")

    with pytest.raises(ValidationError, match="TABLE_NAME must be set"):
        Settings()


def test_a_deployed_function_with_its_names_uses_them(in_a_lambda: pytest.MonkeyPatch) -> None:
    settings = get_dependencies().settings

    assert (settings.table_name, settings.artifacts_bucket, settings.inbox_bucket) == tuple(NAMES.values())


def test_outside_the_cloud_the_names_have_local_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)

    assert Settings().table_name == "sandcastle-runs"


def test_a_function_that_starts_runs_needs_the_state_machine(in_a_lambda: pytest.MonkeyPatch) -> None:
    deps = Dependencies(Settings())

    with pytest.raises(SettingMissing, match="STATE_MACHINE_ARN is not set"):
        deps.executions  # noqa: B018 - building the adapter is the point
    with pytest.raises(SettingMissing, match="TENANT_FILES_ROLE_ARN is not set"):
        deps.tenant_files  # noqa: B018


def _documented_fields(cls: type) -> set[str]:
    """The class's annotated attributes that a string literal (their docstring) follows, read from its source."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {
        statement.target.id
        for statement, after in zip(body, body[1:], strict=False)
        if isinstance(statement, ast.AnnAssign)
        and isinstance(statement.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
        and after.value.value.strip()
    }


def test_every_setting_is_documented() -> None:
    undocumented = sorted(set(Settings.model_fields) - _documented_fields(Settings))

    assert undocumented == []
    assert set(CLOUD_REQUIRED) <= set(Settings.model_fields)
