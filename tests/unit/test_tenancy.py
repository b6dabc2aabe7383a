"""Tenancy: one file-name rule, one tenant-name rule, s3_key confined to the caller's uploads (by the
domain check and by IAM), upload tickets, signed local links, exact download names."""

from __future__ import annotations

import base64
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from pydantic import ValidationError

from sandcastle.errors import InvalidRunRequest
from sandcastle.runs.input_files import UploadRequest, create_upload
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.store.downloads import DownloadLinks, LinkSigner, LocalUploadLinks, content_disposition
from sandcastle.store.keys import ApiKeyStore
from sandcastle.store.tenant_files import TenantFiles
from sandcastle.wiring import Dependencies
from tests.template_support import load_template

TRICKY_NAMES = ["semi;colon.txt", 'quo"te.txt', "ha#sh.txt", "50%.txt", "%41.txt", "back\\slash.txt", "sp ace .txt"]
PLAYBOOK = [{"tool": "run_command", "arguments": {"command": "ls ~/input"}}]


def _request(tenant: str, files: list[dict], **fields: Any) -> RunRequest:
    return RunRequest.model_validate(
        {"instructions": "Read the inputs.", "tenant": tenant, "files": files, "playbook": PLAYBOOK, **fields}
    )


def _put(deps: Dependencies, key: str, data: bytes = b"tenant A's secret\n") -> None:
    deps.objects.put(key, data)


# --- one file-name rule ---


