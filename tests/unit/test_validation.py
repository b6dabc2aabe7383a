"""A failed validation reads the same wherever the input came from: the API, the CLI, an upload, a tool call."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sandcastle.cli.run import describe
from sandcastle.errors import ToolInputError
from sandcastle.runs.records import ToolCall
from sandcastle.runs.requests import RunRequest
from sandcastle.tools import parse_tool_call
from sandcastle.validation import describe_issues, field_path


def test_a_location_reads_as_the_field_it_names() -> None:
    assert field_path(("files", 0, "name")) == "files[0].name"
    assert field_path(("budgets", "max_steps")) == "budgets.max_steps"
    assert field_path(()) == ""


def test_a_request_part_is_dropped_from_an_http_requests_locations_only() -> None:
    assert field_path(("body", "files", 0, "name"), in_request=True) == "files[0].name"
    assert field_path(("query", "limit"), in_request=True) == "limit"
    assert field_path(("path",)) == "path"  # a tool's argument named path is a field, not where it was sent


def test_a_tools_argument_named_like_a_request_part_is_named() -> None:
    with pytest.raises(ToolInputError) as error:
        parse_tool_call(ToolCall(id="c", name="read_file", arguments="{}"))

    assert str(error.value) == "invalid arguments for read_file: path: Field required"


def test_every_issue_is_listed_and_the_whole_input_has_a_name() -> None:
    issues = [{"loc": (), "msg": "Input should be an object"}, {"loc": ("limit",), "msg": "too big"}]

    assert describe_issues(issues) == "request: Input should be an object; limit: too big"
    assert describe_issues(issues[:1], whole="arguments") == "arguments: Input should be an object"


def test_the_cli_names_a_nested_field_as_the_api_does() -> None:
    with pytest.raises(ValidationError) as error:
        RunRequest.model_validate({"instructions": "x", "files": [{"content_base64": "eA=="}]})

    assert describe(error.value) == "files[0].name: Field required"
