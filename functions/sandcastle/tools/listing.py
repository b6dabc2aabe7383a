"""``list_files``: the files and directories under a directory of the sandbox, through ``find``.

The listing runs as one shell command, so every sandbox backend supports it. When a tree holds
more than ``MAX_ENTRIES`` entries the shallowest are kept: the model sees the layout first and
can list a subdirectory for the rest.
"""

from __future__ import annotations

import shlex
from typing import ClassVar, Literal

from pydantic import Field

from sandcastle.errors import ToolInputError
from sandcastle.runs.tool_outputs import ListEntry, ListFilesOutput
from sandcastle.sandbox.base import Sandbox
from sandcastle.tools.base import ToolArgs, ToolContext
from sandcastle.tools.files import home_path

MAX_ENTRIES = 1000
MAX_DEPTH = 10
_LISTING_TIMEOUT_S = 60.0
_EXIT_MISSING = 3
_EXIT_NOT_A_DIRECTORY = 4
_TYPES: dict[str, Literal["file", "dir", "link"]] = {"f": "file", "d": "dir", "l": "link"}


class ListFilesArgs(ToolArgs):
    path: str = Field(
        default=".", min_length=1, description="Directory to list, relative to the home directory or absolute under it."
    )
    depth: int = Field(default=2, ge=1, le=MAX_DEPTH, description="How many levels below the directory to list.")


class ListFiles:
    name: ClassVar[str] = "list_files"
    description: ClassVar[str] = (
        "List the files and directories under a directory of your sandbox (default: your home directory), "
        f"sorted, {MAX_ENTRIES} entries at most. Returns entries with path (relative to the directory), "
        "type (file, dir or link) and size in bytes; when entries were left out, truncated and omitted say so."
    )
    args_model: ClassVar[type[ToolArgs]] = ListFilesArgs

    def execute(self, sandbox: Sandbox, args: ListFilesArgs, context: ToolContext) -> ListFilesOutput:
        directory = home_path(args.path)
        timeout = max(1.0, min(_LISTING_TIMEOUT_S, context.remaining_run_s))
        result = sandbox.run(_find_command(directory, args.depth, MAX_ENTRIES), timeout_s=timeout)
        if result.timed_out:
            raise ToolInputError(
                f"path: listing {args.path} took longer than {timeout:.0f} s; list a subdirectory or a lower depth"
            )
        if result.exit_code == _EXIT_MISSING:
            raise ToolInputError(f"path: {args.path} does not exist")
        if result.exit_code == _EXIT_NOT_A_DIRECTORY:
            raise ToolInputError(f"path: {args.path} is a file, not a directory; read it with read_file")
        if result.exit_code != 0:
            stderr = result.stderr.decode("utf-8", errors="replace").strip()
            raise ToolInputError(f"path: listing {args.path} failed (exit {result.exit_code}): {stderr[:500]}")
        total, entries = parse_find_output(result.stdout)
        omitted = total - len(entries)
        return ListFilesOutput(
            path=directory,
            entries=entries,
            truncated=True if omitted > 0 else None,
            omitted=omitted if omitted > 0 else None,
        )


def _find_command(directory: str, depth: int, limit: int) -> str:
    """A shell script printing the shallowest ``limit`` entries, then the count of all of them.

    Each entry is ``depth TAB type TAB size TAB relative-path NUL`` (NUL-terminated, so no file
    name can break the format); the count comes last, also NUL-terminated. One pass and no
    temporary file: the sandbox's /tmp may not be writable. ``-H`` follows the directory itself
    when it is a symlink. Unreadable subdirectories are skipped; a failing ``sort`` fails it all.
    """
    quoted = shlex.quote(directory)
    return (
        f"[ -e {quoted} ] || exit {_EXIT_MISSING}; "
        f"[ -d {quoted} ] || exit {_EXIT_NOT_A_DIRECTORY}; "
        "set -o pipefail 2>/dev/null; "
        f"{{ find -H {quoted} -mindepth 1 -maxdepth {depth} -printf '%d\\t%y\\t%s\\t%P\\0' 2>/dev/null; true; }} "
        f"| LC_ALL=C sort -z -t \"$(printf '\\t')\" -k1,1n -k4 | sed -z -n '1,{limit}p;$='"
    )


def parse_find_output(stdout: bytes) -> tuple[int, list[ListEntry]]:
    """The total entry count and the entries printed by ``_find_command``, sorted in tree order."""
    records = stdout.split(b"\0")
    while records and records[-1] == b"":
        records.pop()
    total = int(records.pop()) if records and records[-1].strip().isdigit() else len(records)
    entries: list[ListEntry] = []
    for record in records:
        fields = record.split(b"\t", 3)
        if len(fields) != 4:
            continue
        _, kind, size, path = fields
        entries.append(
            ListEntry(
                path=path.decode("utf-8", errors="replace"),
                type=_TYPES.get(kind.decode("ascii", errors="replace"), "other"),
                size=int(size),
            )
        )
    entries.sort(key=lambda entry: entry.path.split("/"))
    return max(total, len(entries)), entries
