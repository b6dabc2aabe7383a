"""envd's filesystem: the ``filesystem.Filesystem`` Connect service and the ``/files`` upload/download endpoints.

Every operation goes through ``LocalSandbox``'s workspace walk (one component at a time, symlinks
interpreted inside the sandbox), so no path — ``..``, an absolute symlink, a swapped-in link —
reaches outside the sandbox's ``/home/user``. Paths outside ``/home/user`` are refused: only the
workspace persists between commands here (``/tmp`` is private to each command).

As envd: an entry names where a symlink leads (``symlink_target``); user metadata sent as
``X-Metadata-<key>`` upload headers is kept in the file's ``user.e2b.<key>`` extended attributes
and reported on every entry; uploads may be ``Content-Encoding: gzip``; removing a path that is
not there succeeds; directories can be watched (``watching``).
"""

from __future__ import annotations

import errno
import grp
import json
import os
import posixpath
import pwd
import re
import stat
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any
from urllib.parse import parse_qs

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_pb as pb
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from sandcastle.e2b_server.registry import SandboxRecord
from sandcastle.e2b_server.watching import DirectoryWatcher
from sandcastle.errors import DiskQuotaExceeded, SandboxGone
from sandcastle.sandbox import workspace_files
from sandcastle.sandbox.base import SANDBOX_HOME

_METADATA_HEADER = "x-metadata-"
_METADATA_KEY = re.compile(r"\A[A-Za-z0-9!#$%&'*+\-.^_`|~]+\Z")
_METADATA_VALUE = re.compile(r"\A[\x20-\x7e]*\Z")
_MAX_UNZIPPED_BYTES = 1024 * 1024 * 1024
_WATCH_KEEPALIVE_S = 50.0
_WATCH_POLL_S = 0.5
"""How often a streaming watch looks whether its sandbox still lives (between events)."""


