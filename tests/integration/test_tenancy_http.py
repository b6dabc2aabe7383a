"""Tenancy over real HTTP: POST /uploads → PUT → a run that reads the file; another tenant's key refused
(by the domain check, and by IAM alone with that check disabled); signed, run-scoped, expiring artifact
links; names kept exactly end to end (through the local E2B server)."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest

from sandcastle.local.gateway import LocalGateway
from sandcastle.local.runtime import LocalRuntime
from sandcastle.store.keys import ApiKeyStore
from tests.integration.test_api_gateway import Http, gateway, http  # noqa: F401 - fixtures

pytestmark = pytest.mark.bwrap

NAME = 'big;data "1" #2 %41 \\ x.bin'


def _put(url: str, data: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def _upload(http: Http, name: str, data: bytes) -> str:  # noqa: F811
    status, _, ticket = http("POST", "/uploads", {"name": name, "size": len(data)})
    assert status == 201, ticket
    assert _put(ticket["url"], data, ticket["headers"]) == 200
    return ticket["key"]


def test_an_uploaded_file_reaches_the_run_and_comes_back_under_its_exact_name(http: Http) -> None:  # noqa: F811
    data = bytes(range(256)) * 8192  # 2 MiB: over the inline cap
    key = _upload(http, NAME, data)
    assert key.startswith("uploads/acme/") and key.endswith("/" + NAME)
    playbook = [
        {"tool": "run_command", "arguments": {"command": "ls ~/input; mkdir -p ~/output; cp ~/input/* ~/output/"}}
    ]

    status, _, run = http(
        "POST", "/runs", {"instructions": "Copy.", "playbook": playbook, "files": [{"name": NAME, "s3_key": key}]}
    )
    assert status == 201, run
    events = http.tail(run["run_id"])

    [result] = [e for e in events if e["kind"] == "tool_result"]
    assert result["data"]["output"]["stdout"]["text"] == NAME + "\n"
    final = http("GET", f"/runs/{run['run_id']}")[2]
    assert final["status"] == "SUCCEEDED" and final["files"][0]["name"] == NAME
    [artifact] = http("GET", f"/runs/{run['run_id']}/artifacts")[2]["artifacts"]
    assert artifact["name"] == NAME and artifact["sha256"] == hashlib.sha256(data).hexdigest()
    status, body, headers = _get(artifact["url"])
    assert status == 200 and body == data
    star = headers["Content-Disposition"].split("filename*=UTF-8''", 1)[1]
    assert unquote(star) == NAME


def test_tenant_b_naming_tenant_as_key_is_refused(http: Http, gateway: LocalGateway, runtime: LocalRuntime) -> None:  # noqa: F811
    key = _upload(http, "secret.txt", b"acme only\n")
    other = Http(gateway.url, ApiKeyStore(runtime.deps.settings.table_name).create("beta").key)

    status, _, error = other(
        "POST",
        "/runs",
        {
            "instructions": "Steal.",
            "playbook": [{"tool": "run_command", "arguments": {"command": "ls"}}],
            "files": [{"name": "s.txt", "s3_key": key}],
        },
    )

    assert status == 422 and error["field"] == "files[0].s3_key" and "uploads/beta/" in error["message"]
    assert other("GET", "/runs")[2]["runs"] == []


@pytest.fixture
def without_the_domain_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The submission path's own ``uploads/<tenant>/`` check accepts anything: only IAM is left."""
    monkeypatch.setattr("sandcastle.runs.submit.check_tenant_key", lambda key, tenant, *, field: None)


@pytest.mark.usefixtures("without_the_domain_check")
def test_with_the_domain_check_disabled_iam_alone_refuses_another_tenants_key(
    http: Http,  # noqa: F811
    gateway: LocalGateway,  # noqa: F811
    runtime: LocalRuntime,
) -> None:
    key = _upload(http, "secret.txt", b"acme only\n")
    other = Http(gateway.url, ApiKeyStore(runtime.deps.settings.table_name).create("beta").key)
    playbook = [{"tool": "run_command", "arguments": {"command": "cat ~/input/*"}}]
    files = [{"name": "mine.txt", "content_base64": "eA=="}, {"name": "s.txt", "s3_key": key}]

    status, _, error = other("POST", "/runs", {"instructions": "Steal.", "playbook": playbook, "files": files})

    assert status == 422, error
    assert error["field"] == "files[1].s3_key" and "is not one of tenant 'beta'" in error["message"]
    assert other("GET", "/runs")[2]["runs"] == []
    assert runtime.permissions is not None
    who, refused = runtime.permissions.denied[-1]  # S3 was asked, with beta's session, and IAM said no
    assert who == "sandcastle-local-ApiFunction as sandcastle-local-TenantFilesRole/tenant-beta"
    assert (refused.action, refused.resource) == ("s3:GetObject", f"arn:aws:s3:::{runtime.deps.objects.bucket}/{key}")


@pytest.mark.usefixtures("without_the_domain_check")
def test_with_the_domain_check_disabled_a_tenants_own_key_still_reaches_its_run(
    http: Http,  # noqa: F811
    runtime: LocalRuntime,
) -> None:
    key = _upload(http, "mine.txt", b"acme's own\n")
    playbook = [{"tool": "run_command", "arguments": {"command": "cat ~/input/mine.txt"}}]

    status, _, run = http(
        "POST", "/runs", {"instructions": "Read.", "playbook": playbook, "files": [{"name": "mine.txt", "s3_key": key}]}
    )

    assert status == 201, run
    events = http.tail(run["run_id"])
    [result] = [e for e in events if e["kind"] == "tool_result"]
    assert result["data"]["output"]["stdout"]["text"] == "acme's own\n"
    assert http("GET", f"/runs/{run['run_id']}")[2]["status"] == "SUCCEEDED"
    assert runtime.permissions is not None and runtime.permissions.denied == []
    assert (
        runtime.permissions.checked[
            ("sandcastle-local-ApiFunction as sandcastle-local-TenantFilesRole/tenant-acme", "s3.CopyObject")
        ]
        == 1
    )


