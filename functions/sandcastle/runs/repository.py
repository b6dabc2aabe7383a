"""Repositories in, patches and branches out: a run's ``repository`` is cloned outside the sandbox, its change
comes back as ``changes.patch`` and ``changes.json``, and ``push`` sends it to a branch — from outside too.

Everything git does here runs in the function (the ``git`` binary, as a subprocess; a Lambda needs it from a
layer), never in the sandbox, and never on anything the sandbox wrote but plain files:

* **In** (PrepareRun, ``prepare_repository``): ``git ls-remote`` resolves ``ref`` (a clear error for an
  unreachable URL or an unknown ref), ``git fetch --depth`` fetches it into a fresh repository with
  submodules and LFS off, watched against the size limit; the tree is checked out, bundled to
  ``runs/<id>/repository/base.bundle`` (what the export and the push start from) and copied into the sandbox
  as ``~/repo`` — a working tree with a ``.git`` that has no remote, no URL and no credential. The base
  commit and branch are recorded on the run.
* **Out** (every ending, through ``export_artifacts``; ``export_changes``): the working tree (without any
  ``.git``) is read out of the sandbox as a tar through the files API, unpacked with tarfile's ``data``
  filter (no links out, no devices), and diffed against the base in a repository made from the bundle:
  ``git add -A`` then ``git diff --cached --binary -M`` — new, deleted, renamed and binary files included,
  a patch ``git apply`` takes on the base. The sandbox's own ``.git`` is never read by git here: its
  config and hooks are the agent's. The commits the agent made are listed by ``git log`` run *in* the
  sandbox, as data.
* **Push** (FinishRun of a succeeded run; ``deliver``): the stored patch is applied to the base from the
  bundle, committed once (dates from the run, so a retried finish makes the same commit) and pushed to
  ``refs/heads/<branch>`` — never the base branch, never forced.

The credential (``credentials_secret``, read from Secrets Manager) reaches only git's environment, as an
``http.extraHeader`` in ``GIT_CONFIG_*`` variables: not argv, not any ``.git/config``, not the sandbox; the
redactor learns it before anything could record it. Every git runs with no system or global config,
``GIT_ALLOW_PROTOCOL`` limiting transports, no prompts and a timeout.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger
from pydantic import BaseModel, Field

from sandcastle.errors import InvalidRunRequest, RepositoryUnavailable
from sandcastle.runs.records import Artifact, Delivery, Run
from sandcastle.runs.requests import PushOptions, RepositoryOptions
from sandcastle.sandbox.base import Sandbox
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

REPO_DIR = "repo"
"""Where the working tree is, under the sandbox home."""
PATCH_NAME, SUMMARY_NAME = "changes.patch", "changes.json"
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!/)[^\s]+$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
_SECRET_MAX_AGE_S = 300
_AGENT = ("Sandcastle", "agent@sandcastle.local")
_TRANSFER_NAME = ".sandcastle-transfer.tar"
_OWN_FILES = {"GIT_ALLOW_PROTOCOL": "file"}
"""For git reading the function's own temporary files (the bundle, the bare copy): only the file transport."""


# --- the request ---


def check_repository(
    repository: RepositoryOptions | None, push: PushOptions | None, tenant: str, deps: Dependencies
) -> None:
    """``InvalidRunRequest`` naming the field, before a run on a repository is stored."""
    if repository is None:
        if push is not None:
            raise InvalidRunRequest("push needs a repository to push from", field="push")
        return
    settings = deps.settings
    _check_url(repository.url, allow_local=settings.repository_allow_local)
    if repository.depth is not None and repository.depth > settings.repository_max_depth:
        raise InvalidRunRequest(
            f"must be at most {settings.repository_max_depth} (the configured ceiling)", field="repository.depth"
        )
    if repository.credentials_secret is not None:
        prefix = f"{settings.repository_secret_prefix}{tenant}/"
        if not repository.credentials_secret.startswith(prefix) or ".." in repository.credentials_secret:
            raise InvalidRunRequest(
                f"{repository.credentials_secret!r} is not one of your secrets: name one under {prefix}",
                field="repository.credentials_secret",
            )
    if push is not None:
        refuse_base_branch(push.branch, repository.ref, field="push.branch")


