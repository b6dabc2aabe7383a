"""Runs on a git repository, on the local runtime (the real ASL, handlers, sandbox server and bubblewrap): cloned
outside the sandbox from a loopback remote, edited with apply_patch, tested in the sandbox, handed back as
``changes.patch``/``changes.json`` and pushed to a branch — with the credential of an HTTP remote kept out of the
sandbox, the transcript and the logs."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.artifacts import artifact_key
from sandcastle.runs.records import Run, RunStatus
from sandcastle.runs.repository import deliver
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import EventKind
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.git_servers import authenticated_git_http, free_port, git, git_daemon, make_origin

pytestmark = pytest.mark.bwrap

LOGO = bytes(range(256)) * 4
PROJECT = {
    ".gitignore": b"__pycache__/\n",
    "calc.py": b"def mean(numbers):\n    return sum(numbers) / len(numbers)\n",
    "test_calc.py": (
        b"import unittest\n\nfrom calc import mean\n\n\n"
        b"class MeanTest(unittest.TestCase):\n"
        b"    def test_mean(self):\n"
        b"        self.assertEqual(mean([1, 2, 3]), 2)\n"
    ),
    "old_notes.txt": b"to be removed\n",
    "docs/guide.md": (
        b"# Guide\n\nInstall the package, then import it.\n\n"
        b"## Mean\n\nCall mean(numbers).\n\n## More\n\nSee the tests.\n"
    ),
    "logo.bin": LOGO,
}

FIX = """\
*** Begin Patch
*** Update File: repo/calc.py
@@
 def mean(numbers):
+    if not numbers:
+        return 0.0
     return sum(numbers) / len(numbers)
*** Update File: repo/test_calc.py
@@     def test_mean(self):
         self.assertEqual(mean([1, 2, 3]), 2)
