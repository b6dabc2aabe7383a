"""A run's ``repository`` and ``push``: what is refused before anything is stored, and the saved task's check."""

from __future__ import annotations

import io
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError

from sandcastle.config import Settings
from sandcastle.errors import InvalidRunRequest
from sandcastle.local.permissions import PermissionGuard
from sandcastle.local.runtime import DEFAULT_TEMPLATE
from sandcastle.local.template import ACCOUNT_ID, Template
from sandcastle.runs.records import ResolvedBudgets, Run, RunStatus
from sandcastle.runs.repository import check_repository, repository_prompt
from sandcastle.runs.requests import PushOptions, RepositoryOptions, RunRequest, TaskDefinition
from sandcastle.runs.submit import submit_run
from sandcastle.runs.tasks import put_task
from sandcastle.wiring import Dependencies

CLOUD = Dependencies(Settings(repository_max_depth=100))
LOCAL = Dependencies(Settings(repository_allow_local=True))


def _check(url: str, deps: Dependencies = CLOUD, **fields: object) -> None:
    check_repository(RepositoryOptions.model_validate({"url": url, **fields}), None, "acme", deps)


@pytest.mark.parametrize(
    "url", ["https://github.com/acme/app.git", "ssh://git@github.com/acme/app.git", "git@github.com:acme/app.git"]
)
def test_https_and_ssh_urls_are_taken(url: str) -> None:
    _check(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://me:ghp_token@github.com/acme/app.git", "holds a credential; put it in a secret"),
        ("http://github.com/acme/app.git", "is not an https:// or ssh://"),
        ("git://127.0.0.1/app.git", "is not an https:// or ssh://"),
        ("/srv/git/app.git", "is a local path"),
        ("file:///srv/git/app.git", "is not an https:// or ssh://"),
        ("ext::sh -c touch% /tmp/pwned", "is not a repository URL"),
        ("--upload-pack=touch /tmp/x", "is not a repository URL"),
        ("https:///no-host", "is not an https:// or ssh://"),
    ],
)
def test_other_urls_are_refused_naming_the_field(url: str, message: str) -> None:
    with pytest.raises(InvalidRunRequest) as error:
        _check(url)

    assert error.value.field == "repository.url" and message in str(error.value)


def test_a_credential_in_the_url_is_not_repeated_in_the_error() -> None:
    with pytest.raises(InvalidRunRequest) as error:
        _check("https://me:ghp_0123456789abcdef@github.com/acme/app.git")

    assert "ghp_0123456789abcdef" not in str(error.value)
    assert "'https://me:***@github.com/acme/app.git' holds a credential" in str(error.value)


def test_locally_a_path_and_loopback_git_or_http_are_taken_but_no_other_host() -> None:
    for url in ("/srv/git/app.git", "git://127.0.0.1:9418/app.git", "http://localhost:8080/app.git"):
        _check(url, LOCAL)
    with pytest.raises(InvalidRunRequest, match="or, locally, a path or a git:// or http:// URL on loopback"):
        _check("git://example.com/app.git", LOCAL)


def test_depth_has_a_ceiling() -> None:
    _check("https://h/a.git", depth=100)
    with pytest.raises(InvalidRunRequest, match="at most 100") as error:
        _check("https://h/a.git", depth=101)
    assert error.value.field == "repository.depth"


@pytest.mark.parametrize(
    "secret", ["sandcastle/git/beta/token", "sandcastle/git/acme", "other/acme/x", "sandcastle/git/acme/../beta/t"]
)
def test_a_credential_secret_must_be_the_tenants_own(secret: str) -> None:
    _check("https://h/a.git", credentials_secret="sandcastle/git/acme/github")
    with pytest.raises(InvalidRunRequest, match="is not one of your secrets: name one under sandcastle/git/acme/"):
        _check("https://h/a.git", credentials_secret=secret)