class FilesystemService:
    """``filesystem.Filesystem`` (the sync protocol of ``filesystem_connect``) over the server's sandboxes."""

    def __init__(self, sandbox_for: Callable[[Any], SandboxRecord]) -> None:
        self._sandbox_for = sandbox_for

    def stat(self, request: pb.StatRequest, ctx: Any) -> pb.StatResponse:
        """Information about one path (symlinks followed; ``symlink_target`` says where one led)."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.path):
            path = _absolute(request.path)
            return pb.StatResponse(entry=_entry(record, path, record.sandbox.stat_path(path), followed=True))

    def make_dir(self, request: pb.MakeDirRequest, ctx: Any) -> pb.MakeDirResponse:
        """Create a directory and its parents; ALREADY_EXISTS when it is there."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.path):
            path = _absolute(request.path)
            if not record.sandbox.make_dir(path):
                raise ConnectError(Code.ALREADY_EXISTS, f"directory {path} already exists")
            return pb.MakeDirResponse(entry=_entry(record, path, record.sandbox.stat_path(path), followed=True))

    def move(self, request: pb.MoveRequest, ctx: Any) -> pb.MoveResponse:
        """Rename a path (its metadata goes with it)."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.source):
            source, destination = _absolute(request.source), _absolute(request.destination)
            record.sandbox.move_path(source, destination)
            info = record.sandbox.stat_path(destination)
            return pb.MoveResponse(entry=_entry(record, destination, info, followed=True))

    def list_dir(self, request: pb.ListDirRequest, ctx: Any) -> pb.ListDirResponse:
        """The entries of a directory, ``depth`` levels deep (0 means 1)."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.path):
            path = _absolute(request.path)
            entries = record.sandbox.list_dir(path, depth=request.depth or 1)
            return pb.ListDirResponse(
                entries=[_entry(record, entry_path, info, followed=False) for entry_path, info in entries]
            )

    def remove(self, request: pb.RemoveRequest, ctx: Any) -> pb.RemoveResponse:
        """Remove a file or a directory tree; a path that is not there is already removed (as envd)."""
        record = self._sandbox_for(ctx.request_headers)
        with _rpc_errors(record, request.path), suppress(FileNotFoundError):
            record.sandbox.remove_path(_absolute(request.path))
        return pb.RemoveResponse()

    def watch_dir(self, request: pb.WatchDirRequest, ctx: Any) -> Iterator[pb.WatchDirResponse]:
        """Stream the events of a directory (recursively when asked) until the client leaves or its deadline."""
        record = self._sandbox_for(ctx.request_headers)
        watcher = _new_watcher(record, request.path, request.recursive, request.include_entry)
        timeout_ms = ctx.timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        keepalive_s = _keepalive_interval(ctx.request_headers)
        last_sent = time.monotonic()
        try:
            yield pb.WatchDirResponse(event=Oneof("start", pb.WatchDirResponse.StartEvent()))
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, f"the watch of {watcher.sandbox_path} timed out")
                if record.killed:
                    raise ConnectError(
                        Code.UNAVAILABLE, f"the connection to sandbox {record.sandbox_id} ended before the watch did"
                    )
                wait_s = min(_WATCH_POLL_S, deadline - now) if deadline is not None else _WATCH_POLL_S
                events = watcher.read(timeout_s=max(wait_s, 0.01))
                for event in events:
                    yield pb.WatchDirResponse(event=Oneof("filesystem", event))
                if events:
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= keepalive_s:
                    yield pb.WatchDirResponse(event=Oneof("keepalive", pb.WatchDirResponse.KeepAlive()))
                    last_sent = time.monotonic()
        finally:
            watcher.close()

    def create_watcher(self, request: pb.CreateWatcherRequest, ctx: Any) -> pb.CreateWatcherResponse:
        """Start a watch whose events ``get_watcher_events`` collects."""
        record = self._sandbox_for(ctx.request_headers)
        watcher = _new_watcher(record, request.path, request.recursive, request.include_entry)
        with record.lock:
            record.watchers[watcher.watcher_id] = watcher
        return pb.CreateWatcherResponse(watcher_id=watcher.watcher_id)

    def get_watcher_events(self, request: pb.GetWatcherEventsRequest, ctx: Any) -> pb.GetWatcherEventsResponse:
        """The events since the last call (or since the watch began)."""
        record = self._sandbox_for(ctx.request_headers)
        return pb.GetWatcherEventsResponse(events=_watcher(record, request.watcher_id).read())

    def remove_watcher(self, request: pb.RemoveWatcherRequest, ctx: Any) -> pb.RemoveWatcherResponse:
        """Stop a watch."""
        record = self._sandbox_for(ctx.request_headers)
        watcher = _watcher(record, request.watcher_id)
        with record.lock:
            record.watchers.pop(watcher.watcher_id, None)
        watcher.close()
        return pb.RemoveWatcherResponse()


def _new_watcher(record: SandboxRecord, path: str, recursive: bool, include_entry: bool) -> DirectoryWatcher:
    """A watch of a workspace directory: NOT_FOUND when missing, INVALID_ARGUMENT when not a directory."""
    with _rpc_errors(record, path):
        base = _absolute(path)
        record.sandbox.ensure_alive()
        workspace = record.sandbox.workspace

        def open_directory(relative: str) -> int:
            return workspace_files.open_directory(workspace, posixpath.join(base, relative) if relative else base)

        def entry_for(sandbox_path: str) -> pb.EntryInfo | None:
            try:
                return _entry(record, sandbox_path, record.sandbox.stat_path(sandbox_path), followed=True)
            except (OSError, ValueError, SandboxGone):
                return None

        return DirectoryWatcher(
            base, open_directory, recursive=recursive, entry_for=entry_for if include_entry else None
        )


def _watcher(record: SandboxRecord, watcher_id: str) -> DirectoryWatcher:
    with record.lock:
        watcher = record.watchers.get(watcher_id)
    if watcher is None:
        raise ConnectError(Code.NOT_FOUND, f"watcher {watcher_id!r} was not found (removed, or never created)")
    return watcher


def _keepalive_interval(headers: Any) -> float:
    try:
        return max(1.0, float(headers.get("keepalive-ping-interval") or _WATCH_KEEPALIVE_S))
    except ValueError:
        return _WATCH_KEEPALIVE_S


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


