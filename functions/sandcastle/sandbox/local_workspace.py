"""Where a local sandbox's workspace lives on the host: a size-capped filesystem of its own, when root.

When this process is root, each sandbox's workspace is a filesystem mounted at
``<mount_root>/<sandbox id>/`` (the sandbox's *portal*), with ``home/`` in it mounted as
``/home/user`` inside the sandbox:

- with a disk quota, a sparse ext4 image ``<sandbox dir>/workspace.img`` of that size, loop-mounted
  (``nosuid,nodev``): a run that writes more gets ``ENOSPC`` ("disk quota exceeded" for the
  model) instead of filling the host's disk. The image only takes the space actually written.
- without one (quota 0, or no loop device / ``mkfs.ext4`` on this host: logged as a warning), a
  bind mount of the plain directory ``<sandbox dir>/fs``.

The portal also solves a second problem: ``bwrap`` runs as the unprivileged sandbox uid, and
bubblewrap resolves its bind sources as its caller, so every ancestor of the workspace must be
searchable by that uid. ``mount_root`` is (made) ``0711`` and root-owned; ``sandbox_root`` (often
under ``/root`` or a pytest directory) may stay private.

Mounts outlive this process. ``unmount`` (called by ``kill``) lazily detaches the portal; and
``sweep_orphans`` (called at create and by the reaper's listing) unmounts portals whose sandbox
directory is gone, e.g. deleted with ``rm -rf`` instead of killed. Each portal records its sandbox
directory in ``.sandbox-dir`` (outside ``home/``, so invisible to commands) for that purpose.

When this process is not root nothing can be mounted: the workspace is ``<sandbox dir>/home``
and no disk quota applies (``DiskLayout.quota_mb`` is None), as the README's security section says.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from aws_lambda_powertools import Logger

from sandcastle.errors import SandboxError

logger = Logger(child=True)

_IMAGE_NAME = "workspace.img"
_PLAIN_NAME = "fs"
_OWNER_MARKER = ".sandbox-dir"
_HOME_NAME = "home"
_FULL_BELOW_BYTES = 1024 * 1024
_MIB = 1024 * 1024
_TOOL_TIMEOUT_S = 60


@dataclass(frozen=True)
class WorkspaceMounts:
    """Mounts workspaces under ``mount_root`` (root only); ``quota_mb`` 0 means no disk quota."""

    mount_root: Path
    quota_mb: int

    def portal(self, sandbox_id: str) -> Path:
        """Where the sandbox's filesystem is mounted; its workspace is ``home/`` in it."""
        return self.mount_root / sandbox_id

    def mount(self, sandbox_id: str, sandbox_dir: Path, owner: int) -> int | None:
        """Create and mount the sandbox's filesystem, with ``home/`` given to ``owner``.

        Returns the quota in MiB that applies, or None when the filesystem has none (logged).
        """
        self._ensure_mount_root()
        portal = self.portal(sandbox_id)
        portal.mkdir(mode=0o755)
        quota_mb: int | None = None
        if self.quota_mb > 0:
            try:
                _make_image(sandbox_dir / _IMAGE_NAME, self.quota_mb)
                _run_tool("mount", "-o", "loop,nosuid,nodev,noatime", str(sandbox_dir / _IMAGE_NAME), str(portal))
                quota_mb = self.quota_mb
            except SandboxError as error:
                logger.warning(f"local sandbox {sandbox_id}: no disk quota ({error}); its workspace is unbounded")
                (sandbox_dir / _IMAGE_NAME).unlink(missing_ok=True)
        if quota_mb is None:
            plain = sandbox_dir / _PLAIN_NAME
            plain.mkdir(mode=0o755)
            _run_tool("mount", "--bind", str(plain), str(portal))
            _run_tool("mount", "-o", "remount,bind,nosuid,nodev", str(portal))
        (portal / _OWNER_MARKER).write_text(str(sandbox_dir.resolve()))
        home = portal / _HOME_NAME
        home.mkdir(mode=0o700)
        os.chown(home, owner, owner)
        return quota_mb

    def ensure_mounted(self, sandbox_id: str, sandbox_dir: Path) -> None:
        """Mount the sandbox's filesystem again if it is not (the host rebooted since create)."""
        portal = self.portal(sandbox_id)
        if (portal / _HOME_NAME).is_dir():
            return
        self._ensure_mount_root()
        portal.mkdir(mode=0o755, exist_ok=True)
        image = sandbox_dir / _IMAGE_NAME
        if image.exists():
            _run_tool("mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(portal))
        else:
            _run_tool("mount", "--bind", str(sandbox_dir / _PLAIN_NAME), str(portal))
            _run_tool("mount", "-o", "remount,bind,nosuid,nodev", str(portal))

    def unmount(self, sandbox_id: str) -> None:
        """Detach the sandbox's filesystem (lazily: a dying command may still hold it) and remove the portal."""
        portal = self.portal(sandbox_id)
        if not portal.exists():
            return
        with suppress(SandboxError):
            _run_tool("umount", "--lazy", str(portal))
        with suppress(OSError):
            portal.rmdir()

    def sweep_orphans(self) -> list[str]:
        """Unmount every portal whose sandbox directory no longer holds a ``meta.json``; their ids."""
        swept = []
        with suppress(FileNotFoundError):
            for portal in self.mount_root.glob("lsb-*"):
                try:
                    sandbox_dir = Path((portal / _OWNER_MARKER).read_text())
                except OSError:
                    continue  # being created (not mounted yet) or already unmounted
                if not (sandbox_dir / "meta.json").exists():
                    self.unmount(portal.name)
                    swept.append(portal.name)
        return swept

    def _ensure_mount_root(self) -> None:
        self.mount_root.mkdir(mode=0o711, parents=True, exist_ok=True)
        info = os.lstat(self.mount_root)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0:
            raise SandboxError(f"sandbox_mount_root {self.mount_root} must be a directory owned by root")
        if stat.S_IMODE(info.st_mode) & 0o022:
            raise SandboxError(f"sandbox_mount_root {self.mount_root} must not be writable by other users")
        if stat.S_IMODE(info.st_mode) & 0o001 == 0:
            os.chmod(self.mount_root, 0o711)  # the sandbox uid must be able to pass through it


def workspace_is_full(workspace: Path) -> bool:
    """True when the filesystem holding ``workspace`` has (almost) no space or inodes left."""
    try:
        info = os.statvfs(workspace)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < _FULL_BELOW_BYTES or (info.f_files > 0 and info.f_favail == 0)


def quota_exceeded_message(quota_mb: int | None) -> str:
    """What the model reads when the workspace is full."""
    size = f" (its quota is {quota_mb} MB)" if quota_mb else ""
    return f"disk quota exceeded: the workspace /home/user is full{size}; delete files to make room"


def is_out_of_space(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _make_image(image: Path, quota_mb: int) -> None:
    """A sparse ext4 image of ``quota_mb`` MiB: no journal (the workspace dies with the sandbox),
    no reserved blocks, inode tables initialised lazily (so this takes milliseconds)."""
    with open(image, "xb") as file:
        file.truncate(quota_mb * _MIB)
    os.chmod(image, 0o600)
    _run_tool(
        "mkfs.ext4",
        "-q",
        "-F",
        "-m",
        "0",
        "-O",
        "^has_journal",
        "-E",
        "lazy_itable_init=1,nodiscard,root_owner=0:0",
        str(image),
    )


def _run_tool(tool: str, *args: str) -> None:
    """Run a host tool (resolved to its absolute path) as this process; ``SandboxError`` when it fails."""
    path = shutil.which(tool)
    if path is None:
        raise SandboxError(f"{tool} is not installed; apt-get install util-linux e2fsprogs")
    try:
        completed = subprocess.run(
            [path, *args],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            timeout=_TOOL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(f"{tool} {' '.join(args)} took over {_TOOL_TIMEOUT_S} s") from None
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise SandboxError(f"{tool} {' '.join(args)} failed: {detail[-1] if detail else completed.returncode}")