def test_push_needs_a_repository_and_never_targets_the_base_branch() -> None:
    with pytest.raises(InvalidRunRequest, match="push needs a repository") as error:
        check_repository(None, PushOptions(branch="fix"), "acme", CLOUD)
    assert error.value.field == "push"
    repository = RepositoryOptions(url="https://h/a.git", ref="main")
    check_repository(repository, PushOptions(branch="fix/main"), "acme", CLOUD)
    for branch in ("main", "refs/heads/main"):
        with pytest.raises(InvalidRunRequest, match="is the base branch; push the change to a new branch") as error:
            check_repository(repository, PushOptions(branch=branch), "acme", CLOUD)
        assert error.value.field == "push.branch"


@pytest.mark.parametrize("ref", ["-x", "main..evil", "a//b", "topic/", "x.lock", "a b", "$(id)", "@{-1}"])
def test_refs_git_would_misread_are_refused(ref: str) -> None:
    with pytest.raises(ValidationError):
        RepositoryOptions(url="https://h/a.git", ref=ref)
    with pytest.raises(ValidationError):
        PushOptions(branch=ref)


def test_a_bad_repository_is_refused_when_a_run_is_submitted_or_a_task_saved(deps: Dependencies) -> None:
    request = RunRequest.model_validate(
        {
            "instructions": "x",
            "playbook": [{"tool": "run_command", "arguments": {"command": "ls"}}],
            "repository": {"url": "https://me:pw@h/a.git"},
        }
    )
    with pytest.raises(InvalidRunRequest, match="holds a credential"):
        submit_run(request, deps)
    assert deps.store.list_runs_by_tenant("default", limit=10)[0] == []
    definition = TaskDefinition(instructions="x", repository=RepositoryOptions(url="/etc"))
    with pytest.raises(InvalidRunRequest, match="is a local path"):
        put_task("acme", "repo-task", definition, deps)


def test_the_prompt_says_where_the_repository_is_and_where_the_change_goes() -> None:
    run = Run(
        run_id="r",
        tenant="acme",
        source="api",
        status=RunStatus.QUEUED,
        instructions="x",
        model_backend="playbook",
        budgets=ResolvedBudgets(max_steps=1, max_tool_calls=1, timeout_s=60),
        created_at=datetime.now(UTC),
        repository=RepositoryOptions(url="https://h/a.git"),
        push=PushOptions(branch="fix/it"),
        base_commit="0123456789abcdef" * 2 + "01234567",
        base_branch="main",
    )

    assert repository_prompt(run) == (
        "\n\nThe git repository https://h/a.git is checked out in ~/repo at branch main (commit 0123456789ab). "
        "Work there: read it, change it (apply_patch suits edits), and run its tests. When you finish, every change "
        "in ~/repo against that commit — new, deleted, renamed and binary files included — is handed back as a "
        "patch (changes.patch, with changes.json), and pushed as one commit to the branch 'fix/it' if the run "
        "succeeds. You need not commit; you cannot push (no network, no credentials)."
    )
    assert repository_prompt(run.model_copy(update={"repository": None})) == ""


def test_only_prepare_and_finish_may_read_repository_credentials_and_only_under_the_prefix(aws: Template) -> None:
    guard = PermissionGuard.from_template(Template.load(DEFAULT_TEMPLATE, region=aws.region), ACCOUNT_ID)
    client = boto3.client("secretsmanager", region_name=aws.region)
    for name in ("sandcastle/git/acme/github", "sandcastle/model-api-key"):
        client.create_secret(Name=name, SecretString="value")
    guard.start()
    try:
        for function in ("PrepareRunFunction", "FinishRunFunction"):
            with guard.acting_as(function):
                assert client.get_secret_value(SecretId="sandcastle/git/acme/github")["SecretString"] == "value"
                with pytest.raises(ClientError) as elsewhere:
                    client.get_secret_value(SecretId="sandcastle/model-api-key")
            assert elsewhere.value.response["Error"]["Code"] == "AccessDeniedException"
        with guard.acting_as("RunToolFunction"), pytest.raises(ClientError) as tool_runner:
            client.get_secret_value(SecretId="sandcastle/git/acme/github")
        assert tool_runner.value.response["Error"]["Code"] == "AccessDeniedException"
    finally:
        guard.stop()


