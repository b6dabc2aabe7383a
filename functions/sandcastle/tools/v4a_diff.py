"""The ``*** Begin Patch`` edit format (V4A), as data: parsing a patch and applying its hunks to text.

The format OpenAI's models are trained on (Codex's ``apply_patch``; the Agents SDK's
``apply_diff``)::

    *** Begin Patch
    *** Add File: docs/new.md
    +a line of the new file
    *** Delete File: old.txt
    *** Update File: src/app.py
    *** Move to: src/main.py
    @@ def main():
         context
    -    removed
    +    added
    *** End of File
    *** End Patch

A hunk carries no line numbers: its context (and the ``@@`` lines above it, each found in turn
after the previous hunk) places it. Context is matched exactly first, then ignoring trailing
whitespace, then ignoring all surrounding whitespace, then with typographic punctuation read as
ASCII — the file's own lines are kept either way; only ``-`` lines go and ``+`` lines come.
``*** End of File`` anchors a hunk at the end of the file. Written here rather than taken from a
library: the Agents SDK's parser works on one file's text with no errors a model can act on, and
nothing on PyPI parses the whole multi-file format. Pure Python, nothing in a patch executes, and
every error is a ``ToolInputError`` naming the file and the hunk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from sandcastle.errors import ToolInputError
from sandcastle.tools.unified_diff import ERROR_PREFIX, DiffLine, join_lines, split_lines

BEGIN_PATCH = "*** Begin Patch"
END_PATCH = "*** End Patch"
END_OF_FILE = "*** End of File"
_ADD, _DELETE, _UPDATE, _MOVE = "*** Add File: ", "*** Delete File: ", "*** Update File: ", "*** Move to: "
_FILE_MARKERS = (_ADD, _DELETE, _UPDATE)
_DETECT = re.compile(r"^\*\*\* (Begin Patch|Update File: |Add File: |Delete File: )", re.MULTILINE)
_WRAPPER = re.compile(r"^(```.*|.*<<-?\s*['\"]?\w+['\"]?\s*|['\"]?EOF['\"]?|)$")
"""Lines a model puts around a patch: a code fence, a heredoc's opening and closing lines, blanks."""
_QUOTE_LIMIT = 120
_PUNCTUATION = str.maketrans(
    {
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
        **dict.fromkeys("\u2018\u2019\u201a\u201b", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f", '"'),
        **dict.fromkeys("\u00a0\u2002\u2003\u2009\u202f", " "),
    }
)
_FUZZ: tuple[Callable[[str], str], ...] = (
    lambda line: line,
    str.rstrip,
    str.strip,
    lambda line: line.strip().translate(_PUNCTUATION),
)
"""How strictly context must match, strictest first: the first level at which it matches anywhere wins."""


@dataclass
class V4AHunk:
    """One ``@@`` section of an ``*** Update File:``."""

    number: int
    anchors: list[str] = field(default_factory=list)
    """The text of its ``@@ …`` lines (``@@`` alone adds none): each is found after the previous."""
    lines: list[DiffLine] = field(default_factory=list)
    end_of_file: bool = False

    @property
    def header(self) -> str:
        return "@@ " + " / ".join(anchor.strip() for anchor in self.anchors) if self.anchors else "@@"

    @property
    def old(self) -> list[str]:
        return [line.content for line in self.lines if line.kind != "+"]


@dataclass
class V4AFile:
    """One file section of a patch."""

    action: Literal["add", "delete", "update"]
    path: str
    move_to: str | None = None
    content: str = ""
    """``add``: the new file's text."""
    hunks: list[V4AHunk] = field(default_factory=list)


def is_v4a(patch: str) -> bool:
    """Whether ``patch`` is in this format (else it is read as a unified diff)."""
    return bool(_DETECT.search(patch))


def parse_v4a(patch: str) -> list[V4AFile]:
    """The file sections of a ``*** Begin Patch`` patch; ``ToolInputError`` saying what is malformed."""
    lines = patch.split("\n")
    markers = [line.removesuffix("\r").strip() for line in lines]
    begin = next((i for i, marker in enumerate(markers) if marker == BEGIN_PATCH), None)
    if begin is None:
        raise ToolInputError(f"{ERROR_PREFIX} the patch must start with a '{BEGIN_PATCH}' line")
    end = next((i for i in range(len(markers) - 1, begin, -1) if markers[i] == END_PATCH), None)
    if end is None:
        raise ToolInputError(
            f"{ERROR_PREFIX} the patch has no '{END_PATCH}' line; it may be cut short, so nothing was applied"
        )
    for i in [*range(begin), *range(end + 1, len(lines))]:
        if not _WRAPPER.match(markers[i]):
            where = "before" if i < begin else "after"
            raise ToolInputError(
                f"{ERROR_PREFIX} line {i + 1} {_quote(markers[i])} is {where} the patch; "
                f"send one patch from '{BEGIN_PATCH}' to '{END_PATCH}'"
            )
    files: list[V4AFile] = []
    i = begin + 1
    while i < end:
        line = lines[i].removesuffix("\r")
        marker = next((m for m in _FILE_MARKERS if line.startswith(m)), None)
        if marker is None:
            if not line.strip():
                i += 1
                continue
            raise ToolInputError(
                f"{ERROR_PREFIX} line {i + 1} {_quote(line)}: expected '*** Add File: path', "
                "'*** Update File: path' or '*** Delete File: path'"
            )
        path = line[len(marker) :].strip()
        if not path:
            raise ToolInputError(f"{ERROR_PREFIX} line {i + 1} {_quote(line)} names no file")
        section_end = next(
            (j for j in range(i + 1, end) if lines[j].startswith(_FILE_MARKERS)),
            end,
        )
        body = [
            text.removesuffix("\r") if text.startswith(("***", "@@")) else text for text in lines[i + 1 : section_end]
        ]
        if marker == _ADD:
            files.append(V4AFile("add", path, content=_added_content(body, path, i + 2)))
        elif marker == _DELETE:
            stray = next((text for text in body if text.strip()), None)
            if stray is not None:
                raise ToolInputError(
                    f"{ERROR_PREFIX} *** Delete File: {path} is followed by {_quote(stray)}; a deletion has no lines"
                )
            files.append(V4AFile("delete", path))
        else:
            files.append(_parse_update(path, body))
        i = section_end
    if not files:
        raise ToolInputError(f"{ERROR_PREFIX} the patch names no file between '{BEGIN_PATCH}' and '{END_PATCH}'")
    return files


def _added_content(body: list[str], path: str, first_line: int) -> str:
    while body and not body[-1].strip():
        body = body[:-1]
    out: list[str] = []
    for offset, text in enumerate(body):
        if not text.startswith("+"):
            raise ToolInputError(
                f"{ERROR_PREFIX} *** Add File: {path}: line {first_line + offset} {_quote(text)} must start "
                "with '+' (every line of a new file does)"
            )
        out.append(text[1:] + "\n")  # a CRLF patch's "\r" stays: the new file has CRLF lines
    return "".join(out)


def _parse_update(path: str, body: list[str]) -> V4AFile:
    file = V4AFile("update", path)
    start = 0
    if body and body[0].startswith(_MOVE):
        file.move_to = body[0][len(_MOVE) :].strip()
        if not file.move_to:
            raise ToolInputError(f"{ERROR_PREFIX} *** Update File: {path}: '*** Move to:' names no file")
        start = 1
    while len(body) > start and not body[-1].strip():
        body = body[:-1]
    hunk = V4AHunk(number=1)
    for text in body[start:]:
        if text == "@@" or text.startswith("@@ "):
            if hunk.lines or hunk.end_of_file:
                file.hunks.append(hunk)
                hunk = V4AHunk(number=hunk.number + 1)
            if text.strip() != "@@":
                hunk.anchors.append(text[3:])
            continue
        if hunk.end_of_file:
            raise ToolInputError(
                f"{ERROR_PREFIX} hunk {hunk.number} of {path} ({hunk.header}): {_quote(text)} follows "
                f"'{END_OF_FILE}'; start another hunk with '@@'"
            )
        if text == END_OF_FILE:
            hunk.end_of_file = True
            continue
        if text.startswith("***"):
            raise ToolInputError(
                f"{ERROR_PREFIX} hunk {hunk.number} of {path} ({hunk.header}): unknown marker {_quote(text)}"
            )
        if text == "" or text == "\r":
            hunk.lines.append(DiffLine(" ", text))  # a blank context line whose leading space was lost
        elif text[0] in " -+":
            hunk.lines.append(DiffLine(text[0], text[1:]))  # type: ignore[arg-type]
        else:
            raise ToolInputError(
                f"{ERROR_PREFIX} hunk {hunk.number} of {path} ({hunk.header}): line {_quote(text)} must start "
                "with ' ' (context), '-' (removed), '+' (added) or '@@' (a new hunk)"
            )
    if hunk.lines or hunk.anchors or hunk.end_of_file:
        file.hunks.append(hunk)
    for each in file.hunks:
        if not any(line.kind != " " for line in each.lines):
            raise ToolInputError(
                f"{ERROR_PREFIX} hunk {each.number} of {path} ({each.header}) changes nothing: "
                "it has no '-' or '+' lines"
            )
    if not file.hunks and file.move_to is None:
        raise ToolInputError(f"{ERROR_PREFIX} *** Update File: {path} has no hunks; give '@@' sections with changes")
    return file


def apply_v4a_hunks(data: bytes, hunks: list[V4AHunk], display: str) -> bytes:
    """``data`` with every hunk applied in order; ``ToolInputError`` naming the first that does not apply."""
    text = data.decode("utf-8", errors="surrogateescape")
    contents, endings = split_lines(text)
    newline = "\r\n" if endings.count("\r\n") > endings.count("\n") else "\n"
    cursor = 0
    """Hunks apply in order: each is searched for after the previous one."""
    for hunk in hunks:
        for anchor in hunk.anchors:
            found = _seek(contents, [anchor], cursor, end_of_file=False)
            if found is None:
                raise _does_not_apply(display, hunk, f"its line '@@ {anchor.strip()}' does not occur {_after(cursor)}")
            cursor = found + 1
        if hunk.anchors:
            cursor -= 1  # the context may repeat the @@ line itself
        old = hunk.old
        lines = hunk.lines
        if not old:
            position: int | None = cursor + 1 if hunk.anchors and not hunk.end_of_file else len(contents)
        else:
            position = _seek(contents, old, cursor, end_of_file=hunk.end_of_file)
            if position is None and old[-1].strip() == "" and lines[-1].kind == " ":
                lines, old = lines[:-1], old[:-1]  # a blank line after the hunk, not context
                position = _seek(contents, old, cursor, end_of_file=hunk.end_of_file)
        if position is None:
            raise _does_not_apply(display, hunk, _not_found(contents, hunk.old, cursor, hunk.end_of_file))
        reaches_end = position + len(old) == len(contents)
        last_had_no_newline = bool(endings) and endings[-1] == ""
        new_contents: list[str] = []
        new_endings: list[str] = []
        at = position
        for line in lines:
            if line.kind == " ":
                new_contents.append(contents[at])
                new_endings.append(endings[at])
                at += 1
            elif line.kind == "-":
                at += 1
            else:
                new_contents.append(line.content)
                new_endings.append(newline)
        if reaches_end and last_had_no_newline and new_endings and lines[-1].kind != " ":
            new_endings[-1] = ""  # the file ended without a newline; it still does
        contents[position:at] = new_contents
        endings[position:at] = new_endings
        cursor = position + len(new_contents)
    return join_lines(contents, endings, newline, display)


def _seek(contents: list[str], pattern: list[str], start: int, *, end_of_file: bool) -> int | None:
    """Where ``pattern`` occurs at or after ``start``, at the strictest fuzz level that finds it."""
    last = len(contents) - len(pattern)
    if last < start:
        return None
    for normalise in _FUZZ:
        wanted = [normalise(line) for line in pattern]
        if end_of_file and [normalise(line) for line in contents[last:]] == wanted:
            return last
        for candidate in range(start, last + 1):
            if all(normalise(contents[candidate + k]) == wanted[k] for k in range(len(pattern))):
                return candidate
    return None


def _not_found(contents: list[str], old: list[str], cursor: int, end_of_file: bool) -> str:
    """What the model needs to fix its context: the closest place it nearly matches, and the first difference."""
    loose = _FUZZ[-1]
    best, best_count = -1, 0
    for candidate in range(cursor, len(contents)):
        count = 0
        while candidate + count < len(contents) and count < len(old):
            if loose(contents[candidate + count]) != loose(old[count]):
                break
            count += 1
        if count > best_count:
            best, best_count = candidate, count
    where = "at the end of the file" if end_of_file else _after(cursor)
    expected = f"its {len(old)} context and removed lines do not occur {where} (even ignoring whitespace)"
    if best_count == 0:
        return f"{expected}; not even its first line {_quote(old[0])} does"
    best_count = min(best_count, len(old) - 1)
    line = best + best_count
    found = _quote(contents[line]) if line < len(contents) else "the end of the file"
    return (
        f"{expected}; the closest match starts at line {best + 1}, but line {line + 1} is {found} "
        f"where the hunk expects {_quote(old[best_count])}"
    )


def _after(cursor: int) -> str:
    return "in the file" if cursor == 0 else f"after line {cursor}"


def _does_not_apply(display: str, hunk: V4AHunk, why: str) -> ToolInputError:
    return ToolInputError(f"{ERROR_PREFIX} hunk {hunk.number} of {display} ({hunk.header}) does not apply: {why}")


def _quote(line: str) -> str:
    clipped = line if len(line) <= _QUOTE_LIMIT else line[:_QUOTE_LIMIT] + "…"
    return json.dumps(clipped, ensure_ascii=False)
