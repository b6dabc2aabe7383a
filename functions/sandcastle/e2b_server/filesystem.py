"""envd's filesystem: the ``filesystem.Filesystem`` Connect service and the ``/files`` upload/download endpoints.

Every operation goes through ``LocalSandbox``'s workspace walk (one component at a time, symlinks
interpreted inside the sandbox), so no path — ``..``, an absolute symlink, a swapped-in link —
reaches outside the sandbox's ``/home/user``. Paths outside ``/home/user`` are refused: only the
workspace persists between commands here (``/tmp`` is private to each command).
"""

from __future__ import annotations

import grp
import json
import os
import posixpath
import pwd
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any
from urllib.parse import parse_qs

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_pb as pb
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from sandcastle.e2b_server.registry import SandboxRecord
from sandcastle.errors import DiskQuotaExceeded, SandboxGone
from sandcastle.sandbox.base import SANDBOX_HOME


class FilesystemService:
    """``filesystem.Filesystem`` (the sync protocol of ``filesystem_connect``) over the server's sandboxes."""

    def __init__(self, sandbox_for: Callable[[Any], SandboxRecord]) -> None:
        self._sandbox_for = sandbox_for

    def stat(self, request: pb.StatRequest, ctx: Any) -> pb.StatResponse:
        """Information about one path (symlinks followed)."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.path):
            path = _absolute(request.path)
            return pb.StatResponse(entry=_entry(path, record.sandbox.stat_path(path)))

    def make_dir(self, request: pb.MakeDirRequest, ctx: Any) -> pb.MakeDirResponse:
        """Create a directory and its parents; ALREADY_EXISTS when it is there."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.path):
            path = _absolute(request.path)
            if not record.sandbox.make_dir(path):
                raise ConnectError(Code.ALREADY_EXISTS, f"directory {path} already exists")
            return pb.MakeDirResponse(entry=_entry(path, record.sandbox.stat_path(path)))

    def move(self, request: pb.MoveRequest, ctx: Any) -> pb.MoveResponse:
        """Rename a path."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.source):
            source, destination = _absolute(request.source), _absolute(request.destination)
            record.sandbox.move_path(source, destination)
            return pb.MoveResponse(entry=_entry(destination, record.sandbox.stat_path(destination)))

    def list_dir(self, request: pb.ListDirRequest, ctx: Any) -> pb.ListDirResponse:
        """The entries of a directory, ``depth`` levels deep (0 means 1)."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.path):
            path = _absolute(request.path)
            entries = record.sandbox.list_dir(path, depth=request.depth or 1)
            return pb.ListDirResponse(entries=[_entry(entry_path, info) for entry_path, info in entries])

    def remove(self, request: pb.RemoveRequest, ctx: Any) -> pb.RemoveResponse:
        """Remove a file or a directory tree."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.path):
            record.sandbox.remove_path(_absolute(request.path))
            return pb.RemoveResponse()

    def watch_dir(self, request: pb.WatchDirRequest, ctx: Any) -> Iterator[pb.WatchDirResponse]:
        raise ConnectError(Code.UNIMPLEMENTED, "watching directories is not supported by this sandbox server")

    def create_watcher(self, request: pb.CreateWatcherRequest, ctx: Any) -> pb.CreateWatcherResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "watching directories is not supported by this sandbox server")

    def get_watcher_events(self, request: pb.GetWatcherEventsRequest, ctx: Any) -> pb.GetWatcherEventsResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "watching directories is not supported by this sandbox server")

    def remove_watcher(self, request: pb.RemoveWatcherRequest, ctx: Any) -> pb.RemoveWatcherResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "watching directories is not supported by this sandbox server")


# --- the /files HTTP endpoints ---

HttpAnswer = tuple[int, dict[str, str], bytes]
"""``(status, headers, body)``."""


def download(record: SandboxRecord, query: str) -> HttpAnswer:
    """``GET /files?path=``: the file's bytes, 404 when missing."""
    path = _query_path(query)
    try:
        data = record.sandbox.read_file(_absolute(path))
    except (OSError, ValueError, SandboxGone) as error:
        return _http_error(record, path, error)
    return 200, {"Content-Type": "application/octet-stream"}, data


