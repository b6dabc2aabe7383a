"""``sandcastle approvals | approve | reject | message``: humans in the loop, through the running API.

sandcastle approvals RUN                       the run's approvals, pending first
sandcastle approve RUN [CALL_ID ...] [--comment C]   approve those calls (every pending one when none given)
sandcastle reject RUN [CALL_ID ...] [--comment C]
sandcastle message RUN "text"                  steer a live run: its next model call reads the message
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from sandcastle.cli.output import Exit, data, fail
from sandcastle.cli.remote import call


def add_approval_commands(commands: Any) -> None:
    listing = commands.add_parser("approvals", help="list a run's approvals (pending and decided)")
    listing.add_argument("run_id")
    listing.set_defaults(command=_approvals_command)
    for verb, decision in (("approve", "approve"), ("reject", "reject")):
        parser = commands.add_parser(verb, help=f"{verb} tool calls of a run awaiting approval")
        parser.add_argument("run_id")
        parser.add_argument("call_ids", nargs="*", metavar="CALL_ID", help="the calls (default: every pending one)")
        parser.add_argument("--comment", help="why (the model reads it with a rejection)")
        parser.set_defaults(command=_decide_command, decision=decision)
    message = commands.add_parser("message", help="send a message to a live run (its next model call reads it)")
    message.add_argument("run_id")
    message.add_argument("text")
    message.set_defaults(command=_message_command)


def _approvals(run_id: str) -> tuple[int, list[dict[str, Any]]]:
    code, page = call("GET", f"/runs/{quote(run_id, safe='')}/approvals")
    return code, (page or {}).get("approvals", [])


def _approvals_command(args: argparse.Namespace) -> int:
    code, approvals = _approvals(args.run_id)
    if code:
        return code
    ordered = sorted(approvals, key=lambda a: a.get("decision") is not None)
    data({"approvals": ordered}, [_line(a) for a in ordered] or [f"run {args.run_id}: no approvals"])
    return 0


def _line(approval: dict[str, Any]) -> str:
    if approval.get("decision") is None:
        state = f"PENDING until {approval['expires_at']}"
    elif approval.get("expired"):
        state = "EXPIRED (rejected)"
    else:
        state = f"{_PAST[approval['decision']]} by {approval.get('decided_by')}"
        if approval.get("comment"):
            state += f": {approval['comment']}"
    reason = f" — {approval['reason']}" if approval.get("reason") else ""
    return f"{approval['tool_call_id']}  {approval['tool']} {approval['arguments']}{reason}\n    {state}"


_PAST = {"approve": "APPROVED", "reject": "REJECTED"}


def _decide_command(args: argparse.Namespace) -> int:
    call_ids = list(args.call_ids)
    if not call_ids:
        code, approvals = _approvals(args.run_id)
        if code:
            return code
        call_ids = [a["tool_call_id"] for a in approvals if a.get("decision") is None]
        if not call_ids:
            return fail(f"run {args.run_id} has no pending approval", Exit.NOT_SUCCEEDED)
    worst = 0
    decided = []
    for call_id in call_ids:
        body = {"decision": args.decision, **({"comment": args.comment} if args.comment else {})}
        code, approval = call("POST", f"/runs/{quote(args.run_id, safe='')}/approvals/{quote(call_id, safe='')}", body)
        worst = max(worst, code)
        if not code:
            decided.append(approval)
    data({"approvals": decided}, [_line(a) for a in decided])
    return worst


def _message_command(args: argparse.Namespace) -> int:
    code, event = call("POST", f"/runs/{quote(args.run_id, safe='')}/messages", {"text": args.text})
    if not code:
        data(event, [f"run {args.run_id}: message recorded ({event['key']})"])
    return code