def test_a_saved_tasks_repository_and_push_go_into_its_runs(deps: Dependencies) -> None:
    from sandcastle.runs.tasks import run_request

    definition = TaskDefinition(
        instructions="Upgrade the dependencies",
        repository=RepositoryOptions(url="https://h/a.git", ref="main", credentials_secret="sandcastle/git/acme/h"),
        push=PushOptions(branch="deps/weekly"),
    )
    saved = put_task("acme", "deps", definition, deps)

    request = run_request(saved, tenant="acme", source="schedule")

    assert request.repository == definition.repository and request.push == definition.push


def test_the_tree_read_back_is_diffed_outside_and_cannot_write_outside_the_export(
    deps: Dependencies, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandcastle.runs.repository import RepositoryUnavailable, _diff_against_base, bundle_key
    from tests.integration.git_servers import git, make_origin

    origin = make_origin(tmp_path / "remotes", {"a.txt": b"a\n"})
    git("bundle", "create", str(tmp_path / "base.bundle"), "main", cwd=origin)
    run = _repository_run().model_copy(update={"base_commit": git("rev-parse", "main", cwd=origin).strip()})
    deps.objects.put(bundle_key(run.run_id), (tmp_path / "base.bundle").read_bytes())
    monkeypatch.setenv("TMPDIR", str(tmp_path / "exports"))
    (tmp_path / "exports").mkdir()
    tempfile.tempdir = None  # re-read TMPDIR

    def tree(*names: str) -> bytes:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for name in names:
                member = tarfile.TarInfo(name)
                member.size = 2
                tar.addfile(member, io.BytesIO(b"b\n"))
        return archive.getvalue()

    try:
        patch, files = _diff_against_base(run, tree("a.txt"), deps)  # with the cloud's settings: no local transports
        with pytest.raises(RepositoryUnavailable, match="holds a file that cannot be exported"):
            _diff_against_base(run, tree("a.txt", "../../escaped.txt"), deps)
    finally:
        tempfile.tempdir = None

    assert b"-a\n+b\n" in patch and [(f.path, f.status, f.insertions) for f in files] == [("a.txt", "modified", 1)]

    assert not (tmp_path / "escaped.txt").exists() and list(tmp_path.rglob("escaped.txt")) == []


def _repository_run() -> Run:
    return Run(
        run_id="run-repo",
        tenant="acme",
        source="api",
        status=RunStatus.RUNNING,
        instructions="x",
        model_backend="playbook",
        budgets=ResolvedBudgets(max_steps=1, max_tool_calls=1, timeout_s=60),
        created_at=datetime.now(UTC),
        repository=RepositoryOptions(url="https://h/a.git"),
    )


def test_a_working_tree_over_the_changes_limit_gives_no_patch_and_says_why(deps: Dependencies) -> None:
    from sandcastle.runs.repository import ChangeSummary, export_changes
    from sandcastle.sandbox.base import CommandResult, SandboxSpec
    from tests.fakes.sandbox import FakeSandbox

    limited = Dependencies(
        deps.settings.model_copy(update={"repository_max_changes_bytes": 1000}),
        store=deps.store,
        objects=deps.objects,
    )
    sandbox = FakeSandbox(sandbox_id="s", spec=SandboxSpec(run_id="r", tenant="acme", timeout_s=60))
    sandbox.answer = lambda command: CommandResult(
        exit_code=0, stdout=b"5000\n" if "stat -c" in command else b"", stderr=b"", duration_ms=1
    )
    run = _repository_run().model_copy(update={"base_commit": "a" * 40})

    artifacts = export_changes(run, sandbox, limited)

    assert [a.name for a in artifacts] == ["changes.json"]
    summary = ChangeSummary.model_validate_json(limited.objects.get(artifacts[0].s3_key))
    assert summary.error == "~/repo is 5000 bytes, over the limit of 1000 (REPOSITORY_MAX_CHANGES_BYTES); no patch"
    assert sandbox.commands[-1].startswith("rm -f")  # the transfer file is removed either way
