"""Local templates and snapshots: named trees of files a new sandbox starts from.

A template is prepared once — ``sandcastle templates build NAME --from DIR`` (a directory, or an
image tarball ``.tar``/``.tar.gz``) — into ``<templates root>/<name>/`` (``files/`` and
``template.json`` with its start command), and copied into the workspace (``/home/user``) of every
sandbox created from it. A snapshot (``Sandbox.create_snapshot``) is the same thing made from a
live sandbox's workspace, with a generated id (``snap-<hex>``), listed and deleted through E2B's
snapshot API. ``base`` is the empty template every server has.

The copy never follows a symlink (links are copied as links, read inside the sandbox's own view)
and skips anything but directories, regular files and symlinks (a FIFO or a device in a
workspace is not carried over); tarballs are unpacked with the stdlib's ``data`` filter (no
absolute paths, no ``..``, no devices, no links out of the tree).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tarfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sandcastle.errors import InvalidSandboxRequest, SandboxNotFound

BASE_TEMPLATE = "base"
"""The empty template: a fresh, empty workspace."""
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SNAPSHOT_PREFIX = "snap-"
_MANIFEST = "template.json"


@dataclass(frozen=True)
class TemplateInfo:
    """What ``template.json`` holds about a template or snapshot."""

    template_id: str
    kind: str
    """``template`` or ``snapshot``."""
    created_at: datetime
    start_cmd: str | None = None
    """Started in the background in every new sandbox of this template (E2B's start command)."""
    names: list[str] = field(default_factory=list)
    source_sandbox_id: str | None = None
    """The sandbox a snapshot was taken of."""


class TemplateStore:
    """Templates and snapshots under ``root`` (one directory each). Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def build(self, name: str, source: Path, *, start_cmd: str | None = None) -> TemplateInfo:
        """Prepare template ``name`` from a directory or an image tarball, replacing an older build."""
        if not _NAME.match(name) or name == BASE_TEMPLATE or name.startswith(_SNAPSHOT_PREFIX):
            raise InvalidSandboxRequest(
                f"template name {name!r} must be 1-64 of a-z 0-9 _ - (starting with a letter or digit), "
                f"and not {BASE_TEMPLATE!r} or {_SNAPSHOT_PREFIX}*"
            )
        source = Path(source)
        if not source.exists():
            raise InvalidSandboxRequest(f"--from {source}: no such directory or tarball")
        info = TemplateInfo(template_id=name, kind="template", created_at=datetime.now(UTC), start_cmd=start_cmd)
        partial = self._partial_dir()
        try:
            if source.is_dir():
                copy_tree(source, partial / "files", owner=None)
            elif tarfile.is_tarfile(source):
                (partial / "files").mkdir()
                with tarfile.open(source) as archive:
                    archive.extractall(partial / "files", filter="data")
            else:
                raise InvalidSandboxRequest(f"--from {source}: neither a directory nor a tar archive")
            self._commit(partial, info)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return info

    def snapshot(self, sandbox_id: str, workspace: Path, name: str | None) -> TemplateInfo:
        """A snapshot of a sandbox's workspace files (a new template id ``snap-<hex>``)."""
        if name is not None and not _NAME.match(name):
            raise InvalidSandboxRequest(f"snapshot name {name!r} must be 1-64 of a-z 0-9 _ - (letter or digit first)")
        info = TemplateInfo(
            template_id=f"{_SNAPSHOT_PREFIX}{uuid.uuid4().hex[:20]}",
            kind="snapshot",
            created_at=datetime.now(UTC),
            names=[name] if name else [],
            source_sandbox_id=sandbox_id,
        )
        partial = self._partial_dir()
        try:
            copy_tree(workspace, partial / "files", owner=None)
            self._commit(partial, info)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return info

    def get(self, template_id: str) -> TemplateInfo:
        """A template or snapshot by id (or a snapshot by name); ``SandboxNotFound`` when there is none."""
        if template_id == BASE_TEMPLATE:
            return TemplateInfo(template_id=BASE_TEMPLATE, kind="template", created_at=datetime.fromtimestamp(0, UTC))
        for info in self.list():
            if info.template_id == template_id or (info.kind == "snapshot" and template_id in info.names):
                return info
        raise SandboxNotFound(
            f"template {template_id!r} was not found on this sandbox server; build it with "
            f"`sandcastle templates build {template_id} --from DIR`, or use {BASE_TEMPLATE!r}"
        )

    def list(self, *, kind: str | None = None) -> list[TemplateInfo]:
        """Every template and snapshot (of one ``kind`` when given), newest first."""
        infos = []
        for manifest in self.root.glob(f"*/{_MANIFEST}"):
            try:
                infos.append(_read_manifest(manifest))
            except (OSError, ValueError, KeyError):
                continue
        return sorted(
            (info for info in infos if kind is None or info.kind == kind),
            key=lambda info: (info.created_at, info.template_id),
            reverse=True,
        )

    def delete(self, template_id: str) -> bool:
        """Delete a template or snapshot; False when there was none."""
        if not _is_stored_id(template_id):
            return False
        with self._lock:
            target = self.root / template_id
            if not (target / _MANIFEST).exists():
                return False
            doomed = self.root / f".deleted-{uuid.uuid4().hex}"
            target.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def copy_into(self, template_id: str, workspace: Path, *, owner: int | None) -> TemplateInfo:
        """Fill a new sandbox's workspace with the template's files (owned by ``owner`` when set)."""
        info = self.get(template_id)
        if info.template_id != BASE_TEMPLATE:
            copy_tree(self.root / info.template_id / "files", workspace, owner=owner)
        return info

    def _partial_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.root / f".partial-{uuid.uuid4().hex}"
        partial.mkdir(mode=0o700)
        return partial

    def _commit(self, partial: Path, info: TemplateInfo) -> None:
        """Write the manifest, then swap the finished directory in (a reader never sees half a template)."""
        manifest = {
            "template_id": info.template_id,
            "kind": info.kind,
            "created_at": info.created_at.isoformat(),
            "start_cmd": info.start_cmd,
            "names": info.names,
            "source_sandbox_id": info.source_sandbox_id,
        }
        (partial / _MANIFEST).write_text(json.dumps(manifest, indent=2))
        with self._lock:
            target = self.root / info.template_id
            old = self.root / f".replaced-{uuid.uuid4().hex}"
            if target.exists():
                target.rename(old)
            partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)


