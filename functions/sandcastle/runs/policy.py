"""Approval policy as data: ordered rules that allow, ask for approval of, or deny a tool call.

A policy is a list of rules; the first rule that matches a call decides it. A rule matches a call
when its ``tool`` is the call's tool (or ``*``) and every ``match`` regex is found in the argument of
that name (``search``, not ``fullmatch``: anchor with ``^…$`` to match the whole value; a value that
is not a string is matched as its JSON text; a missing argument matches nothing; arguments that are
not a readable JSON object match every ``ask``/``deny`` rule and no ``allow`` rule). A call no rule
matches is allowed.

Layers: the tenant's policy (``PUT /policy``), then the run's own (``policy`` in the run request, or
the saved task's). Each layer decides on its own and the stricter decision wins (``allow`` < ``ask``
< ``deny``), so a run's rules can make a call stricter but never loosen the tenant's ``ask`` or ``deny``.

Regexes are RE2 (``google-re2``): matching takes time linear in the input whatever the pattern, so a
rule like ``(a+)+$`` cannot stall a Lambda (Python's ``re`` backtracks, and has no timeout).
Backreferences and look-around, which RE2 does not have, are refused at validation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

MAX_RULES = 100
MAX_PATTERN_CHARS = 512
MAX_MATCHED_CHARS = 100_000
"""An argument is matched on its first this many characters (RE2 is linear; this bounds the constant)."""


class PolicyAction(StrEnum):
    ALLOW = "allow"
    ASK = "ask"
    DENY = "deny"

    @property
    def strictness(self) -> int:
        return _STRICTNESS[self]


_STRICTNESS = {PolicyAction.ALLOW: 0, PolicyAction.ASK: 1, PolicyAction.DENY: 2}

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # an invalid pattern is the caller's error, reported to them, not logged


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _valid_pattern(pattern: str) -> str:
    try:
        _compiled(pattern)
    except re2.error as error:
        detail = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else str(error)
        unsupported = "backreferences and look-around are not supported"
        raise ValueError(f"not a valid RE2 regex ({detail}); {unsupported}") from None
    return pattern


Pattern = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATTERN_CHARS), AfterValidator(_valid_pattern)]
ArgumentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
ToolPattern = Annotated[str, StringConstraints(pattern=r"^(\*|[A-Za-z_][A-Za-z0-9_]{0,63})$")]


class PolicyRule(BaseModel):
    """One rule: which calls it matches and what happens to them."""

    model_config = ConfigDict(extra="forbid")

    tool: ToolPattern
    """A tool's name (``run_command``, ``write_file``…) or ``*`` for every tool."""
    match: dict[ArgumentName, Pattern] = Field(default_factory=dict, max_length=16)
    """Argument name → RE2 regex searched for in that argument's value; every one must be found."""
    action: PolicyAction
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None
    """Why: shown to the approver, and to the model when the call is refused."""

    def matches(self, tool: str, arguments: dict[str, Any] | None) -> bool:
        if self.tool not in ("*", tool):
            return False
        if not self.match:
            return True
        if arguments is None:
            # Arguments we cannot read (not a JSON object, or kept only in part in the event) could hold
            # anything: fail closed. A stricter rule matches them, an ``allow`` rule does not.
            return self.action is not PolicyAction.ALLOW
        for name, pattern in self.match.items():
            if name not in arguments:
                return False
            value = arguments[name]
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if _compiled(pattern).search(text[:MAX_MATCHED_CHARS]) is None:
                return False
        return True


Policy = Annotated[list[PolicyRule], Field(max_length=MAX_RULES)]
"""Rules in order; the first that matches decides."""


class PolicyDocument(BaseModel):
    """A tenant's policy: the body of ``PUT /policy`` and what ``GET /policy`` answers."""

    model_config = ConfigDict(extra="forbid")

    rules: Policy = Field(default_factory=list)


PolicyLayer = Literal["tenant", "run"]


class RuleRef(BaseModel):
    """Which rule decided a call: its layer and its index in that layer's list."""

    layer: PolicyLayer
    index: int


@dataclass(frozen=True)
class Verdict:
    """What the policy says of one call, and the rule that said it (None: no rule matched, allowed)."""

    action: PolicyAction
    rule: RuleRef | None = None
    reason: str | None = None


_ALLOWED = Verdict(PolicyAction.ALLOW)


def _first_match(rules: list[PolicyRule], layer: PolicyLayer, tool: str, arguments: Any) -> Verdict:
    for index, rule in enumerate(rules):
        if rule.matches(tool, arguments):
            return Verdict(rule.action, RuleRef(layer=layer, index=index), rule.reason)
    return _ALLOWED


def evaluate(tool: str, arguments: str, *, tenant: list[PolicyRule], run: list[PolicyRule]) -> Verdict:
    """The verdict on a call of ``tool`` with ``arguments`` (the model's JSON text): each layer's first
    matching rule, the stricter of the two (the tenant's on a tie)."""
    parsed = _arguments(arguments)
    verdict = _first_match(tenant, "tenant", tool, parsed)
    own = _first_match(run, "run", tool, parsed)
    return own if own.action.strictness > verdict.action.strictness else verdict


def _arguments(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
