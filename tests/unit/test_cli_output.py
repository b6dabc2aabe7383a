"""The CLI's one exit-code table, its --json output and how an API error reads."""

from __future__ import annotations

import json
import urllib.error

import pytest

from sandcastle.cli import output
from sandcastle.cli.output import Exit
from sandcastle.errors import ApiError, CommandFailed, InvalidRunRequest


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ApiError(401, {"error": "unauthorized", "message": "no key"}), Exit.UNREACHABLE),
        (ApiError(403, {"error": "forbidden", "message": "not yours"}), Exit.UNREACHABLE),
        (ApiError(404, {"error": "not_found", "message": "no run run-x"}), Exit.USAGE),
        (ApiError(422, {"error": "validation_failed", "message": "x: bad", "field": "x"}), Exit.USAGE),
        (ApiError(409, {"error": "conflict", "message": "again"}), Exit.NOT_SUCCEEDED),
        (ApiError(500, {"error": "internal", "message": "oops"}), Exit.NOT_SUCCEEDED),
        (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), Exit.UNREACHABLE),
        (InvalidRunRequest("must not be empty", field="instructions"), Exit.USAGE),
        (CommandFailed("no server", Exit.UNREACHABLE), Exit.UNREACHABLE),
    ],
)
def test_every_error_maps_to_one_exit_code(error: Exception, code: Exit) -> None:
    assert output.classify(error)[1] is code


def test_an_api_error_names_its_field_once() -> None:
    named = ApiError(422, {"message": "expression: cron() takes 6 fields", "field": "expression"})
    bare = ApiError(409, {"message": "used with another body", "field": "Idempotency-Key"})
    assert str(named) == "expression: cron() takes 6 fields"
    assert str(bare) == "Idempotency-Key: used with another body"


def test_a_table_has_a_header_and_json_is_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    document = {"runs": [{"run_id": "run-1"}]}
    try:
        output.configure(json_output=False)
        output.table(document, ("RUN", "STATUS"), [("run-1", "SUCCEEDED"), ("run-22", None)])
        assert capsys.readouterr().out.splitlines() == ["RUN     STATUS", "run-1   SUCCEEDED", "run-22  -"]
        output.configure(json_output=True)
        output.say("words")
        output.table(document, ("RUN",), [("run-1",)])
        captured = capsys.readouterr()
        assert json.loads(captured.out) == document and captured.err == "words\n"
    finally:
        output.configure(json_output=False)


def test_a_bug_of_ours_keeps_its_traceback() -> None:
    def broken() -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        output.run_command(broken)
