"""The routes of humans in the loop: a tenant's approval policy, a run's approvals, messages to a live run.

A Powertools ``Router`` the API's resolver includes. Every route is scoped to the caller's tenant: a run of
another tenant is a 404, like one that does not exist. The task token a waiting run keeps is never answered.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Path

from sandcastle.api import examples as ex
from sandcastle.api.errors import error_response
from sandcastle.api.models import ApprovalDecision, ApprovalList, MessageRequest
from sandcastle.api.responses import error_contents, json_content, ok, principal
from sandcastle.errors import ApprovalConflict, ApprovalNotFound, RunBusy, RunNotLive
from sandcastle.runs.approvals import decide, list_approvals
from sandcastle.runs.messages import send_message
from sandcastle.runs.policy import PolicyDocument
from sandcastle.runs.records import Approval, utcnow
from sandcastle.runs.transcript import UserMessageEvent
from sandcastle.wiring import get_dependencies

router = Router()

RunIdPath = Annotated[str, Path(min_length=1, max_length=100, description="The run's id (`run-...`).")]
CallIdPath = Annotated[str, Path(min_length=1, max_length=200, description="The tool call's id, as the model gave it.")]


def _principal() -> tuple[str, str]:
    tenant, key_id = principal(router.current_event.raw_event)
    return tenant, key_id or tenant


# ---------------------------------------------------------------- policy


@router.get(
    "/policy",
    operation_id="getPolicy",
    tags=["approvals"],
    summary="Get the tenant's approval policy",
    description="The rules every run of the tenant passes before a tool call runs (none: every call is allowed).",
    responses={200: json_content(PolicyDocument, "The tenant's rules.", example=ex.POLICY)},
)
def get_policy_route() -> Response[PolicyDocument]:
    tenant, _ = _principal()
    return ok(PolicyDocument(rules=get_dependencies().approvals.get_policy(tenant)))


@router.put(
    "/policy",
    operation_id="putPolicy",
    tags=["approvals"],
    summary="Set the tenant's approval policy",
    description="Ordered rules, first match wins: `{tool, match: {argument: RE2 regex}, action: allow|ask|deny, "
    "reason}`. A run's or task's own rules are applied after these and can only make a call stricter. It applies "
    "from the next turn of every run, running ones included.",
    responses={200: json_content(PolicyDocument, "The rules as stored.", example=ex.POLICY)},
)
def put_policy_route(
    document: Annotated[PolicyDocument, Body(openapi_examples=ex.body_examples(policy=ex.POLICY))],
) -> Response[PolicyDocument]:
    tenant, _ = _principal()
    get_dependencies().approvals.put_policy(tenant, document.rules, at=utcnow())
    return ok(document)


# ---------------------------------------------------------------- approvals


@router.get(
    "/runs/<run_id>/approvals",
    operation_id="listRunApprovals",
    tags=["approvals"],
    summary="List a run's approvals",
    description="Tool calls that needed a person's approval: call id, tool, arguments, the rule and its reason, "
    "when asked, when it expires, and the decision, who took it (API key id) and their comment.",
    responses={
        200: json_content(ApprovalList, "The run's approvals.", example=ex.APPROVAL_LIST),
        **error_contents(HTTPStatus.NOT_FOUND),
    },
)
def get_approvals(run_id: RunIdPath) -> Response[ApprovalList]:
    tenant, _ = _principal()
    return ok(ApprovalList(run_id=run_id, approvals=list_approvals(run_id, tenant, get_dependencies())))


@router.post(
    "/runs/<run_id>/approvals/<call_id>",
    operation_id="decideRunApproval",
    tags=["approvals"],
    summary="Approve or reject a tool call",
    description="Once every pending call of the turn is decided the run goes on: approved calls run, rejected "
    "ones are not executed and the model reads the rejection. The same decision again answers the approval "
    "as recorded; a different one after the first, or a decision after it expired, is a 409.",
    responses={
        200: json_content(Approval, "The approval, decided.", example=ex.APPROVAL),
        **error_contents(HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT),
    },
)
def post_approval(
    run_id: RunIdPath,
    call_id: CallIdPath,
    body: Annotated[ApprovalDecision, Body(openapi_examples=ex.body_examples(approve=ex.APPROVAL_DECISION))],
) -> Response[Approval]:
    tenant, by = _principal()
    deps = get_dependencies()
    return ok(decide(run_id, call_id, tenant, deps, decision=body.decision, by=by, comment=body.comment))


# ---------------------------------------------------------------- messages


@router.post(
    "/runs/<run_id>/messages",
    operation_id="sendRunMessage",
    tags=["approvals"],
    summary="Send a message to a live run",
    description="Steers a QUEUED, RUNNING or AWAITING_APPROVAL run: the message is recorded as a `user_message` "
    "event and the run's next model call reads it. A run that has ended answers 409 (follow-ups on a finished "
    "run are not supported yet).",
    responses={
        201: json_content(UserMessageEvent, "The message, as recorded in the transcript.", example=ex.USER_MESSAGE),
        **error_contents(HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT),
    },
)
def post_message(
    run_id: RunIdPath,
    body: Annotated[MessageRequest, Body(openapi_examples=ex.body_examples(steer=ex.MESSAGE_REQUEST))],
) -> Response[UserMessageEvent]:
    tenant, by = _principal()
    return ok(send_message(run_id, tenant, body.text, get_dependencies(), by=by), HTTPStatus.CREATED)


# ---------------------------------------------------------------- errors


@router.exception_handler(ApprovalNotFound)
def _approval_not_found(error: ApprovalNotFound) -> Response:
    return error_response(HTTPStatus.NOT_FOUND, "not_found", str(error))


@router.exception_handler(ApprovalConflict)
def _approval_conflict(error: ApprovalConflict) -> Response:
    return error_response(HTTPStatus.CONFLICT, "conflict", str(error), "decision")


@router.exception_handler(RunNotLive)
def _run_not_live(error: RunNotLive) -> Response:
    return error_response(HTTPStatus.CONFLICT, "run_ended", str(error))


@router.exception_handler(RunBusy)
def _run_busy(error: RunBusy) -> Response:
    return error_response(HTTPStatus.CONFLICT, "run_busy", str(error))
