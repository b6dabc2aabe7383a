"""``write_file`` and ``read_file``: files in the run's sandbox, and the path rule every file tool shares."""

from __future__ import annotations

import posixpath
from typing import ClassVar

from pydantic import Field

from sandcastle.errors import DiskQuotaExceeded, ToolInputError
from sandcastle.runs.tool_outputs import ReadBinaryOutput, ReadTextOutput, WriteFileOutput
from sandcastle.sandbox.base import SANDBOX_HOME, Sandbox
from sandcastle.tools.base import ToolArgs, ToolContext

_PATH_HELP = "File path, relative to the home directory or absolute under it."
_MAX_UTF8_CONTINUATION_BYTES = 3

PATH_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    IsADirectoryError,
    NotADirectoryError,
    DiskQuotaExceeded,
)
"""What a sandbox's file operations raise for a path the model can fix: outside the workspace
(a symlink included), not a regular file (a directory, a FIFO, a device), or the
workspace full. Every file tool reports these as its error, never as a failed run."""


def home_path(path: str, *, field: str = "path") -> str:
    """``path`` as a normalised absolute path under the sandbox home.

    Checked lexically, before anything runs: ``ToolInputError`` when the path leads outside
    the home directory (absolute elsewhere, or ``..`` climbing out of it).
    """
    if "\0" in path:
        raise ToolInputError(f"{field}: must not contain NUL characters")
    absolute = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    if absolute != SANDBOX_HOME and not absolute.startswith(SANDBOX_HOME + "/"):
        raise ToolInputError(f"{field}: {path} is outside the home directory {SANDBOX_HOME}; use a path under it")
    return absolute


def relative_to_home(absolute: str) -> str:
    """A path under the home directory as the model writes it: ``src/app.py``, or ``.`` for home itself."""
    return posixpath.relpath(absolute, SANDBOX_HOME)


class WriteFileArgs(ToolArgs):
    path: str = Field(min_length=1, description=_PATH_HELP)
    content: str = Field(description="The whole text content of the file.")


class ReadFileArgs(ToolArgs):
    path: str = Field(min_length=1, description=_PATH_HELP)
    offset: int = Field(default=0, ge=0, description="Byte offset to start reading at.")
    limit: int | None = Field(default=None, ge=1, description="Bytes to read at most.")


class WriteFile:
    name: ClassVar[str] = "write_file"
    description: ClassVar[str] = (
        "Create or overwrite a text file in your sandbox, creating parent directories. "
        "Returns the path and the bytes written. To change part of a file, use apply_patch."
    )
    args_model: ClassVar[type[ToolArgs]] = WriteFileArgs

    def execute(self, sandbox: Sandbox, args: WriteFileArgs, context: ToolContext) -> WriteFileOutput:
        data = args.content.encode("utf-8")
        try:
            sandbox.write_file(args.path, data)
        except PATH_ERRORS as error:
            raise ToolInputError(str(error)) from error
        return WriteFileOutput(path=args.path, bytes=len(data))


class ReadFile:
    name: ClassVar[str] = "read_file"
    description: ClassVar[str] = (
        "Read a text file from your sandbox. Returns content, the file's size in bytes, and next_offset "
        "when more remains: read large files in pieces with offset and limit (bytes). "
        "A binary file is reported as binary, not dumped."
    )
    args_model: ClassVar[type[ToolArgs]] = ReadFileArgs

    def execute(self, sandbox: Sandbox, args: ReadFileArgs, context: ToolContext) -> ReadTextOutput | ReadBinaryOutput:
        try:
            data = sandbox.read_file(args.path)
        except FileNotFoundError as error:
            raise ToolInputError(f"path: {args.path} does not exist") from error
        except PATH_ERRORS as error:
            raise ToolInputError(str(error)) from error
        size = len(data)
        if args.offset > size:
            raise ToolInputError(f"offset: {args.offset} is past the end of {args.path} ({size} bytes)")
        limit = min(args.limit or context.output_limit_bytes, context.output_limit_bytes)
        start, end = _character_bounds(data, args.offset, min(args.offset + limit, size))
        text = _decode_text(context.redact(data[start:end]))
        if text is None:
            return ReadBinaryOutput(path=args.path, bytes=size, binary=True)
        more = end < size
        return ReadTextOutput(
            path=args.path,
            bytes=size,
            offset=start,
            content=text,
            truncated=True if more else None,
            next_offset=end if more else None,
        )


def _character_bounds(data: bytes, start: int, end: int) -> tuple[int, int]:
    """Move a byte range's ends off the middle of UTF-8 characters: a cut character is not binary.

    The start skips the tail of a character it lands in; the end stops before a character it
    would cut, so ``next_offset`` starts cleanly (or takes the whole character when the range is
    smaller than one). Invalid bytes elsewhere still make the chunk binary.
    """
    if start > 0:
        skipped = 0
        while start < end and skipped < _MAX_UTF8_CONTINUATION_BYTES and _is_continuation(data[start]):
            start += 1
            skipped += 1
    if end < len(data) and _is_continuation(data[end]):
        lead = end - 1
        while lead > start and end - lead <= _MAX_UTF8_CONTINUATION_BYTES and _is_continuation(data[lead]):
            lead -= 1
        if lead > start and data[lead] >= 0xC0:
            end = lead
        else:  # the range holds less than one character: take all of it instead
            grown = 0
            while end < len(data) and grown < _MAX_UTF8_CONTINUATION_BYTES and _is_continuation(data[end]):
                end += 1
                grown += 1
    return start, end


def _is_continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


def _decode_text(chunk: bytes) -> str | None:
    """The chunk as text, or None when it is binary: it holds NUL bytes or is not UTF-8."""
    if b"\0" in chunk:
        return None
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        return None