def upload(record: SandboxRecord, query: str, headers: dict[str, str], body: bytes) -> HttpAnswer:
    """``POST /files``: a multipart form (one part per file) or a raw octet-stream body with ``?path=``.

    ``headers`` are the request's, lowercased: ``content-type``, ``content-encoding`` (``gzip``
    bodies are unpacked) and ``x-metadata-<key>`` (the metadata every written file then carries,
    replacing what it had). Parents are created; answers the list of written files as envd does
    (``name``, ``type``, ``path``, ``metadata``).
    """
    content_type = headers.get("content-type", "")
    try:
        metadata = _upload_metadata(headers)
        body = _decoded_body(headers.get("content-encoding", ""), body)
    except ValueError as error:
        return _json_error(400, str(error))
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
            workspace_files.write_metadata(record.sandbox.workspace, absolute, metadata)
        except (OSError, ValueError, SandboxGone) as error:
            return _http_error(record, path, error)
        entry: dict[str, Any] = {"name": posixpath.basename(absolute), "type": "file", "path": absolute}
        if metadata:
            entry["metadata"] = {key.lower(): value for key, value in metadata.items()}
        written.append(entry)
    return 200, {"Content-Type": "application/json"}, json.dumps(written).encode()


def _upload_metadata(headers: dict[str, str]) -> dict[str, str]:
    """The ``X-Metadata-<key>`` headers as ``{key: value}``; ``ValueError`` naming a bad key or value."""
    metadata = {}
    for name, value in headers.items():
        if not name.startswith(_METADATA_HEADER):
            continue
        key = name[len(_METADATA_HEADER) :]
        if not _METADATA_KEY.match(key):
            raise ValueError(f"metadata key {key!r} (header {name}) must be letters, digits or !#$%&'*+-.^_`|~")
        if not _METADATA_VALUE.match(value):
            raise ValueError(f"metadata value of {key!r} must be printable US-ASCII")
        metadata[key] = value
    return metadata


def _decoded_body(encoding: str, body: bytes) -> bytes:
    """The body with its ``Content-Encoding`` (identity or gzip) undone, at most 1 GiB unpacked."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise ValueError(f"Content-Encoding {encoding!r} is not supported; send gzip or nothing")
    unpacker = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = unpacker.decompress(body, _MAX_UNZIPPED_BYTES)
    except zlib.error as error:
        raise ValueError(f"the gzip body is corrupt: {error}") from None
    if unpacker.unconsumed_tail:
        raise ValueError(f"the gzip body unpacks to more than {_MAX_UNZIPPED_BYTES} bytes")
    if not unpacker.eof:
        raise ValueError("the gzip body is truncated")
    return data


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


def _entry(record: SandboxRecord, path: str, info: os.stat_result, *, followed: bool) -> pb.EntryInfo:
    """The entry of ``path`` from its stat (``followed``: symlinks were followed) or lstat.

    A path that is (or, followed, was) a symlink names its target in ``symlink_target``; the
    file's metadata comes from its ``user.e2b.*`` attributes.
    """
    workspace = record.sandbox.workspace
    is_symlink = stat.S_ISLNK(info.st_mode)
    if stat.S_ISDIR(info.st_mode):
        file_type = pb.FileType.DIRECTORY
    elif is_symlink:
        file_type = pb.FileType.SYMLINK
    else:
        file_type = pb.FileType.FILE
    symlink_target = None
    if followed or is_symlink:
        try:
            symlink_target = workspace_files.resolved_path(workspace, path)
        except (OSError, ValueError):
            symlink_target = _raw_link(workspace, path) if is_symlink else None
    metadata: dict[str, str] = {}
    if not is_symlink:
        with suppress(OSError, ValueError):
            metadata = workspace_files.read_metadata(workspace, path)
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
        symlink_target=symlink_target,
        metadata=metadata,
    )


def _raw_link(workspace: Any, path: str) -> str | None:
    """A dangling (or escaping) symlink's own text, read without following anything."""
    parent, name = posixpath.split(path)
    try:
        fd = workspace_files.open_directory(workspace, parent)
    except (OSError, ValueError):
        return None
    try:
        return os.readlink(name, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


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
    if isinstance(error, OSError) and error.errno == errno.ENOTSUP:
        return _json_error(400, f"path {path!r}: this workspace's filesystem cannot keep file metadata (no xattrs)")
    raise error


def _json_error(status: int, message: str) -> HttpAnswer:
    return status, {"Content-Type": "application/json"}, json.dumps({"code": status, "message": message}).encode()
