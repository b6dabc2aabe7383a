"""``apply_patch``: a unified diff applied to files of the sandbox, all of it or none of it.

Parsing the diff and applying its hunks is ``unified_diff`` (pure: the patch is data, nothing in
it executes); this module is the tool: it reads the files a patch names, plans every change before
writing any, and writes them all, restoring those already written when one write fails.
"""

from __future__ import annotations

import shlex
from contextlib import suppress
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from sandcastle.errors import ToolInputError
from sandcastle.runs.tool_outputs import PatchedFile, PatchOutput
from sandcastle.sandbox.base import Sandbox
from sandcastle.tools.base import ToolArgs, ToolContext
from sandcastle.tools.files import PATH_ERRORS, home_path, relative_to_home
from sandcastle.tools.unified_diff import (
    DEV_NULL,
    ERROR_PREFIX,
    FilePatch,
    apply_hunks,
    parse_unified_diff,
    target_names,
)

_DELETE_TIMEOUT_S = 30.0


class ApplyPatchArgs(ToolArgs):
    patch: str = Field(
        min_length=1,
        description=(
            "A unified diff (as from `diff -u` or `git diff`) of one or more files: '--- a/path' and "
            "'+++ b/path' headers, then '@@ -start,count +start,count @@' hunks with a few lines of context. "
            "New files come from /dev/null, deleted files go to /dev/null."
        ),
    )


@dataclass
class _Change:
    path: str
    """Absolute path in the sandbox."""
    display: str
    action: Literal["modified", "created", "deleted"]
    hunks: int
    before: bytes | None
    after: bytes | None


class ApplyPatch:
    name: ClassVar[str] = "apply_patch"
    description: ClassVar[str] = (
        "Apply a unified diff to files in your sandbox: edit, create or delete one or more text files at once. "
        "Context lines must match the files exactly; hunks may sit at other line numbers than stated. "
        "All or nothing: if any hunk does not apply, no file changes and the error names the hunk. "
        "Returns each file's path, action (modified, created or deleted) and number of hunks."
    )
    args_model: ClassVar[type[ToolArgs]] = ApplyPatchArgs

    def execute(self, sandbox: Sandbox, args: ApplyPatchArgs, context: ToolContext) -> PatchOutput:
        changes = plan_patch(sandbox, parse_unified_diff(args.patch))
        _write_all(sandbox, changes, timeout_s=max(1.0, min(_DELETE_TIMEOUT_S, context.remaining_run_s)))
        return PatchOutput(files=[PatchedFile(path=c.display, action=c.action, hunks=c.hunks) for c in changes])


def plan_patch(sandbox: Sandbox, files: list[FilePatch]) -> list[_Change]:
    """What every file becomes, computed before anything is written; ``ToolInputError`` when a hunk fails."""
    state: dict[str, bytes | None] = {}
    """The planned content of each path touched so far (None: absent)."""
    changes: list[_Change] = []
    for file in files:
        path = _choose_target(sandbox, file, state)
        display = relative_to_home(path)
        creates, deletes = file.creates, file.deletes
        before = _current(sandbox, path, state)
        if creates and before:
            raise ToolInputError(
                f"{ERROR_PREFIX} {display} already exists; to change it, diff against its current content"
            )
        if not creates and before is None:
            raise ToolInputError(f"{ERROR_PREFIX} {display} does not exist; to create it, diff it against /dev/null")
        after = apply_hunks(before or b"", file.hunks, display, creating=creates)
        if deletes and after:
            raise ToolInputError(
                f"{ERROR_PREFIX} {display} is to be deleted, but lines the patch does not remove remain in it"
            )
        action: Literal["modified", "created", "deleted"] = (
            "deleted" if deletes else "created" if before is None else "modified"
        )
        state[path] = None if deletes else after
        changes.append(_Change(path, display, action, len(file.hunks), before, state[path]))
    return _merge_repeats(changes)


def _choose_target(sandbox: Sandbox, file: FilePatch, state: dict[str, bytes | None]) -> str:
    """The absolute path a file section edits: its new name, or its old one when only that exists."""
    old, new = target_names(file)
    if new == DEV_NULL and old == DEV_NULL:
        raise ToolInputError(f"{ERROR_PREFIX} a file goes from /dev/null to /dev/null; name it in '---' or '+++'")
    path = home_path(old if new == DEV_NULL else new, field=f"{ERROR_PREFIX} file")
    if not file.creates and old not in (DEV_NULL, new) and _current(sandbox, path, state) is None:
        # `diff -u app.py app.py.new`: the file to patch is the old one
        old_path = home_path(old, field=f"{ERROR_PREFIX} file")
        if _current(sandbox, old_path, state) is not None:
            path = old_path
    return path


def _current(sandbox: Sandbox, path: str, state: dict[str, bytes | None]) -> bytes | None:
    if path in state:
        return state[path]
    try:
        state[path] = sandbox.read_file(path)
    except FileNotFoundError:
        state[path] = None
    except PATH_ERRORS as error:
        raise ToolInputError(f"{ERROR_PREFIX} {error}") from error
    if state[path] is not None and b"\0" in state[path]:  # type: ignore[operator]
        raise ToolInputError(f"{ERROR_PREFIX} {relative_to_home(path)} is binary; apply_patch edits text files only")
    return state[path]


def _merge_repeats(changes: list[_Change]) -> list[_Change]:
    """One change per path when a patch edits the same file in several sections."""
    merged: dict[str, _Change] = {}
    for change in changes:
        first = merged.get(change.path)
        if first is None:
            merged[change.path] = change
            continue
        first.hunks += change.hunks
        first.after = change.after
        if change.after is None:
            first.action = "deleted"
        elif first.before is None:
            first.action = "created"
        else:
            first.action = "modified"
    return list(merged.values())


def _write_all(sandbox: Sandbox, changes: list[_Change], *, timeout_s: float) -> None:
    """Write (or delete) every changed file; on a failure, put back the ones already done."""
    done: list[_Change] = []
    for change in changes:
        try:
            _put(sandbox, change.path, change.after, timeout_s)
        except (ValueError, OSError, ToolInputError) as error:
            for written in reversed(done):
                with suppress(ValueError, OSError, ToolInputError):
                    _put(sandbox, written.path, written.before, timeout_s)
            raise ToolInputError(
                f"{ERROR_PREFIX} writing {change.display} failed ({error}); the files already written were restored"
            ) from error
        done.append(change)


def _put(sandbox: Sandbox, path: str, data: bytes | None, timeout_s: float) -> None:
    if data is not None:
        sandbox.write_file(path, data)
        return
    result = sandbox.run(f"rm -f -- {shlex.quote(path)}", timeout_s=timeout_s)
    if result.exit_code != 0:
        stderr = result.stderr.decode("utf-8", errors="replace").strip()
        raise ToolInputError(f"rm exited {result.exit_code}: {stderr[:300]}")