def refuse_base_branch(branch: str, base: str | None, *, field: str) -> None:
    """The one rule of where a run may push: never to the branch it started from."""
    if base is not None and branch.removeprefix("refs/heads/") == base.removeprefix("refs/heads/"):
        raise InvalidRunRequest(f"{branch!r} is the base branch; push the change to a new branch instead", field=field)


def _check_url(url: str, *, allow_local: bool) -> None:
    def refuse(why: str) -> InvalidRunRequest:
        return InvalidRunRequest(f"{url!r} {why}", field="repository.url")

    if url.startswith("-") or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise refuse("is not a repository URL")
    if _SCP_LIKE.match(url):
        return
    if url.startswith("/"):
        if allow_local:
            return
        raise refuse("is a local path; give an https:// or ssh:// URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.password:
        masked = url.replace(f":{parts.password}@", ":***@", 1)
        raise InvalidRunRequest(
            f"{masked!r} holds a credential; put it in a secret and name it in repository.credentials_secret",
            field="repository.url",
        )
    if scheme in ("https", "ssh") and parts.hostname:
        return
    if allow_local and scheme in ("git", "http") and parts.hostname in _LOOPBACK:
        return
    local = " (or, locally, a path or a git:// or http:// URL on loopback)" if allow_local else ""
    raise refuse(f"is not an https:// or ssh:// (or git@host:path) URL{local}")


# --- git, outside the sandbox ---


@dataclass
class _Git:
    """``git`` with an environment of our own making: no system or global config, no prompts, limited
    transports, the credential (if any) as an extra HTTP header for this process only."""

    settings_timeout_s: int
    allow_local: bool
    home: Path
    header: str | None = None

    def env(self) -> dict[str, str]:
        protocols = "https:ssh" + (":file:git:http" if self.allow_local else "")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "true",
            "SSH_ASKPASS": "true",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
            "GIT_ALLOW_PROTOCOL": protocols,
            "GIT_LFS_SKIP_SMUDGE": "1",
            "GIT_AUTHOR_NAME": _AGENT[0],
            "GIT_AUTHOR_EMAIL": _AGENT[1],
            "GIT_COMMITTER_NAME": _AGENT[0],
            "GIT_COMMITTER_EMAIL": _AGENT[1],
        }
        settings = [
            ("core.hooksPath", os.devnull),
            ("submodule.recurse", "false"),
            ("protocol.version", "2"),
            ("http.followRedirects", "false"),  # the credential header goes to the URL's host, no other
        ]
        if self.header:
            settings.append(("http.extraHeader", self.header))
        env["GIT_CONFIG_COUNT"] = str(len(settings))
        for index, (key, value) in enumerate(settings):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        stdin: bytes | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        binary = shutil.which("git")
        if binary is None:
            raise RepositoryUnavailable(
                "git is not installed where this function runs; a Lambda needs it from a layer "
                "(see docs/architecture.md)"
            )
        result = subprocess.run(  # fixed argv, no shell
            [binary, *args],
            cwd=cwd,
            env={**self.env(), **(extra_env or {})},
            input=stdin,
            capture_output=True,
            timeout=self.settings_timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise _GitFailed(args[0], result.stderr.decode("utf-8", "replace"))
        return result


class _GitFailed(Exception):
    def __init__(self, command: str, stderr: str) -> None:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        self.detail = "; ".join(lines[-3:]) or "no message"
        super().__init__(f"git {command} failed: {self.detail}")


def _credential_header(run: Run, deps: Dependencies) -> str | None:
    """``Authorization: Basic …`` from the run's secret (a token, or ``{"username", "password"|"token"}``)."""
    repository = run.repository
    if repository is None or repository.credentials_secret is None:
        return None
    from sandcastle.redaction import read_secret

    try:
        text = read_secret(repository.credentials_secret, deps.redactor, max_age=_SECRET_MAX_AGE_S)
    except Exception as error:
        raise RepositoryUnavailable(
            f"could not read repository.credentials_secret {repository.credentials_secret!r}: "
            f"{type(error).__name__}; check that it exists and the function may read it"
        ) from None
    if not text or not text.strip():
        raise RepositoryUnavailable(f"secret {repository.credentials_secret!r} is empty")
    username, password = "x-access-token", text.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        username = str(parsed.get("username") or username)
        password = str(parsed.get("password") or parsed.get("token") or "")
        deps.redactor.add(password)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    deps.redactor.add(token)
    return f"Authorization: Basic {token}"


def _git(run: Run, deps: Dependencies, home: Path, *, credential: bool) -> _Git:
    settings = deps.settings
    return _Git(
        settings_timeout_s=settings.git_timeout_s,
        allow_local=settings.repository_allow_local,
        home=home,
        header=_credential_header(run, deps) if credential else None,
    )


def bundle_key(run_id: str) -> str:
    return f"runs/{run_id}/repository/base.bundle"


# --- in: PrepareRun ---


def prepare_repository(run: Run, sandbox: Sandbox, deps: Dependencies) -> Run:
    """Clone the run's repository outside the sandbox, copy it to ``~/repo`` at its ref, record the base commit.

    ``RepositoryUnavailable`` (the run fails with it) for an unreachable URL, an unknown ref, a repository
    over the size limit. Returns the run with ``base_commit`` and ``base_branch`` set.
    """
    repository = run.repository
    if repository is None:
        return run
    settings = deps.settings
    with tempfile.TemporaryDirectory(prefix="sandcastle-clone-") as temp:
        root = Path(temp)
        git = _git(run, deps, root, credential=True)
        work = root / "work"
        try:
            base_branch, wanted = _resolve_ref(git, repository, deps)
            git.run("init", "-q", str(work))
            depth = repository.depth or settings.repository_default_depth
            _fetch_watched(git, work, repository.url, wanted, depth, settings.repository_max_bytes, deps)
            base_commit = git.run("rev-parse", "FETCH_HEAD^{commit}", cwd=work).stdout.decode().strip()
            branch = base_branch or "sandcastle-base"
            git.run("checkout", "-q", "-B", branch, base_commit, cwd=work)
            git.run("config", "user.name", _AGENT[0], cwd=work)
            git.run("config", "user.email", _AGENT[1], cwd=work)
            (work / ".git" / "FETCH_HEAD").unlink(missing_ok=True)
            tree_bytes = _tree_size(work)
            if tree_bytes > settings.repository_max_bytes:
                raise RepositoryUnavailable(
                    _too_large(repository, tree_bytes, settings.repository_max_bytes, "checked out")
                )
            git.run("bundle", "create", "-q", str(root / "base.bundle"), branch, cwd=work)
        except _GitFailed as error:
            raise RepositoryUnavailable(deps.redactor.text(f"cloning {repository.url}: {error}")) from None
        except subprocess.TimeoutExpired:
            raise RepositoryUnavailable(
                f"cloning {repository.url} took over {settings.git_timeout_s} s (GIT_TIMEOUT_S); "
                "ask for a smaller depth"
            ) from None
        deps.objects.put(bundle_key(run.run_id), (root / "base.bundle").read_bytes())
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(work, arcname=".")
        _unpack_in_sandbox(sandbox, archive.getvalue())
    deps.store.update_run(run.run_id, RunUpdate(set={"base_commit": base_commit, "base_branch": base_branch}))
    logger.info("repository checked out", extra={"base_commit": base_commit, "base_branch": base_branch})
    return run.model_copy(update={"base_commit": base_commit, "base_branch": base_branch})


def _resolve_ref(git: _Git, repository: RepositoryOptions, deps: Dependencies) -> tuple[str | None, str]:
    """The base branch (None for a tag or commit) and what to fetch; a clear error for an unknown ref."""
    try:
        listing = git.run("ls-remote", "--symref", repository.url, "HEAD", "refs/heads/*", "refs/tags/*").stdout
    except _GitFailed as error:
        raise RepositoryUnavailable(
            deps.redactor.text(f"repository.url {repository.url!r} cannot be read: {error.detail}")
        ) from None
    refs: dict[str, str] = {}
    default_branch = None
    for line in listing.decode("utf-8", "replace").splitlines():
        if line.startswith("ref: ") and line.endswith("\tHEAD"):
            default_branch = line[5:].split("\t")[0].removeprefix("refs/heads/")
            continue
        sha, _, name = line.partition("\t")
        refs[name] = sha
    ref = repository.ref
    if ref == "HEAD":
        if default_branch is None:
            raise RepositoryUnavailable(f"{repository.url} has no default branch; give repository.ref")
        return default_branch, f"refs/heads/{default_branch}"
    for candidate, is_branch in (
        (f"refs/heads/{ref}", True),
        (f"refs/tags/{ref}", False),
        (ref, ref.startswith("refs/heads/")),
    ):
        if candidate in refs:
            return (candidate.removeprefix("refs/heads/") if is_branch else None), candidate
    if _SHA.match(ref):
        if len(ref) < 40:
            raise RepositoryUnavailable(
                f"repository.ref {ref!r} is not a branch or tag of {repository.url}; if it is a commit, give all "
                "40 hex digits (a remote is asked for commits by their full id)"
            )
        return None, ref
    branches = sorted(name.removeprefix("refs/heads/") for name in refs if name.startswith("refs/heads/"))
    known = f" (its branches: {', '.join(branches[:10])})" if branches else ""
    raise RepositoryUnavailable(f"repository.ref {ref!r} is not a branch, tag or commit of {repository.url}{known}")


def _fetch_watched(git: _Git, work: Path, url: str, wanted: str, depth: int, limit: int, deps: Dependencies) -> None:
    """``git fetch`` of ``wanted``, killed as soon as the repository on disk outgrows ``limit``."""
    binary = shutil.which("git") or "git"
    argv = [binary, "fetch", "-q", "--no-tags", "--no-recurse-submodules", f"--depth={depth}", url, wanted]
    process = subprocess.Popen(  # fixed argv, no shell
        argv, cwd=work, env=git.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + git.settings_timeout_s
    try:
        while process.poll() is None:
            if _tree_size(work / ".git") > limit:
                process.kill()
                process.wait()
                raise RepositoryUnavailable(
                    f"repository.url {url} is over the size limit of {limit} bytes (REPOSITORY_MAX_BYTES) at depth "
                    f"{depth}; ask for a smaller repository.depth, or raise the limit"
                )
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise subprocess.TimeoutExpired(argv, git.settings_timeout_s)
            time.sleep(0.05)
        stderr = process.stderr.read() if process.stderr else b""
    finally:
        if process.stderr:
            process.stderr.close()
    if process.returncode != 0:
        raise _GitFailed("fetch", stderr.decode("utf-8", "replace"))
    size = _tree_size(work / ".git")
    if size > limit:
        raise RepositoryUnavailable(
            f"repository.url {url} is {size} bytes at depth {depth}, over the limit of {limit} (REPOSITORY_MAX_BYTES); "
            "ask for a smaller repository.depth"
        )


def _too_large(repository: RepositoryOptions, size: int, limit: int, what: str) -> str:
    return (
        f"repository {repository.url} at {repository.ref} is {size} bytes {what}, over the limit of {limit} "
        "(REPOSITORY_MAX_BYTES)"
    )


def _tree_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def _unpack_in_sandbox(sandbox: Sandbox, archive: bytes) -> None:
    sandbox.write_file(_TRANSFER_NAME, archive)
    result = sandbox.run(
        f"mkdir -p ~/{REPO_DIR} && tar -xf ~/{_TRANSFER_NAME} -C ~/{REPO_DIR} --no-same-owner; status=$?; "
        f"rm -f ~/{_TRANSFER_NAME}; exit $status",
        timeout_s=120,
    )
    if result.exit_code != 0:
        raise RepositoryUnavailable(
            f"copying the repository into the sandbox failed: {result.stderr.decode('utf-8', 'replace')[-300:]}"
        )


def repository_prompt(run: Run) -> str:
    """What the system prompt adds for a run on a repository: where it is and how the change is delivered."""
    repository = run.repository
    if repository is None or run.base_commit is None:
        return ""
    at = f"branch {run.base_branch}" if run.base_branch else repository.ref
    delivery = "as a patch (changes.patch, with changes.json)"
    if run.push is not None:
        delivery += f", and pushed as one commit to the branch {run.push.branch!r} if the run succeeds"
    return (
        f"\n\nThe git repository {repository.url} is checked out in ~/{REPO_DIR} at {at} "
        f"(commit {run.base_commit[:12]}). Work there: read it, change it (apply_patch suits edits), and run "
        f"its tests. When you finish, every change in ~/{REPO_DIR} against that commit — new, deleted, renamed "
        f"and binary files included — is handed back {delivery}. You need not commit; you cannot push (no "
        "network, no credentials)."
    )


# --- out: every ending ---


class ChangedFile(BaseModel):
    path: str
    status: str
    """``added``, ``modified``, ``deleted``, ``renamed`` (``old_path`` set), ``copied`` or ``type-changed``."""
    old_path: str | None = None
    insertions: int | None = None
    """None for a binary file."""
    deletions: int | None = None
    binary: bool = False


class AgentCommit(BaseModel):
    sha: str
    subject: str
    author: str


class ChangeSummary(BaseModel):
    """``changes.json``: what the run changed against its base commit."""

    base_commit: str
    base_branch: str | None = None
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    files: list[ChangedFile] = Field(default_factory=list)
    commits: list[AgentCommit] = Field(default_factory=list)
    """Commits the agent made in ``~/repo`` on top of the base (the patch holds their sum and any uncommitted work)."""
    error: str | None = None
    """Why no patch could be made (the working tree too large, unreadable); None when it was."""


_STATUS = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied", "T": "type-changed"}


def export_changes(run: Run, sandbox: Sandbox, deps: Dependencies) -> list[Artifact]:
    """``changes.patch`` and ``changes.json`` of the run's ``~/repo`` against its base; none when it has no repository.

    The patch is left out (and ``changes.json`` says why) when the tree cannot be read back within the limit.
    """
    if run.repository is None or run.base_commit is None:
        return []
    from sandcastle.runs.artifacts import store_artifact

    summary = ChangeSummary(base_commit=run.base_commit, base_branch=run.base_branch)
    patch = b""
    try:
        summary.commits = _agent_commits(sandbox, run.base_commit)
        tree = _read_tree(sandbox, deps.settings.repository_max_changes_bytes)
        patch, files = _diff_against_base(run, tree, deps)
        summary.files = files
        summary.files_changed = len(files)
        summary.insertions = sum(f.insertions or 0 for f in files)
        summary.deletions = sum(f.deletions or 0 for f in files)
        if len(patch) > deps.settings.repository_max_changes_bytes:
            summary.error = (
                f"the patch is {len(patch)} bytes, over the limit of {deps.settings.repository_max_changes_bytes} "
                "(REPOSITORY_MAX_CHANGES_BYTES)"
            )
            patch = b""
    except RepositoryUnavailable as error:
        summary.error = str(error)
    artifacts = []
    if patch:
        artifacts.append(store_artifact(run.run_id, PATCH_NAME, patch, "text/x-diff", deps))
    artifacts.append(
        store_artifact(run.run_id, SUMMARY_NAME, summary.model_dump_json(indent=2).encode(), "application/json", deps)
    )
    return artifacts


def _agent_commits(sandbox: Sandbox, base: str) -> list[AgentCommit]:
    """The commits on ``~/repo``'s HEAD since the base, listed by git *in* the sandbox (its output is data)."""
    result = sandbox.run(
        f"cd ~/{REPO_DIR} && git log --no-color -n 200 --format='%H%x1f%an%x1f%s' {shlex.quote(base)}..HEAD",
        timeout_s=60,
    )
    if result.exit_code != 0:
        return []
    commits = []
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        sha, _, rest = line.partition("\x1f")
        author, _, subject = rest.partition("\x1f")
        if re.fullmatch(r"[0-9a-f]{40,64}", sha):
            commits.append(AgentCommit(sha=sha, author=author[:200], subject=subject[:500]))
    return commits


def _read_tree(sandbox: Sandbox, limit: int) -> bytes:
    """``~/repo``'s files (no ``.git`` anywhere) as a tar, through the files API; over ``limit``: an error."""
    result = sandbox.run(
        f"cd ~/{REPO_DIR} && tar --exclude=.git -cf ~/{_TRANSFER_NAME} . && stat -c %s ~/{_TRANSFER_NAME}",
        timeout_s=120,
    )
    try:
        if result.exit_code != 0:
            raise RepositoryUnavailable(
                f"~/{REPO_DIR} could not be read back: {result.stderr.decode('utf-8', 'replace')[-300:]}"
            )
        size = int(result.stdout.decode().strip().splitlines()[-1])
        if size > limit:
            raise RepositoryUnavailable(
                f"~/{REPO_DIR} is {size} bytes, over the limit of {limit} (REPOSITORY_MAX_CHANGES_BYTES); no patch"
            )
        return sandbox.read_file(_TRANSFER_NAME)
    finally:
        sandbox.run(f"rm -f ~/{_TRANSFER_NAME}", timeout_s=30)


def _base_repository(run: Run, git: _Git, root: Path, deps: Dependencies) -> Path:
    """A bare repository holding the base commit, from the bundle PrepareRun stored."""
    bundle = root / "base.bundle"
    try:
        bundle.write_bytes(deps.objects.get(bundle_key(run.run_id)))
    except FileNotFoundError:
        raise RepositoryUnavailable("the run's base bundle is missing; it was never checked out") from None
    bare = root / "base.git"
    git.run("init", "-q", "--bare", str(bare))
    git.run("fetch", "-q", str(bundle), "+refs/heads/*:refs/heads/*", cwd=bare, extra_env=_OWN_FILES)
    return bare


def _diff_against_base(run: Run, tree: bytes, deps: Dependencies) -> tuple[bytes, list[ChangedFile]]:
    base = run.base_commit or ""
    with tempfile.TemporaryDirectory(prefix="sandcastle-changes-") as temp:
        root = Path(temp)
        git = _git(run, deps, root, credential=False)
        try:
            bare = _base_repository(run, git, root, deps)
            work = root / "tree"
            work.mkdir()
            try:
                with tarfile.open(fileobj=io.BytesIO(tree)) as archive:
                    archive.extractall(work, filter="data")
            except (tarfile.TarError, OSError) as error:
                raise RepositoryUnavailable(f"~/{REPO_DIR} holds a file that cannot be exported: {error}") from None
            on_tree = {"GIT_DIR": str(bare), "GIT_WORK_TREE": str(work), "GIT_INDEX_FILE": str(root / "index")}
            git.run("read-tree", base, extra_env=on_tree)
            git.run("add", "-A", ".", cwd=work, extra_env=on_tree)
            diff = ("diff", "--cached", "-M", "--no-color", "--no-ext-diff", "--no-textconv", base)
            patch = git.run(*diff, "--binary", "--full-index", cwd=work, extra_env=on_tree).stdout
            numstat = git.run(*diff, "--numstat", "-z", cwd=work, extra_env=on_tree).stdout
            status = git.run(*diff, "--name-status", "-z", cwd=work, extra_env=on_tree).stdout
        except _GitFailed as error:
            raise RepositoryUnavailable(f"diffing ~/{REPO_DIR} against {base[:12]}: {error}") from None
    return patch, _changed_files(numstat, status)


def _changed_files(numstat: bytes, name_status: bytes) -> list[ChangedFile]:
    fields = name_status.decode("utf-8", "surrogateescape").split("\0")
    files: list[ChangedFile] = []
    i = 0
    while i < len(fields) and fields[i]:
        code = fields[i]
        kind = _STATUS.get(code[:1], code)
        if code[:1] in "RC":
            files.append(ChangedFile(path=fields[i + 2], old_path=fields[i + 1], status=kind))
            i += 3
        else:
            files.append(ChangedFile(path=fields[i + 1], status=kind))
            i += 2
    counts = numstat.decode("utf-8", "surrogateescape").split("\0")
    by_path: dict[str, tuple[str, str]] = {}
    i = 0
    while i < len(counts) and counts[i]:
        added, removed, path = counts[i].split("\t", 2)
        if path == "":  # a rename: the old and new paths follow
            path = counts[i + 2]
            i += 3
        else:
            i += 1
        by_path[path] = (added, removed)
    for file in files:
        added, removed = by_path.get(file.path, ("0", "0"))
        if added == "-":
            file.binary = True
        else:
            file.insertions, file.deletions = int(added), int(removed)
    return files


# --- push: FinishRun ---


def deliver(run: Run, deps: Dependencies, *, push: bool) -> Delivery | None:
    """The run's delivery: its change's size from ``changes.json``, and, with ``push`` and ``run.push``, the
    change pushed as one commit to the branch asked for. A push that fails is reported, not raised."""
    if run.repository is None or run.base_commit is None:
        return None
    from sandcastle.runs.artifacts import artifact_key

    delivery = Delivery(base_commit=run.base_commit)
    try:
        summary = ChangeSummary.model_validate_json(deps.objects.get(artifact_key(run.run_id, SUMMARY_NAME)))
        delivery.files_changed, delivery.insertions, delivery.deletions = (
            summary.files_changed,
            summary.insertions,
            summary.deletions,
        )
    except FileNotFoundError:
        summary = None
    if not push or run.push is None:
        return delivery
    try:
        if summary is None or summary.error:
            raise RepositoryUnavailable(summary.error if summary else "the run's changes were not exported")
        if not summary.files_changed:
            raise RepositoryUnavailable("the run changed nothing; there is nothing to push")
        refuse_base_branch(run.push.branch, run.base_branch, field="push.branch")
        delivery.pushed_sha = _push(run, run.push, deps)
        delivery.pushed_branch = run.push.branch
    except (RepositoryUnavailable, InvalidRunRequest) as error:
        delivery.push_error = deps.redactor.text(str(error))
        logger.warning("the change was not pushed", extra={"error": delivery.push_error})
    return delivery


def _push(run: Run, push: PushOptions, deps: Dependencies) -> str:
    from sandcastle.runs.artifacts import artifact_key

    assert run.repository is not None and run.base_commit is not None
    patch = deps.objects.get(artifact_key(run.run_id, PATCH_NAME))
    message = push.commit_message or run.instructions.strip().splitlines()[0][:200]
    stamp = (run.started_at or run.created_at).isoformat()
    with tempfile.TemporaryDirectory(prefix="sandcastle-push-") as temp:
        root = Path(temp)
        git = _git(run, deps, root, credential=True)
        try:
            bare = _base_repository(run, git, root, deps)
            work = root / "work"
            git.run("clone", "-q", "--no-checkout", str(bare), str(work), extra_env=_OWN_FILES)
            git.run("checkout", "-q", "--detach", run.base_commit, cwd=work)
            git.run("apply", "--index", "--binary", "-", cwd=work, stdin=patch)
            dated = {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
            git.run("commit", "-q", "--no-verify", "-m", message, cwd=work, extra_env=dated)
            sha = git.run("rev-parse", "HEAD", cwd=work).stdout.decode().strip()
            # no '+' and no --force: a branch that exists must fast-forward to this commit
            git.run("push", "-q", "--no-verify", run.repository.url, f"{sha}:refs/heads/{push.branch}", cwd=work)
        except _GitFailed as error:
            raise RepositoryUnavailable(
                deps.redactor.text(f"pushing to {push.branch!r} of {run.repository.url}: {error.detail}")
            ) from None
        except subprocess.TimeoutExpired:
            raise RepositoryUnavailable(f"pushing took over {deps.settings.git_timeout_s} s (GIT_TIMEOUT_S)") from None
    logger.info("change pushed", extra={"branch": push.branch, "sha": sha})
    return sha