+
+    def test_empty(self):
+        self.assertEqual(mean([]), 0.0)
*** End of File
*** Delete File: repo/old_notes.txt
*** Update File: repo/docs/guide.md
*** Move to: repo/docs/usage.md
@@
-Call mean(numbers).
+Call mean(numbers); an empty list gives 0.0.
*** Add File: repo/CHANGELOG.md
+- mean() of an empty list is 0.0
*** End Patch
"""

PLAYBOOK: list[dict[str, Any]] = [
    {"tool": "run_command", "arguments": {"command": "cd ~/repo && git status --short --branch && cat .git/config"}},
    {"tool": "apply_patch", "arguments": {"patch": FIX}},
    {"tool": "run_command", "arguments": {"command": "printf 'PNG\\000\\001\\002' > ~/repo/logo.bin"}},
    {"tool": "run_command", "arguments": {"command": "cd ~/repo && python3 -m unittest -v 2>&1"}},
    {
        "tool": "run_command",
        "arguments": {"command": "cd ~/repo && git add calc.py && git commit -qm 'Handle empty lists'"},
    },
    {"tool": "run_command", "arguments": {"command": "echo forged > ~/output/changes.patch"}},
]


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRuntime]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    monkeypatch.delenv("SANDBOX_BACKEND", raising=False)
    with LocalRuntime(home=tmp_path / "home", environment={"REPOSITORY_MAX_BYTES": str(2 * 1024 * 1024)}) as local:
        yield local


@pytest.fixture
def remotes(tmp_path: Path) -> Path:
    base = tmp_path / "remotes"
    make_origin(base, PROJECT)
    return base


@pytest.fixture
def daemon(remotes: Path) -> Iterator[str]:
    with git_daemon(remotes) as url:
        yield url


def _run(runtime: LocalRuntime, **fields: Any) -> Run:
    request = {"instructions": "Make mean() of an empty list 0.0.", "playbook": PLAYBOOK, **fields}
    run = runtime.submit(RunRequest.model_validate(request))
    return runtime.wait(run.run_id, timeout_s=180)


def _outputs(runtime: LocalRuntime, run_id: str) -> list[dict[str, Any]]:
    return [
        e.data.model_dump(mode="json", exclude_none=True)["output"]
        for e in runtime.events(run_id)
        if e.kind is EventKind.TOOL_RESULT
    ]


def _artifact(runtime: LocalRuntime, run: Run, name: str) -> bytes:
    return runtime.deps.objects.get(artifact_key(run.run_id, name))


def _expected_tree(root: Path) -> dict[str, bytes]:
    tree = {path: data for path, data in PROJECT.items() if path not in ("old_notes.txt", "docs/guide.md")}
    tree["calc.py"] = (
        b"def mean(numbers):\n    if not numbers:\n        return 0.0\n    return sum(numbers) / len(numbers)\n"
    )
    tree["test_calc.py"] += b"\n    def test_empty(self):\n        self.assertEqual(mean([]), 0.0)\n"
    tree["docs/usage.md"] = PROJECT["docs/guide.md"].replace(b"(numbers).", b"(numbers); an empty list gives 0.0.")
    tree["CHANGELOG.md"] = b"- mean() of an empty list is 0.0\n"
    tree["logo.bin"] = b"PNG\x00\x01\x02"
    return tree


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }


def test_a_run_clones_edits_tests_and_hands_back_a_patch_that_applies_to_the_base(
    runtime: LocalRuntime, daemon: str, remotes: Path, tmp_path: Path
) -> None:
    base = git("rev-parse", "main", cwd=remotes / "origin.git").strip()

    run = _run(runtime, repository={"url": f"{daemon}/origin.git", "ref": "main", "depth": 5})

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.base_commit == base and run.base_branch == "main"
    outputs = _outputs(runtime, run.run_id)
    status, tests, commit = outputs[0], outputs[3], outputs[4]
    assert status["stdout"]["text"].startswith("## main\n")  # a clean working tree on the base branch
    assert "url" not in status["stdout"]["text"] and "127.0.0.1" not in status["stdout"]["text"]
    assert tests["exit_code"] == 0 and "test_empty" in tests["stdout"]["text"], tests
    assert commit["exit_code"] == 0, commit
    # the system prompt says where the repository is and how the change comes back
    system = next(e for e in runtime.events(run.run_id) if e.kind is EventKind.SYSTEM).data.text
    assert f"checked out in ~/repo at branch main (commit {base[:12]})" in system
    assert "handed back as a patch (changes.patch" in system

    patch = _artifact(runtime, run, "changes.patch")
    summary = json.loads(_artifact(runtime, run, "changes.json"))
    check = tmp_path / "check"
    git("clone", "-q", str(remotes / "origin.git"), str(check))
    git("apply", "--check", "-", cwd=check, input=patch)
    git("apply", "-", cwd=check, input=patch)
    assert _files(check) == _expected_tree(check)
    assert {f["path"]: f["status"] for f in summary["files"]} == {
        "CHANGELOG.md": "added",
        "calc.py": "modified",
        "docs/usage.md": "renamed",
        "logo.bin": "modified",
        "old_notes.txt": "deleted",
        "test_calc.py": "modified",
    }
    assert next(f for f in summary["files"] if f["path"] == "logo.bin")["binary"] is True
    assert (summary["files_changed"], summary["insertions"], summary["deletions"]) == (6, 7, 2)
    assert [c["subject"] for c in summary["commits"]] == ["Handle empty lists"]
    assert run.delivery is not None and run.delivery.files_changed == 6 and run.delivery.pushed_branch is None
    # the run's own change, not a file of ~/output that takes its name
    assert [a.name for a in run.artifacts] == ["changes.patch", "changes.json"]


def test_a_run_with_push_leaves_one_commit_on_the_branch_and_never_forces(
    runtime: LocalRuntime, daemon: str, remotes: Path, tmp_path: Path
) -> None:
    origin = remotes / "origin.git"
    base = git("rev-parse", "main", cwd=origin).strip()

    run = _run(
        runtime,
        repository={"url": f"{daemon}/origin.git"},
        push={"branch": "fix/empty-mean", "commit_message": "Make mean([]) 0.0"},
    )

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.delivery is not None and run.delivery.push_error is None, run.delivery
    pushed = git("rev-parse", "refs/heads/fix/empty-mean", cwd=origin).strip()
    assert run.delivery.pushed_branch == "fix/empty-mean" and run.delivery.pushed_sha == pushed
    assert git("log", "--format=%P %s", f"{base}..{pushed}", cwd=origin) == f"{base} Make mean([]) 0.0\n"
    assert git("rev-parse", "main", cwd=origin).strip() == base  # the base branch is untouched
    # a retried FinishRun pushes the same commit again: nothing changes, nothing fails
    again = deliver(runtime.get_run(run.run_id), runtime.deps, push=True)
    assert again is not None and (again.pushed_sha, again.push_error) == (pushed, None)
    check = tmp_path / "check"
    git("clone", "-q", "-b", "fix/empty-mean", str(origin), str(check))
    assert _files(check) == _expected_tree(check)

    # a branch that has moved elsewhere is not overwritten: no force-push
    git("update-ref", "refs/heads/taken", base, cwd=origin)
    seed = tmp_path / "remotes" / "seed"
    git("commit", "-q", "--allow-empty", "-m", "someone else's", cwd=seed)
    git("push", "-q", str(origin), "HEAD:refs/heads/taken", cwd=seed)
    theirs = git("rev-parse", "refs/heads/taken", cwd=origin).strip()
    refused = _run(runtime, repository={"url": f"{daemon}/origin.git"}, push={"branch": "taken"})
    assert refused.status is RunStatus.SUCCEEDED
    assert refused.delivery is not None and refused.delivery.pushed_sha is None
    assert "pushing to 'taken'" in (refused.delivery.push_error or "")
    assert git("rev-parse", "refs/heads/taken", cwd=origin).strip() == theirs

    # the base branch (here the remote's default, the ref being HEAD) is refused at the push too
    onto_base = _run(runtime, repository={"url": f"{daemon}/origin.git"}, push={"branch": "main"})
    assert onto_base.delivery is not None and "'main' is the base branch" in (onto_base.delivery.push_error or "")
    assert git("rev-parse", "main", cwd=origin).strip() == base


def test_a_run_stopped_by_its_budget_hands_back_its_change_but_pushes_nothing(
    runtime: LocalRuntime, daemon: str, remotes: Path, tmp_path: Path
) -> None:
    run = _run(
        runtime,
        repository={"url": f"{daemon}/origin.git"},
        push={"branch": "fix/unfinished"},
        budgets={"max_tool_calls": 2},
    )

    assert run.status is RunStatus.BUDGET_EXCEEDED
    check = tmp_path / "check"
    git("clone", "-q", str(remotes / "origin.git"), str(check))
    git("apply", "-", cwd=check, input=_artifact(runtime, run, "changes.patch"))
    assert (check / "CHANGELOG.md").exists() and not (check / "old_notes.txt").exists()
    assert run.delivery is not None and run.delivery.files_changed == 5 and run.delivery.pushed_sha is None
    assert "fix/unfinished" not in git("branch", "--list", cwd=remotes / "origin.git")


def test_the_credential_of_an_http_remote_stays_out_of_the_sandbox_transcript_and_logs(
    runtime: LocalRuntime, remotes: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = "ghp_" + "s3cr3t" * 6
    runtime.deps_client("secretsmanager").create_secret(Name="sandcastle/git/default/origin", SecretString=secret)
    encoded = base64.b64encode(secret.encode()).decode()
    header = base64.b64encode(f"x-access-token:{secret}".encode()).decode()
    search = (
        f"S=$(echo {encoded} | base64 -d); H={header[:8]}; "
        'for needle in "$S" "$H"; do grep -rlaF -- "$needle" ~ /tmp 2>/dev/null; '
        'env | grep -cF -- "$needle"; cat /proc/[0-9]*/environ 2>/dev/null | grep -caF -- "$needle"; done; true'
    )
    playbook = [*PLAYBOOK, {"tool": "run_command", "arguments": {"command": search}}]

    with authenticated_git_http(remotes, username="x-access-token", password=secret) as url:
        refused = _run(runtime, repository={"url": f"{url}/origin.git"})
        run = _run(
            runtime,
            playbook=playbook,
            repository={"url": f"{url}/origin.git", "credentials_secret": "sandcastle/git/default/origin"},
            push={"branch": "fix/http"},
        )

    assert refused.status is RunStatus.FAILED and refused.error is not None
    assert refused.error.type == "RepositoryUnavailable" and "cannot be read" in refused.error.message
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert (
        run.delivery is not None
        and run.delivery.pushed_sha == git("rev-parse", "refs/heads/fix/http", cwd=remotes / "origin.git").strip()
    )
    assert _outputs(runtime, run.run_id)[-1]["stdout"]["text"] == "0\n0\n0\n0\n"  # no file, no variable
    recorded = json.dumps([e.model_dump(mode="json") for e in runtime.events(run.run_id)])
    recorded += runtime.get_run(run.run_id).model_dump_json()
    recorded += _artifact(runtime, run, "changes.json").decode() + _artifact(runtime, run, "changes.patch").decode()
    logs = "".join(capfd.readouterr())
    for needle in (secret, header):
        assert needle not in recorded and needle not in logs


@pytest.mark.parametrize("ref", ["v1", "commit"])
def test_a_tag_or_a_commit_is_checked_out_detached_from_any_branch(
    runtime: LocalRuntime, daemon: str, remotes: Path, ref: str
) -> None:
    origin = remotes / "origin.git"
    first = git("rev-parse", "main", cwd=origin).strip()
    seed = remotes / "seed"
    git("commit", "-q", "--allow-empty", "-m", "second", cwd=seed)
    git("push", "-q", str(origin), "HEAD:main", cwd=seed)
    playbook = [
        {"tool": "run_command", "arguments": {"command": "cd ~/repo && git log --format=%H%n%s && git status -s"}}
    ]

    run = _run(
        runtime, playbook=playbook, repository={"url": f"{daemon}/origin.git", "ref": first if ref == "commit" else ref}
    )

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert (run.base_commit, run.base_branch) == (first, None)
    assert _outputs(runtime, run.run_id)[0]["stdout"]["text"] == f"{first}\nfirst\n"  # that commit, a clean tree
    assert run.delivery is not None and run.delivery.files_changed == 0
    assert [a.name for a in run.artifacts] == ["changes.json"]  # no change, no patch


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        ({"url": "git://127.0.0.1:{closed}/origin.git"}, "cannot be read"),
        ({"url": "{daemon}/missing.git"}, "cannot be read"),
        ({"url": "{daemon}/origin.git", "ref": "no-such-branch"}, "'no-such-branch' is not a branch, tag or commit"),
        ({"url": "{daemon}/big.git"}, "over the size limit of 2097152 bytes (REPOSITORY_MAX_BYTES)"),
        ({"url": "{daemon}/origin.git", "ref": "abc1234"}, "if it is a commit, give all 40 hex digits"),
    ],
)
def test_an_unreachable_url_an_unknown_ref_or_an_oversized_repository_fails_the_run_clearly(
    runtime: LocalRuntime, daemon: str, remotes: Path, repository: dict[str, str], message: str
) -> None:
    if "big.git" in repository["url"]:
        noise = random.Random(0).randbytes  # incompressible: the fetch itself outgrows the limit
        make_origin(remotes / "big", {f"blob{n}.bin": noise(1024 * 1024) for n in range(3)}, name="../big.git")
    url = repository["url"].format(daemon=daemon, closed=free_port())

    run = _run(runtime, repository={**repository, "url": url})

    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.type == "RepositoryUnavailable"
    assert message in run.error.message, run.error.message
    assert run.usage.tool_calls == 0


def test_a_failed_model_run_still_hands_back_its_change_and_the_model_was_told_where_the_repository_is(
    tmp_path: Path, daemon: str, remotes: Path, fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("MODEL_MAX_RETRIES", "0")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    fake_openai.reply_tool_calls([("apply_patch", {"patch": FIX})])
    fake_openai.reply_error(400, "This model's maximum context length is 8192 tokens.")

    with LocalRuntime(home=tmp_path / "home") as runtime:
        submitted = runtime.submit(
            RunRequest.model_validate(
                {
                    "instructions": "Make mean() of an empty list 0.0.",
                    "repository": {"url": f"{daemon}/origin.git"},
                    "push": {"branch": "fix/failed"},
                }
            )
        )
        run = runtime.wait(submitted.run_id, timeout_s=180)
        patch = _artifact(runtime, run, "changes.patch")

    assert run.status is RunStatus.FAILED and run.error is not None and run.error.type == "ModelRequestRejected"
    assert "is checked out in ~/repo at branch main" in fake_openai.requests[0]["messages"][0]["content"]
    check = tmp_path / "check"
    git("clone", "-q", str(remotes / "origin.git"), str(check))
    git("apply", "-", cwd=check, input=patch)
    assert (check / "CHANGELOG.md").read_bytes() == b"- mean() of an empty list is 0.0\n"
    assert "fix/failed" not in git("branch", "--list", cwd=remotes / "origin.git")


def test_submodules_stay_unfetched_and_are_not_part_of_the_change(
    runtime: LocalRuntime, daemon: str, remotes: Path, tmp_path: Path
) -> None:
    make_origin(remotes / "lib-seed", {"lib.py": b"X = 1\n"}, name="../lib.git")
    seed = remotes / "seed"
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(remotes / "lib.git"), "vendor/lib", cwd=seed)
    git("commit", "-q", "-m", "vendor lib", cwd=seed)
    git("push", "-q", str(remotes / "origin.git"), "HEAD:main", cwd=seed)
    playbook = [
        {"tool": "run_command", "arguments": {"command": "cd ~/repo && ls -A vendor/lib | wc -l && git status -s"}},
        {"tool": "write_file", "arguments": {"path": "repo/NEW.md", "content": "new\n"}},
    ]

    run = _run(runtime, playbook=playbook, repository={"url": f"{daemon}/origin.git"})

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert _outputs(runtime, run.run_id)[0]["stdout"]["text"] == "0\n"  # an empty directory, a clean tree
    summary = json.loads(_artifact(runtime, run, "changes.json"))
    assert [(f["path"], f["status"]) for f in summary["files"]] == [("NEW.md", "added")]
