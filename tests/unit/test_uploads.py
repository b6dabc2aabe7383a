"""The S3 inbox convention: events of both shapes, one run per object version, clear rejections, the outbox."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest

from sandcastle.local.template import Template
from sandcastle.runs.records import Artifact, RunStatus
from sandcastle.runs.requests import PlaybookCall, TaskDefinition
from sandcastle.runs.tasks import put_task
from sandcastle.runs.uploads import InboxObject, created_objects, start_upload_run, upload_run_id, write_outbox
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies
from tests.fakes.sandbox import FakeSandboxProvider

REGION = "us-east-1"
PLAYBOOK = [PlaybookCall(tool="run_command", arguments={"command": "wc -l input/*"})]


@pytest.fixture
def inbox_deps(aws: Template, deps: Dependencies) -> Dependencies:
    settings = deps.settings.model_copy(update={"inbox_bucket": aws.physical_name("InboxBucket")})
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_bucket_versioning(Bucket=settings.inbox_bucket, VersioningConfiguration={"Status": "Enabled"})
    new = Dependencies(settings, sandboxes=deps.sandboxes, events=deps.events)
    put_task("acme", "count", TaskDefinition(instructions="Count the rows", playbook=PLAYBOOK), new)
    return new


def _put(deps: Dependencies, key: str, data: bytes = b"a,b\n1,2\n", **metadata: str) -> InboxObject:
    s3 = boto3.client("s3", region_name=REGION)
    response = s3.put_object(Bucket=deps.settings.inbox_bucket, Key=key, Body=data, Metadata=metadata)
    return InboxObject(deps.settings.inbox_bucket, key, response["VersionId"], len(data))


def _result(deps: Dependencies, key: str) -> dict[str, Any]:
    s3 = boto3.client("s3", region_name=REGION)
    return json.loads(s3.get_object(Bucket=deps.settings.inbox_bucket, Key=key)["Body"].read())


# ---------------------------------------------------------------- events


def test_an_s3_notification_key_is_url_decoded() -> None:
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "inbox"},
                    "object": {"key": "inbox/acme/count/q3+sales+%C3%BC%2B1%25.csv", "versionId": "v1", "size": 3},
                },
            },
            {"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete", "s3": {}},
        ]
    }

    assert created_objects(event) == [InboxObject("inbox", "inbox/acme/count/q3 sales ü+1%.csv", "v1", 3)]


def test_an_eventbridge_object_created_key_is_taken_as_it_is() -> None:
    event = {
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {
            "bucket": {"name": "inbox"},
            "object": {"key": "inbox/acme/count/q3 sales+ü%41.csv", "version-id": "v1", "size": 3, "etag": "e"},
        },
    }

    assert created_objects(event) == [InboxObject("inbox", "inbox/acme/count/q3 sales+ü%41.csv", "v1", 3, "e")]


def test_the_run_id_names_one_object_version() -> None:
    first = upload_run_id("b", "inbox/a/t/f.csv", "v1")

    assert first == upload_run_id("b", "inbox/a/t/f.csv", "v1")
    assert first != upload_run_id("b", "inbox/a/t/f.csv", "v2")
    assert first.startswith("run-") and len(first) == 36


# ---------------------------------------------------------------- starting runs


@pytest.mark.parametrize(
    "name", ["semi;colon.txt", 'quo"te.txt', "ha#sh.txt", "50%.txt", "back\\slash.txt", "a+b c.txt"]
)
def test_an_uploads_file_name_is_kept_exactly(inbox_deps: Dependencies, name: str) -> None:
    notification = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": inbox_deps.settings.inbox_bucket},
                    "object": {"key": quote_plus(f"inbox/acme/count/{name}", safe="/"), "versionId": None},
                },
            }
        ]
    }
    obj = _put(inbox_deps, f"inbox/acme/count/{name}")
    [decoded] = created_objects(notification)  # an S3 notification carries the key URL-encoded
    assert decoded.key == obj.key

    run = inbox_deps.store.get_run(start_upload_run(obj, inbox_deps).run_id or "")

    assert [f.name for f in run.files] == [name]


def test_an_upload_starts_a_run_with_the_file_as_input(inbox_deps: Dependencies) -> None:
    obj = _put(inbox_deps, "inbox/acme/count/sales 2026 ü.csv")

    outcome = start_upload_run(obj, inbox_deps)

    assert outcome.status == "started"
    run = inbox_deps.store.get_run(outcome.run_id or "")
    assert run.source == "s3" and run.tenant == "acme" and run.status is RunStatus.QUEUED
    assert run.origin and (run.origin.task, run.origin.key, run.origin.version_id) == ("count", obj.key, obj.version_id)
    [file] = run.files
    assert file.name == "sales 2026 ü.csv" and file.s3_key == f"runs/{run.run_id}/input/sales 2026 ü.csv"
    assert inbox_deps.objects.get(file.s3_key) == b"a,b\n1,2\n"
    assert outcome.result_key == f"outbox/acme/count/{run.run_id}/result.json"


def test_the_same_object_version_twice_is_one_run(inbox_deps: Dependencies) -> None:
    obj = _put(inbox_deps, "inbox/acme/count/data.csv")

    first, second = start_upload_run(obj, inbox_deps), start_upload_run(obj, inbox_deps)

    assert (first.status, second.status) == ("started", "duplicate")
    assert first.run_id == second.run_id
    again = start_upload_run(_put(inbox_deps, "inbox/acme/count/data.csv"), inbox_deps)  # a new version
    assert again.status == "started" and again.run_id != first.run_id


@pytest.mark.parametrize(
    ("key", "data", "error_type", "message", "where"),
    [
        ("inbox/acme/nope/data.csv", b"1", "UnknownTask", "tenant 'acme' has no task named 'nope'", "acme/nope"),
        ("inbox/acme/count/empty.csv", b"", "EmptyFile", "empty.csv is empty", "acme/count"),
        (
            "inbox/acme/count/big.csv",
            b"x" * 2048,
            "FileTooLarge",
            "big.csv is 2048 bytes; the limit is 1024",
            "acme/count",
        ),
        ("inbox/acme/data.csv", b"1", "InvalidKey", "does not follow inbox/<tenant>/<task>/<file name>", "acme/_"),
        ("inbox/acme/count/sub/data.csv", b"1", "InvalidKey", "does not follow", "acme/_"),
        ("inbox/acme/count/.hidden", b"1", "InvalidName", "starts with '.'", "acme/count"),
        ("inbox/acme/count/a\x07b.csv", b"1", "InvalidName", "control character", "acme/count"),
        ("inbox/bad tenant!/count/d.csv", b"1", "InvalidKey", "tenant 'bad tenant!'", "_unknown/count"),
        ("inbox/../count/d.csv", b"1", "InvalidKey", "tenant '..'", "_unknown/count"),
        ("inbox/acme/_/notes.txt", b"1", "MissingInstructions", "x-amz-meta-instructions", "acme/_"),
    ],
)
def test_a_bad_upload_is_rejected_with_a_result_and_no_sandbox(
    inbox_deps: Dependencies, key: str, data: bytes, error_type: str, message: str, where: str
) -> None:
    limited = inbox_deps.settings.model_copy(update={"inbox_max_file_bytes": 1024})
    deps = Dependencies(limited, sandboxes=inbox_deps.sandboxes, events=inbox_deps.events)

    outcome = start_upload_run(_put(deps, key, data), deps)

    assert outcome.status == "rejected"
    assert outcome.result_key == f"outbox/{where}/{outcome.run_id}/result.json"
    result = _result(deps, outcome.result_key)
    assert result["status"] == "REJECTED" and result["source"]["key"] == key
    assert result["error"]["type"] == error_type and message in result["error"]["message"]
    assert isinstance(deps.sandboxes, FakeSandboxProvider) and deps.sandboxes.created == []


def test_instructions_can_ride_on_the_object(inbox_deps: Dependencies) -> None:
    obj = _put(inbox_deps, "inbox/acme/_/notes.txt", b"hi", instructions="R%C3%A9sume the notes")

    outcome = start_upload_run(obj, inbox_deps)

    run = inbox_deps.store.get_run(outcome.run_id or "")
    assert run.instructions == "Résume the notes" and run.origin and run.origin.task == "_"


def test_objects_outside_the_inbox_are_ignored(inbox_deps: Dependencies) -> None:
    assert start_upload_run(_put(inbox_deps, "outbox/acme/count/x/result.json"), inbox_deps).status == "ignored"
    assert start_upload_run(_put(inbox_deps, "inbox/acme/count/", b""), inbox_deps).status == "ignored"


# ---------------------------------------------------------------- the outbox


def test_a_finished_upload_run_writes_its_artifacts_and_result(inbox_deps: Dependencies) -> None:
    outcome = start_upload_run(_put(inbox_deps, "inbox/acme/count/data.csv"), inbox_deps)
    run_id = outcome.run_id or ""
    inbox_deps.objects.put(f"runs/{run_id}/artifacts/report.txt", b"2 rows")
    artifact = Artifact(
        name="report.txt", size=6, sha256="x", content_type="text/plain", s3_key=f"runs/{run_id}/artifacts/report.txt"
    )
    inbox_deps.store.update_run(
        run_id,
        RunUpdate(
            set={"status": RunStatus.SUCCEEDED, "result": "2 rows", "artifacts": [artifact]},
            require_not_terminal=True,
            release_slot_of="acme",
        ),
    )

    key = write_outbox(run_id, inbox_deps)

    assert key == f"outbox/acme/count/{run_id}/result.json" == outcome.result_key
    result = _result(inbox_deps, key)
    assert result["status"] == "SUCCEEDED" and result["answer"] == "2 rows"
    assert result["artifacts"][0]["key"] == f"outbox/acme/count/{run_id}/report.txt"
    assert inbox_deps.inbox.get(f"outbox/acme/count/{run_id}/report.txt") == b"2 rows"
    assert write_outbox(run_id, inbox_deps) == key  # a repeated event rewrites the same objects


def test_runs_not_started_by_an_upload_write_no_outbox(inbox_deps: Dependencies) -> None:
    from sandcastle.runs.requests import RunRequest
    from sandcastle.runs.submit import submit_run

    run = submit_run(RunRequest(instructions="x", playbook=PLAYBOOK, source="api"), inbox_deps)
    inbox_deps.store.update_run(
        run.run_id,
        RunUpdate(set={"status": RunStatus.SUCCEEDED}, require_not_terminal=True, release_slot_of=run.tenant),
    )

    assert write_outbox(run.run_id, inbox_deps) is None
    assert write_outbox("run-unknown", inbox_deps) is None