def test_upload_links_write_only_their_key_and_size(http: Http) -> None:  # noqa: F811
    status, _, ticket = http("POST", "/uploads", {"name": "a.txt", "size": 3})
    assert status == 201
    assert _put(ticket["url"], b"toolong", ticket["headers"] | {"Content-Length": "7"}) == 400
    moved = ticket["url"].replace("/uploads/acme/", "/uploads/beta/")
    assert _put(moved, b"abc", ticket["headers"]) == 403
    split = urlsplit(ticket["url"])
    assert _put(f"{split.scheme}://{split.netloc}{split.path}", b"abc", ticket["headers"]) == 403  # unsigned
    assert http("POST", "/uploads", {"name": "../x", "size": 3})[2]["field"] == "name"


def test_local_artifact_links_are_signed_expiring_and_for_their_run(http: Http) -> None:  # noqa: F811
    playbook = [{"tool": "write_file", "arguments": {"path": "output/a.txt", "content": "A\n"}}]
    runs = [http("POST", "/runs", {"instructions": "Write.", "playbook": playbook})[2]["run_id"] for _ in range(2)]
    for run_id in runs:
        http.tail(run_id)
    first, second = (http("GET", f"/runs/{r}/artifacts")[2]["artifacts"][0]["url"] for r in runs)
    assert _get(first)[0] == 200

    split = urlsplit(first)
    base = f"{split.scheme}://{split.netloc}{split.path}"
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    assert _get(base)[0] == 403  # unsigned
    assert _get(f"{base}?{urlencode({**query, 'expires': int(query['expires']) + 10})}")[0] == 403  # forged life
    assert _get(f"{base}?{urlencode({**query, 'expires': 1, 'signature': query['signature']})}")[0] == 403  # expired
    other = urlsplit(second)
    other_query = {k: v[0] for k, v in parse_qs(other.query).items()}
    assert _get(f"{split.scheme}://{split.netloc}{other.path}?{urlencode(query)}")[0] == 403  # other run's object
    assert _get(f"{base}?{urlencode({**query, 'run': other_query['run']})}")[0] == 403  # other run's scope
    assert _get(f"{split.scheme}://{split.netloc}/local-artifacts/uploads/acme/x?{urlencode(query)}")[0] == 403


def test_the_admin_path_refuses_a_tenant_name_that_is_not_one(gateway: LocalGateway) -> None:  # noqa: F811
    admin = Http(gateway.url, None)
    for tenant in ("..", ".", "a/b"):
        status, _, error = admin("POST", "/local-admin/keys", {"tenant": tenant}, {"X-Sandcastle-Admin": "admin-token"})
        assert status == 422 and error["field"] == "tenant" and "is not 1-64 letters" in error["message"]


def test_in_process_an_upload_goes_to_s3_by_a_presigned_put_and_the_run_reads_it(runtime: LocalRuntime) -> None:
    import json

    import requests

    from sandcastle.local.gateway import proxy_event
    from sandcastle.runs.requests import RunRequest

    data = b"x" * (2 * 1024 * 1024)
    event = proxy_event(
        "POST",
        "/uploads",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"name": NAME, "size": len(data)}),
        authorizer={"tenant": "acme", "key_id": "key_test"},
    )
    answer = runtime.invoke("ApiFunction", event)
    assert answer["statusCode"] == 201, answer
    ticket = json.loads(answer["body"])
    assert ticket["url"].startswith("https://") and "X-Amz-SignedHeaders=content-length%3Bcontent-type" in ticket["url"]
    assert requests.put(ticket["url"], data=data, headers=ticket["headers"], timeout=30).status_code == 200

    command = "wc -c ~/input/*"
    run = runtime.submit(
        RunRequest(
            instructions="Count.",
            tenant="acme",
            files=[{"name": NAME, "s3_key": ticket["key"]}],
            playbook=[{"tool": "run_command", "arguments": {"command": command}}],
        )
    )
    events = list(runtime.follow(run.run_id, timeout_s=120))

    [result] = [e for e in events if e.kind == "tool_result"]
    assert result.data.command().stdout.text == f"{len(data)} /home/user/input/{NAME}\n"


def test_even_a_signed_local_link_reaches_only_its_run_or_its_tenants_prefix(http: Http, runtime: LocalRuntime) -> None:  # noqa: F811
    import os

    from sandcastle.store.downloads import DownloadLinks, LocalUploadLinks

    secret, base = os.environ["LOCAL_LINK_SECRET"], os.environ["LOCAL_ARTIFACTS_BASE_URL"]
    runtime.deps.objects.put("uploads/acme/up-1/secret.txt", b"acme's")

    download = DownloadLinks("unused", local_base_url=base, local_secret=secret)
    assert _get(download.url("uploads/acme/up-1/secret.txt", run_id="run-x"))[0] == 403  # not under runs/run-x/
    upload = LocalUploadLinks(base, secret).put_url(
        "beta", "uploads/acme/up-1/secret.txt", size=3, content_type="text/plain", expires_s=60
    )
    assert _put(upload, b"own", {"Content-Type": "text/plain"}) == 403  # not under uploads/beta/
    assert runtime.deps.objects.get("uploads/acme/up-1/secret.txt") == b"acme's"
