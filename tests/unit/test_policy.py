"""Approval policy as data: first match wins, layers where the stricter wins, RE2 regexes validated up front."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter, ValidationError

from sandcastle.runs.policy import Policy, PolicyAction, PolicyRule, RuleRef, evaluate
from sandcastle.validation import describe_issues, field_path

_POLICY: TypeAdapter[list[PolicyRule]] = TypeAdapter(Policy)


def _rules(*rules: dict) -> list[PolicyRule]:
    return _POLICY.validate_python(list(rules))


def _verdict(tool: str, arguments: dict | str, tenant: list[PolicyRule] | None = None, run: list | None = None):
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return evaluate(tool, text, tenant=tenant or [], run=run or [])


def test_the_first_matching_rule_decides() -> None:
    rules = _rules(
        {"tool": "run_command", "match": {"command": "^git status$"}, "action": "allow"},
        {"tool": "run_command", "match": {"command": "git"}, "action": "ask", "reason": "git writes"},
        {"tool": "*", "action": "deny", "reason": "nothing else"},
    )

    assert _verdict("run_command", {"command": "git status"}, rules).action is PolicyAction.ALLOW
    asked = _verdict("run_command", {"command": "git push"}, rules)
    assert (asked.action, asked.rule, asked.reason) == (
        PolicyAction.ASK,
        RuleRef(layer="tenant", index=1),
        "git writes",
    )
    assert _verdict("write_file", {"path": "a", "content": "b"}, rules).action is PolicyAction.DENY


def test_no_rule_matching_allows_and_every_match_key_must_be_found() -> None:
    rules = _rules({"tool": "write_file", "match": {"path": r"\.env$", "content": "KEY"}, "action": "deny"})

    assert _verdict("write_file", {"path": ".env", "content": "KEY=1"}, rules).action is PolicyAction.DENY
    assert _verdict("write_file", {"path": ".env", "content": "x"}, rules).action is PolicyAction.ALLOW
    assert _verdict("run_command", {"command": "cat .env"}, rules).action is PolicyAction.ALLOW
    assert _verdict("write_file", {"path": "a.env"}, rules).action is PolicyAction.ALLOW  # no content argument


def test_an_argument_that_is_not_a_string_is_matched_as_its_json() -> None:
    rules = _rules({"tool": "run_command", "match": {"timeout_s": "^[0-9]{4,}$"}, "action": "ask"})

    assert _verdict("run_command", {"command": "x", "timeout_s": 3600}, rules).action is PolicyAction.ASK
    assert _verdict("run_command", {"command": "x", "timeout_s": 60}, rules).action is PolicyAction.ALLOW


def test_a_run_can_make_a_call_stricter_but_never_looser_than_the_tenant() -> None:
    tenant = _rules(
        {"tool": "run_command", "match": {"command": "rm "}, "action": "deny", "reason": "tenant"},
        {"tool": "run_command", "match": {"command": "pip"}, "action": "ask"},
    )
    run = _rules({"tool": "*", "action": "allow"})
    strict_run = _rules({"tool": "run_command", "match": {"command": "pip"}, "action": "deny", "reason": "run"})

    assert _verdict("run_command", {"command": "rm -rf x"}, tenant, run).action is PolicyAction.DENY
    assert _verdict("run_command", {"command": "pip install x"}, tenant, run).action is PolicyAction.ASK
    stricter = _verdict("run_command", {"command": "pip install x"}, tenant, strict_run)
    assert (stricter.action, stricter.rule, stricter.reason) == (
        PolicyAction.DENY,
        RuleRef(layer="run", index=0),
        "run",
    )


@pytest.mark.parametrize("arguments", ['{"command": "rm -rf /', '["rm -rf /"]'])
def test_arguments_that_cannot_be_read_fail_closed(arguments: str) -> None:
    rules = _rules(
        {"tool": "run_command", "match": {"command": "^ls$"}, "action": "allow"},
        {"tool": "run_command", "match": {"command": "rm"}, "action": "deny"},
    )

    assert _verdict("run_command", arguments, rules).action is PolicyAction.DENY


def test_a_catastrophic_pattern_matches_in_linear_time() -> None:
    """RE2: Python's ``re`` would backtrack for longer than the test suite runs on this input."""
    rules = _rules({"tool": "run_command", "match": {"command": "^(a+)+$"}, "action": "deny"})

    assert _verdict("run_command", {"command": "a" * 50_000 + "b"}, rules).action is PolicyAction.ALLOW
    assert _verdict("run_command", {"command": "a" * 50_000}, rules).action is PolicyAction.DENY


@pytest.mark.parametrize(
    ("rule", "field", "says"),
    [
        ({"tool": "run_command", "match": {"command": "(?=x)"}, "action": "ask"}, "[0].match.command", "RE2"),
        ({"tool": "run_command", "match": {"command": "("}, "action": "ask"}, "[0].match.command", "RE2"),
        ({"tool": "run_command", "match": {"command": "a" * 513}, "action": "ask"}, "[0].match.command", "512"),
        ({"tool": "run command", "action": "ask"}, "[0].tool", "pattern"),
        ({"tool": "run_command", "action": "prompt"}, "[0].action", "'allow', 'ask' or 'deny'"),
        ({"tool": "run_command", "action": "ask", "when": "always"}, "[0].when", "Extra inputs"),
    ],
)
def test_a_bad_rule_is_refused_naming_its_index_and_field(rule: dict, field: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        _rules(rule)

    issues = raised.value.errors()
    assert field_path(issues[0]["loc"]) == field
    assert says in describe_issues(issues)


def test_a_policy_has_at_most_100_rules() -> None:
    with pytest.raises(ValidationError):
        _rules(*[{"tool": "*", "action": "allow"}] * 101)