@pytest.mark.parametrize("name", TRICKY_NAMES + ["ünï cödé.csv", "x" * 255])
def test_names_that_can_be_kept_are_kept_exactly(deps: Dependencies, name: str) -> None:
    run = submit_run(_request("acme", [{"name": name, "content_base64": base64.b64encode(b"1").decode()}]), deps)

    assert [f.name for f in run.files] == [name]
    assert run.files[0].s3_key == f"runs/{run.run_id}/input/{name}"
    assert deps.objects.get(run.files[0].s3_key) == b"1"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a/b.txt", "'/'"),
        ("..", "starts with '.'"),
        (".", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("tab\there", "control character"),
        ("nul\x00", "control character"),
        ("é" * 128, "at most 255 bytes"),
        ("", "must not be empty"),
    ],
)
def test_names_that_cannot_be_kept_are_refused_naming_the_field(name: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _request("acme", [{"name": name, "content_base64": "eA=="}])
    [issue] = caught.value.errors()
    assert issue["loc"] == ("files", 0, "name") and reason in issue["msg"]


# --- one tenant-name rule ---


@pytest.mark.parametrize("tenant", ["..", ".", "a/b", "", "-x", "_unknown", "a b", "x" * 65])
def test_keys_create_refuses_what_is_not_a_tenant_name(deps: Dependencies, tenant: str) -> None:
    with pytest.raises(ValueError, match="is not 1-64 letters, digits"):
        ApiKeyStore(deps.settings.table_name).create(tenant)
    with pytest.raises(ValidationError, match="is not 1-64 letters, digits"):
        _request(tenant, [])


def test_a_tenant_name_with_dots_inside_is_fine(deps: Dependencies) -> None:
    assert ApiKeyStore(deps.settings.table_name).create("acme.eu-1").tenant == "acme.eu-1"


# --- s3_key: only the caller's own uploads ---


@pytest.mark.parametrize(
    "key",
    [
        "uploads/alpha/up-1/secret.txt",  # another tenant's upload
        "runs/run-of-alpha/input/secret.txt",  # another run's input
        "runs/run-of-alpha/artifacts/out.txt",
        "uploads/beta/../alpha/up-1/secret.txt",  # a dot segment under one's own prefix
        "uploads/beta",
    ],
)
def test_tenant_b_naming_another_tenants_key_is_refused(deps: Dependencies, key: str) -> None:
    _put(deps, key)

    with pytest.raises(InvalidRunRequest) as caught:
        submit_run(_request("beta", [{"name": "secret.txt", "s3_key": key}]), deps)

    assert caught.value.field == "files[0].s3_key" and "uploads/beta/" in str(caught.value)
    assert deps.executions.client.list_executions(stateMachineArn=deps.settings.state_machine_arn)["executions"] == []


def test_an_own_upload_is_copied_into_the_run_with_its_name_exact(deps: Dependencies) -> None:
    name = 'semi;colon "q" #1 %20 \\.txt'
    _put(deps, f"uploads/beta/up-1/{name}", b"mine\n")

    run = submit_run(_request("beta", [{"name": name, "s3_key": f"uploads/beta/up-1/{name}"}]), deps)

    [stored] = run.files
    assert (stored.name, stored.s3_key, stored.size) == (name, f"runs/{run.run_id}/input/{name}", 5)
    assert deps.objects.get(stored.s3_key) == b"mine\n"


class RecordingSts:
    """moto's STS, recording each AssumeRole request (moto does not evaluate session policies; the local
    permission check does: tests/unit/test_permissions.py, tests/integration/test_tenancy_http.py)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._sts = boto3.client("sts", region_name="us-east-1")

    def assume_role(self, **request: Any) -> dict:
        self.calls.append(request)
        return self._sts.assume_role(**request)


def test_the_copy_runs_in_a_session_iam_confines_to_the_tenant(deps: Dependencies) -> None:
    sts = RecordingSts()
    settings = deps.settings
    deps.__dict__["tenant_files"] = TenantFiles(
        settings.artifacts_bucket, settings.tenant_files_role_arn, region="us-east-1", sts=sts
    )
    _put(deps, "uploads/beta/up-1/data.csv", b"1\n")

    run = submit_run(_request("beta", [{"name": "data.csv", "s3_key": "uploads/beta/up-1/data.csv"}]), deps)

    [call] = sts.calls
    assert call["RoleArn"] == settings.tenant_files_role_arn
    assert call["Tags"] == [{"Key": "tenant", "Value": "beta"}]
    import json

    policy = json.loads(call["Policy"])
    bucket = f"arn:aws:s3:::{settings.artifacts_bucket}"
    assert {(s["Action"][0], s["Resource"]) for s in policy["Statement"]} == {
        ("s3:GetObject", f"{bucket}/uploads/beta/*"),
        ("s3:ListBucket", bucket),
        ("s3:PutObject", f"{bucket}/runs/{run.run_id}/input/*"),
    }


def test_the_template_lets_only_tagged_tenant_sessions_touch_uploads() -> None:
    resources = load_template()["Resources"]
    bucket_policy = resources["ArtifactsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    [deny] = [s for s in bucket_policy if s["Sid"] == "TenantUploadsOnlyThroughTenantSessions"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert deny["Resource"] == {"Fn::Sub": "${ArtifactsBucket.Arn}/uploads/*"}
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": ["TenantFilesRole", "Arn"]}}}

    role = resources["TenantFilesRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert set(trust["Action"]) == {"sts:AssumeRole", "sts:TagSession"}
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    upload_resources = [s["Resource"] for s in statements if "s3:GetObject" in s["Action"]]
    assert upload_resources == [{"Fn::Sub": "${ArtifactsBucket.Arn}/uploads/${!aws:PrincipalTag/tenant}/*"}]

    rules = resources["ArtifactsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert {"Id": "ExpireTenantUploads", "Status": "Enabled", "Prefix": "uploads/", "ExpirationInDays": 1} in rules
    for function in ("ApiFunction", "SubmitRunFunction"):
        properties = resources[function]["Properties"]
        assert properties["Environment"]["Variables"]["TENANT_FILES_ROLE_ARN"] == {
            "Fn::GetAtt": ["TenantFilesRole", "Arn"]
        }


# --- POST /uploads, the domain ---


def test_an_upload_ticket_names_a_fresh_key_under_the_tenants_prefix(deps: Dependencies) -> None:
    sts = RecordingSts()
    settings = deps.settings
    deps.__dict__["tenant_files"] = TenantFiles(
        settings.artifacts_bucket, settings.tenant_files_role_arn, region="us-east-1", sts=sts
    )

    ticket = create_upload("beta", UploadRequest(name="big data;1.csv", size=3), deps)

    assert ticket.key.startswith("uploads/beta/up-") and ticket.key.endswith("/big data;1.csv")
    assert ticket.headers["Content-Length"] == "3"
    import json

    [call] = sts.calls
    [statement] = json.loads(call["Policy"])["Statement"]
    assert statement["Action"] == ["s3:PutObject"]
    assert statement["Resource"] == f"arn:aws:s3:::{settings.artifacts_bucket}/{ticket.key}"


def test_an_upload_over_the_input_limit_is_refused_naming_size(deps: Dependencies) -> None:
    with pytest.raises(InvalidRunRequest) as caught:
        create_upload("beta", UploadRequest(name="x", size=deps.settings.max_input_file_bytes + 1), deps)
    assert caught.value.field == "size"


# --- links ---


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_a_download_name_survives_content_disposition_exactly(name: str) -> None:
    header = Message()
    header["Content-Disposition"] = content_disposition(name)
    assert header.get_filename() == name  # the quoted-string, for clients that read only filename=


@pytest.mark.parametrize("name", [*TRICKY_NAMES, "ünï cödé.txt"])
def test_the_rfc_6266_filename_star_is_exact_for_any_name(name: str) -> None:
    star = content_disposition(name).split("filename*=", 1)[1]
    assert star.startswith("UTF-8''") and unquote(star.removeprefix("UTF-8''")) == name


def test_local_links_are_signed_for_one_run_and_expire() -> None:
    signer = LinkSigner("s3cret")
    good = signer.signature("get", "runs/r1/artifacts/a.txt", "r1", 2000)

    assert signer.verify("get", "runs/r1/artifacts/a.txt", "r1", "2000", good, now=1000)
    assert not signer.verify("get", "runs/r1/artifacts/a.txt", "r1", "2000", good, now=2001)  # expired
    assert not signer.verify("get", "runs/r1/artifacts/a.txt", "r2", "2000", good, now=1000)  # other run
    assert not signer.verify("get", "runs/r1/artifacts/b.txt", "r1", "2000", good, now=1000)  # other key
    assert not signer.verify("get", "runs/r1/artifacts/a.txt", "r1", "3000", good, now=1000)  # longer life
    assert not signer.verify("put", "runs/r1/artifacts/a.txt", "r1", "2000", good, now=1000)  # other action
    assert not LinkSigner("other").verify("get", "runs/r1/artifacts/a.txt", "r1", "2000", good, now=1000)


def test_local_urls_carry_the_signature_never_the_secret() -> None:
    download = DownloadLinks("b", local_base_url="http://127.0.0.1:1", local_secret="s3cret-value")
    upload = LocalUploadLinks("http://127.0.0.1:1", "s3cret-value")
    urls = [
        download.url("runs/r1/artifacts/a #1.txt", run_id="r1", filename="a #1.txt"),
        upload.put_url("beta", "uploads/beta/up-1/x", size=3, content_type="text/plain", expires_s=60),
    ]
    assert all("s3cret-value" not in url and "signature=" in url for url in urls)
    assert "/local-artifacts/runs/r1/artifacts/a%20%231.txt?" in urls[0]
    with pytest.raises(ValueError, match="link secret"):
        DownloadLinks("b", local_base_url="http://127.0.0.1:1")


# --- the local E2B server keeps upload paths exactly (where `semi;colon.txt` used to become `semi`) ---


class _Workspace:
    def __init__(self) -> None:
        import tempfile

        self.written: dict[str, bytes] = {}
        self.workspace = Path(tempfile.mkdtemp(prefix="sandcastle-upload-"))

    def write_file(self, path: str, data: bytes) -> None:
        from sandcastle.sandbox import workspace_files

        self.written[path] = data
        workspace_files.write_file(self.workspace, path, data, owner=None)


class _Record:
    sandbox_id = "lsb-test"

    def __init__(self) -> None:
        self.sandbox = _Workspace()


def _multipart(files: dict[str, bytes]) -> tuple[str, bytes]:
    import httpx

    request = httpx.Request("POST", "http://envd/files", files=[("file", (n, d)) for n, d in files.items()])
    return request.headers["Content-Type"], request.read()


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_an_sdk_upload_with_a_path_lands_at_that_exact_path(name: str) -> None:
    from urllib.parse import urlencode

    from sandcastle.e2b_server.filesystem import upload

    record = _Record()
    content_type, body = _multipart({f"input/{name}": b"1"})

    query = urlencode({"path": f"input/{name}"})
    status, _, _ = upload(record, query, {"content-type": content_type}, body)  # type: ignore[arg-type]

    assert status == 200 and record.sandbox.written == {f"/home/user/input/{name}": b"1"}


def test_a_multipart_filename_is_read_as_a_quoted_string() -> None:
    from sandcastle.e2b_server.filesystem import upload

    record = _Record()
    content_type, body = _multipart({"in/semi;colon.txt": b"1", "in/back\\slash.txt": b"2"})

    status, _, _ = upload(record, "", {"content-type": content_type}, body)  # type: ignore[arg-type]

    assert status == 200
    assert record.sandbox.written == {"/home/user/in/semi;colon.txt": b"1", "/home/user/in/back\\slash.txt": b"2"}
