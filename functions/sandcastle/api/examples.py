"""The examples the OpenAPI document shows, one per request body and per success response.

Each is built through its model, so an example the model would refuse fails at import rather than
misleading a reader; the values are what the API gives (ids, keys and messages in their real shapes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from sandcastle.api.models import (
    ApprovalDecision,
    ApprovalList,
    ArtifactList,
    ArtifactView,
    MessageRequest,
    RunList,
    RunSubmission,
    RunSummary,
)
from sandcastle.runs.input_files import UploadRequest, UploadTicket
from sandcastle.runs.policy import PolicyDocument
from sandcastle.runs.records import Approval, Run, Schedule, Task
from sandcastle.runs.requests import ScheduleRequest, TaskDefinition
from sandcastle.runs.transcript import EventKind, UserMessageData, UserMessageEvent

_CREATED = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
_ENDED = datetime(2026, 12, 1, 9, 0, 42, tzinfo=UTC)
_RUN_ID = "run-5f0c8e7a2d9b4c1e8a6f3b0d7e2c9a41"
_INSTRUCTIONS = "Summarise data.csv: row count and the mean of each numeric column; write summary.md to ~/output."

RUN_SUBMISSION = RunSubmission.model_validate(
    {
        "instructions": _INSTRUCTIONS,
        "files": [{"name": "data.csv", "content_base64": "YSxiCjEsMgozLDQK"}],
        "budgets": {"max_steps": 20, "max_tool_calls": 40, "timeout_s": 600},
    }
)
PLAYBOOK_SUBMISSION = RunSubmission.model_validate(
    {
        "instructions": "Count the lines of the uploaded log.",
        "files": [{"name": "app.log", "s3_key": "uploads/acme/up-3c9d1e0f7a2b4c5d6e7f8a9b/app.log"}],
        "playbook": [{"tool": "run_command", "arguments": {"command": "wc -l ~/input/app.log"}}],
    }
)

RUN = Run.model_validate(
    {
        "run_id": _RUN_ID,
        "tenant": "acme",
        "source": "api",
        "status": "SUCCEEDED",
        "instructions": _INSTRUCTIONS,
        "model_backend": "openai",
        "model": "gpt-4.1-mini",
        "budgets": {"max_steps": 20, "max_tool_calls": 40, "timeout_s": 600},
        "files": [{"name": "data.csv", "s3_key": f"runs/{_RUN_ID}/input/data.csv", "size": 12}],
        "sandbox_id": "i3k9x2m7q1w8e5r4t6y0u",
        "step": 3,
        "usage": {"steps": 3, "input_tokens": 4210, "output_tokens": 388, "tool_calls": 2, "tool_ms": 1840},
        "stop_reason": "completed",
        "result": "data.csv has 2 rows; mean a = 2, mean b = 3. Wrote summary.md.",
        "artifacts": [
            {
                "name": "summary.md",
                "size": 64,
                "sha256": "9f2c4e1a7b3d5f6e8a0c2e4f6a8b0d2f4e6a8c0e2f4a6b8d0f2e4a6c8e0a2b4d",
                "content_type": "text/markdown",
                "s3_key": f"runs/{_RUN_ID}/artifacts/summary.md",
            }
        ],
        "created_at": _CREATED,
        "started_at": _CREATED,
        "ended_at": _ENDED,
        "deadline": datetime(2026, 12, 1, 9, 10, 0, tzinfo=UTC),
    }
)
RUN_LIST = RunList(runs=[RunSummary.of(RUN)], cursor=None)
ARTIFACT_LIST = ArtifactList(
    run_id=_RUN_ID,
    artifacts=[
        ArtifactView(
            **RUN.artifacts[0].model_dump(),
            url=f"https://sandcastle-artifacts.s3.amazonaws.com/runs/{_RUN_ID}/artifacts/summary.md?X-Amz-Expires=3600",
        )
    ],
)

UPLOAD_REQUEST = UploadRequest(name="app.log", size=48_213_004, content_type="text/plain")
UPLOAD_TICKET = UploadTicket(
    key="uploads/acme/up-3c9d1e0f7a2b4c5d6e7f8a9b/app.log",
    url="https://sandcastle-artifacts.s3.amazonaws.com/uploads/acme/up-3c9d1e0f7a2b4c5d6e7f8a9b/app.log?X-Amz-Expires=3600",
    headers={"Content-Type": "text/plain", "Content-Length": "48213004"},
    expires_at=datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC),
    max_bytes=48_213_004,
)

TASK_DEFINITION = TaskDefinition(
    instructions="Convert the uploaded CSV to Parquet and write it to ~/output.",
    budgets={"max_steps": 10, "timeout_s": 300},
    max_input_bytes=100_000_000,
)
TASK = Task(
    **TASK_DEFINITION.model_dump(), name="csv-to-parquet", tenant="acme", created_at=_CREATED, updated_at=_CREATED
)

SCHEDULE_REQUEST = ScheduleRequest(
    expression="cron(0 6 * * ? *)", timezone="Europe/Berlin", task="csv-to-parquet", description="Every morning"
)
SCHEDULE = Schedule(
    **SCHEDULE_REQUEST.model_dump(),
    schedule_id="sch-7e1f0a9b3c5d2e4f6a8b",
    tenant="acme",
    created_at=_CREATED,
    last_run_id="run-0d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a",
    last_scheduled_time="2026-12-01T05:00:00Z",
)

POLICY = PolicyDocument.model_validate(
    {
        "rules": [
            {"tool": "run_command", "match": {"command": r"\brm\s+-rf\s+/"}, "action": "deny", "reason": "never"},
            {
                "tool": "run_command",
                "match": {"command": r"\b(pip|npm) install\b"},
                "action": "ask",
                "reason": "installs packages",
            },
            {"tool": "*", "action": "allow"},
        ]
    }
)
APPROVAL = Approval(
    run_id=_RUN_ID,
    step=2,
    call_index=0,
    tool_call_id="call_Qm8h2ZkT0b7n",
    tool="run_command",
    arguments='{"command": "pip install pandas"}',
    rule={"layer": "tenant", "index": 1},
    reason="installs packages",
    asked_at=_CREATED,
    expires_at=datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC),
    decision="approve",
    decided_by="key-2b7c9d1e",
    decided_at=datetime(2026, 12, 1, 9, 3, 10, tzinfo=UTC),
    comment="ok, pandas only",
)
APPROVAL_LIST = ApprovalList(run_id=_RUN_ID, approvals=[APPROVAL])
APPROVAL_DECISION = ApprovalDecision(decision="approve", comment="ok, pandas only")
MESSAGE_REQUEST = MessageRequest(text="Use the second sheet, not the first.")
USER_MESSAGE = UserMessageEvent(
    kind=EventKind.USER_MESSAGE,
    run_id=_RUN_ID,
    key="EVT#000002#999#user_message#01796176348052865000-9f3a0c1d",
    step=2,
    at=datetime(2026, 12, 1, 9, 2, 30, tzinfo=UTC),
    data=UserMessageData(text="Use the second sheet, not the first.", sent_by="key-2b7c9d1e"),
)


def examples(**named: BaseModel) -> dict[str, Any]:
    """OpenAPI examples (``{name: {"value": ...}}``) of models, as the API serializes them."""
    return {name: {"value": model.model_dump(mode="json", exclude_none=True)} for name, model in named.items()}


def body_examples(**named: BaseModel) -> dict[str, Any]:
    """OpenAPI examples of request bodies: the fields a client sends, not the defaults it leaves out."""
    return {name: {"value": model.model_dump(mode="json", exclude_unset=True)} for name, model in named.items()}