def upload(record: SandboxRecord, query: str, content_type: str, body: bytes) -> HttpAnswer:
    """``POST /files``: a multipart form (one part per file) or a raw octet-stream body with ``?path=``.

    Parents are created; answers the list of written files as envd does (``name``, ``type``, ``path``).
    """
    default_path = parse_qs(query).get("path", [None])[0]
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        try:
            parts = list(_multipart_files(content_type, body))
        except ValueError as error:
            return _json_error(400, f"malformed multipart upload: {error}")
        # As envd: one part with ?path= goes to that path; the part's filename is only the fallback
        # (the SDK sends both, and a form filename is a lossy encoding of the path: httpx writes '"' as %22).
        if len(parts) == 1 and default_path:
            files = [(default_path, parts[0][1])]
        else:
            files = [(name or default_path, data) for name, data in parts]
    else:
        files = [(default_path, body)]
    written = []
    for path, data in files:
        if not path:
            return _json_error(400, "no path given for an uploaded file; pass ?path= or a part filename")
        absolute = _absolute(path)
        try:
            record.sandbox.write_file(absolute, data)
        except (OSError, ValueError, SandboxGone) as error:
            return _http_error(record, path, error)
        written.append({"name": posixpath.basename(absolute), "type": "file", "path": absolute})
    return 200, {"Content-Type": "application/json"}, json.dumps(written).encode()


def _query_path(query: str) -> str:
    return parse_qs(query).get("path", [""])[0]


def _multipart_files(content_type: str, body: bytes) -> Iterator[tuple[str | None, bytes]]:
    """``(filename, bytes)`` of each part of a ``multipart/form-data`` body, byte-exact."""
    boundary = None
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ValueError("no boundary in Content-Type")
    delimiter = b"--" + boundary.encode()
    sections = body.split(delimiter)
    if len(sections) < 3:
        raise ValueError("no parts")
    for section in sections[1:-1]:
        head, separator, data = section.partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("a part has no header")
        yield _part_filename(head.decode("utf-8", "replace")), data.removesuffix(b"\r\n")


def _part_filename(head: str) -> str | None:
    """The part's ``filename`` parameter, its quoted string read whole (a ``;`` inside it is part of the name)."""
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() != "content-disposition":
            continue
        header = Message()
        header["Content-Disposition"] = value.strip()
        filename = header.get_param("filename", header="content-disposition")
        if filename is None:
            return None
        return str(collapse_rfc2231_value(filename))
    return None


# --- shared ---


def _absolute(path: str) -> str:
    """A sandbox path as envd reads it: relative paths (and ``~``) are relative to ``/home/user``."""
    if path == "~" or path.startswith("~/"):
        path = SANDBOX_HOME + path[1:]
    return posixpath.normpath(posixpath.join(SANDBOX_HOME, path or "."))


def _entry(path: str, info: os.stat_result) -> pb.EntryInfo:
    is_symlink = stat.S_ISLNK(info.st_mode)
    if stat.S_ISDIR(info.st_mode):
        file_type = pb.FileType.DIRECTORY
    elif is_symlink:
        file_type = pb.FileType.SYMLINK
    else:
        file_type = pb.FileType.FILE
    return pb.EntryInfo(
        name=posixpath.basename(path) or path,
        type=file_type,
        path=path,
        size=info.st_size,
        mode=stat.S_IMODE(info.st_mode),
        permissions=stat.filemode(info.st_mode),
        owner=_user_name(info.st_uid),
        group=_group_name(info.st_gid),
        modified_time=Timestamp(seconds=int(info.st_mtime), nanos=info.st_mtime_ns % 1_000_000_000),
        is_symlink=is_symlink,
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@contextmanager
def _rpc_errors(record: SandboxRecord, path: str) -> Iterator[None]:
    """Workspace errors as the Connect codes the SDK maps (NOT_FOUND → ``FileNotFoundException``, ...)."""
    try:
        yield
    except ConnectError:
        raise
    except FileNotFoundError:
        raise ConnectError(Code.NOT_FOUND, f"path {path!r} does not exist in the sandbox") from None
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as error:
        raise ConnectError(Code.INVALID_ARGUMENT, f"path {path!r}: {error.strerror}") from None
    except ValueError as error:
        raise ConnectError(Code.INVALID_ARGUMENT, str(error)) from None
    except SandboxGone:
        raise ConnectError(Code.UNAVAILABLE, f"The sandbox {record.sandbox_id} was not found") from None


def _http_error(record: SandboxRecord, path: str, error: Exception) -> HttpAnswer:
    """A workspace error as envd's HTTP answer: 404 missing, 400 bad path, 507 workspace full, 502 sandbox gone."""
    if isinstance(error, DiskQuotaExceeded):
        return _json_error(507, str(error))
    if isinstance(error, FileNotFoundError):
        return _json_error(404, f"path {path!r} does not exist in the sandbox")
    if isinstance(error, SandboxGone):
        return _json_error(502, f"The sandbox {record.sandbox_id} was not found")
    if isinstance(error, ValueError):
        return _json_error(400, str(error))
    if isinstance(error, (NotADirectoryError, IsADirectoryError)):
        return _json_error(400, f"path {path!r}: {error.strerror}")
    raise error


def _json_error(status: int, message: str) -> HttpAnswer:
    return status, {"Content-Type": "application/json"}, json.dumps({"code": status, "message": message}).encode()
