"""``apply_patch``: a patch applied to files of the sandbox, all of it or none of it.

Two formats, told apart by the patch's text: the ``*** Begin Patch`` format OpenAI's models are
trained on (``v4a_diff``) and unified diffs (``unified_diff``); both parse and apply hunks purely
(the patch is data, nothing in it executes). This module is the tool: it reads the files a patch
names, plans every change of every file before writing any, and writes them all, restoring those
already written when one write fails.
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
from sandcastle.tools.v4a_diff import V4AFile, apply_v4a_hunks, is_v4a, parse_v4a

_DELETE_TIMEOUT_S = 30.0


class ApplyPatchArgs(ToolArgs):
    patch: str = Field(
        min_length=1,
        description=(
            "The patch, in either of two formats. (1) The apply_patch format: '*** Begin Patch', then per file "
            "'*** Add File: path' (every line of the new file prefixed '+'), '*** Delete File: path', or "
            "'*** Update File: path' (optionally followed by '*** Move to: new/path') with hunks: an '@@' line "
            "(optionally '@@ text of a line above the change', e.g. a def or class line, to place it), then about "
            "3 lines of context prefixed ' ', removed lines '-', added lines '+'; '*** End of File' after a hunk "
            "that ends at the end of the file; finally '*** End Patch'. (2) A unified diff (as from `diff -u` or "
            "`git diff`): '--- a/path' and '+++ b/path' headers, then '@@ -start,count +start,count @@' hunks; "
            "new files come from /dev/null, deleted files go to /dev/null. Paths are relative to the home directory."
        ),
    )


@dataclass
class _Change:
    path: str
    """Absolute path in the sandbox."""
    display: str
    action: Literal["modified", "created", "deleted", "moved"]
    hunks: int
    before: bytes | None
    after: bytes | None
    moved_from: str | None = None
    reported: bool = True
    """False for the old path of a move: the output names the move once, at its new path."""


class ApplyPatch:
    name: ClassVar[str] = "apply_patch"
    description: ClassVar[str] = (
        "Apply a patch to files in your sandbox: edit, create, delete or move one or more text files at once. "
        "Takes the '*** Begin Patch' / '*** Update File:' / '*** Add File:' / '*** Delete File:' / "
        "'*** Move to:' / '@@' format, or a unified diff. Hunks are placed by their context lines (which "
        "should match the file; whitespace differences are tolerated in the '*** Begin Patch' format). "
        "All or nothing: if any hunk of any file does not apply, no file changes and the error names the "
        "file, the hunk and the context not found. Returns each file's path, action (modified, created, "
        "deleted or moved) and number of hunks."
    )
    args_model: ClassVar[type[ToolArgs]] = ApplyPatchArgs

    def execute(self, sandbox: Sandbox, args: ApplyPatchArgs, context: ToolContext) -> PatchOutput:
        if is_v4a(args.patch):
            changes = plan_v4a_patch(sandbox, parse_v4a(args.patch))
        else:
            changes = plan_patch(sandbox, parse_unified_diff(args.patch))
        _write_all(sandbox, changes, timeout_s=max(1.0, min(_DELETE_TIMEOUT_S, context.remaining_run_s)))
        return PatchOutput(
            files=[
                PatchedFile(path=c.display, action=c.action, hunks=c.hunks, moved_from=c.moved_from)
                for c in changes
                if c.reported
            ]
        )


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


def plan_v4a_patch(sandbox: Sandbox, files: list[V4AFile]) -> list[_Change]:
    """What every file of a ``*** Begin Patch`` patch becomes, before anything is written; ``ToolInputError``
    (naming the file and the hunk) when a section does not apply."""
    state: dict[str, bytes | None] = {}
    changes: list[_Change] = []
    for file in files:
        path = home_path(file.path, field=f"{ERROR_PREFIX} file")
        display = relative_to_home(path)
        before = _current(sandbox, path, state)
        if file.action == "add":
            if before is not None:
                raise ToolInputError(
                    f"{ERROR_PREFIX} *** Add File: {display} already exists; change it with '*** Update File:'"
                )
            state[path] = file.content.encode("utf-8", "surrogateescape")
            changes.append(_Change(path, display, "created", 1, None, state[path]))
            continue
        if before is None:
            section = "*** Delete File" if file.action == "delete" else "*** Update File"
            raise ToolInputError(f"{ERROR_PREFIX} {section}: {display} does not exist")
        if file.action == "delete":
            state[path] = None
            changes.append(_Change(path, display, "deleted", 0, before, None))
            continue
        after = apply_v4a_hunks(before, file.hunks, display)
        target = home_path(file.move_to, field=f"{ERROR_PREFIX} *** Move to") if file.move_to else path
        if target == path:
            state[path] = after
            changes.append(_Change(path, display, "modified", len(file.hunks), before, after))
            continue
        target_display = relative_to_home(target)
        if _current(sandbox, target, state) is not None:
            raise ToolInputError(
                f"{ERROR_PREFIX} *** Update File: {display}: *** Move to: {target_display} already exists; "
                "delete it first or move elsewhere"
            )
        state[path], state[target] = None, after
        changes.append(_Change(path, display, "deleted", 0, before, None, reported=False))
        changes.append(_Change(target, target_display, "moved", len(file.hunks), None, after, moved_from=display))
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
        first.reported = first.reported or change.reported
        if change.action == "moved" and first.before is None:
            first.action, first.moved_from = "moved", change.moved_from
        elif first.action == "moved" and change.after is not None:
            pass  # a moved file edited again: still the move
        elif change.after is None:
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