def copy_tree(source: Path, destination: Path, *, owner: int | None) -> None:
    """Copy directories, regular files and symlinks (as links) from ``source`` into ``destination``.

    Nothing is followed and nothing else is copied; everything made is given to ``owner``
    (uid = gid) when set. ``destination`` may exist (a fresh workspace does). The source is read
    through directory file descriptors (``os.fwalk``, files opened ``O_NOFOLLOW`` relative to
    them): a sandbox swapping a directory of its live workspace for a symlink while a snapshot is
    taken cannot make the copy read anything outside it.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for directory, subdirectories, files, directory_fd in os.fwalk(source, follow_symlinks=False):
        target_dir = destination / Path(directory).relative_to(source)
        for name in [*subdirectories, *files]:
            try:
                mode = os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            target = target_dir / name
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(name, dir_fd=directory_fd), target)
            elif stat.S_ISDIR(mode):
                target.mkdir(mode=stat.S_IMODE(mode) | 0o700, exist_ok=True)
            elif stat.S_ISREG(mode):
                if not _copy_file(name, directory_fd, target):
                    continue
            else:
                continue
            if owner is not None:
                os.lchown(target, owner, owner)


def _copy_file(name: str, directory_fd: int, target: Path) -> bool:
    """Copy one regular file opened without following links; False when it is not one (any more)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=directory_fd)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as origin:
        info = os.fstat(origin.fileno())
        if not stat.S_ISREG(info.st_mode):
            return False
        with open(target, "xb") as copy:
            shutil.copyfileobj(origin, copy, 1024 * 1024)
        os.chmod(target, stat.S_IMODE(info.st_mode))
    return True


def _is_stored_id(template_id: str) -> bool:
    return bool(_NAME.match(template_id)) and template_id != BASE_TEMPLATE


def _read_manifest(manifest: Path) -> TemplateInfo:
    raw = json.loads(manifest.read_text())
    return TemplateInfo(
        template_id=raw["template_id"],
        kind=raw["kind"],
        created_at=datetime.fromisoformat(raw["created_at"]),
        start_cmd=raw.get("start_cmd"),
        names=list(raw.get("names") or []),
        source_sandbox_id=raw.get("source_sandbox_id"),
    )
