"""Unified diffs, as data: parsing one (``diff -u``, ``git diff``, ``diff -N``) and applying its hunks to text.

Pure Python over strings and bytes: nothing in a patch executes, and nothing here touches a
sandbox (``tools/patch.py``, the ``apply_patch`` tool, reads and writes the files). A hunk's lines
must match the file exactly (line endings aside); only its position may differ from the one its
header states, searched nearest first as ``patch`` and ``git apply`` do. Every error is a
``ToolInputError`` the model reads, saying which hunk of which file is wrong and how.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from sandcastle.errors import ToolInputError

DEV_NULL = "/dev/null"
ERROR_PREFIX = "apply_patch:"
"""What every error message starts with: the tool the model called."""
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_BARE_HUNK_HEADER = re.compile(r"^@@(?: (?![-+]).*)?$")
"""``@@`` alone, or with a section name: no line numbers, the hunk's context places it."""
_EPOCH_TIMESTAMP = re.compile(r"^(1970-01-01|1969-12-31)[ T]")
_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", '"': '"', "\\": "\\"}
_QUOTE_LIMIT = 120


@dataclass
class DiffLine:
    """One line of a hunk: context (``" "``), removed (``"-"``) or added (``"+"``)."""

    kind: Literal[" ", "-", "+"]
    text: str
    """The line without its newline; a trailing CR (from a CRLF patch) is kept."""
    no_newline: bool = False
    """Followed by ``\\ No newline at end of file``."""

    @property
    def content(self) -> str:
        return self.text.removesuffix("\r")


@dataclass
class Hunk:
    """One ``@@`` section of a file's diff."""

    header: str
    old_start: int | None
    """1-based, as in the header; None for a bare ``@@`` header, placed by its context alone."""
    old_count: int
    lines: list[DiffLine] = field(default_factory=list)

    @property
    def old(self) -> list[DiffLine]:
        return [line for line in self.lines if line.kind != "+"]

    @property
    def new(self) -> list[DiffLine]:
        return [line for line in self.lines if line.kind != "-"]

    @property
    def stated_index(self) -> int:
        """Where the header puts the hunk, as a 0-based index into the old file's lines."""
        start = self.old_start or 0
        return start - 1 if self.old_count > 0 else start


@dataclass
class FilePatch:
    """One file's section of a diff: its ``---``/``+++`` names and timestamps, and its hunks."""

    old_name: str
    new_name: str
    old_stamp: str
    new_stamp: str
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def creates(self) -> bool:
        """The old side is /dev/null, or ``diff -N``'s stand-in for a missing file (epoch time, no lines)."""
        if self.old_name == DEV_NULL:
            return True
        return bool(_EPOCH_TIMESTAMP.match(self.old_stamp)) and not any(hunk.old for hunk in self.hunks)

    @property
    def deletes(self) -> bool:
        """The new side is /dev/null, or ``diff -N``'s stand-in for a removed file."""
        if self.new_name == DEV_NULL:
            return True
        return bool(_EPOCH_TIMESTAMP.match(self.new_stamp)) and not any(hunk.new for hunk in self.hunks)


def parse_unified_diff(patch: str) -> list[FilePatch]:
    """The files of a unified diff and their hunks; ``ToolInputError`` saying what is malformed."""
    lines = patch.split("\n")
    files: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i].removesuffix("\r")
        if line == "-- ":
            break  # the signature of a `git format-patch` mail
        if line.startswith("GIT binary patch") or (line.startswith("Binary files ") and line.endswith(" differ")):
            raise ToolInputError(
                f"{ERROR_PREFIX} binary patches are not supported; write binary files with run_command"
            )
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old_name, old_stamp = _header_name(line[4:])
            new_name, new_stamp = _header_name(lines[i + 1].removesuffix("\r")[4:])
            files.append(FilePatch(old_name, new_name, old_stamp, new_stamp))
            i += 2
            continue
        if line.startswith("@@"):
            if not files:
                break
            hunk, i = _parse_hunk(lines, i, _display_name(files[-1]), len(files[-1].hunks) + 1)
            files[-1].hunks.append(hunk)
            continue
        if files and files[-1].hunks and line[:1] in ("+", "-", " "):
            raise ToolInputError(
                f"{ERROR_PREFIX} hunk {len(files[-1].hunks)} of {_display_name(files[-1])} "
                f"({files[-1].hunks[-1].header}) has more lines than its header counts; fix the counts"
            )
        i += 1
    if not files:
        raise ToolInputError(
            f"{ERROR_PREFIX} no file headers found; a patch names each file with '--- a/path' and '+++ b/path' lines "
            "before its '@@ -start,count +start,count @@' hunks"
        )
    for file in files:
        if not file.hunks:
            raise ToolInputError(
                f"{ERROR_PREFIX} {_display_name(file)} has no hunks (renames and mode changes are not supported)"
            )
    return files


def _parse_hunk(lines: list[str], i: int, display: str, number: int) -> tuple[Hunk, int]:
    """The hunk whose header is ``lines[i]``, and the index of the line after it."""
    header_line = lines[i].removesuffix("\r")
    match = _HUNK_HEADER.match(header_line)
    if match:
        old_count = int(match[2]) if match[2] is not None else 1
        new_count = int(match[4]) if match[4] is not None else 1
        hunk = Hunk(header=header_line[: match.end()], old_start=int(match[1]), old_count=old_count)
    elif _BARE_HUNK_HEADER.match(header_line):
        old_count = new_count = -1
        hunk = Hunk(header="@@", old_start=None, old_count=0)
    else:
        raise ToolInputError(
            f"{ERROR_PREFIX} hunk {number} of {display}: malformed header {header_line!r}; "
            "expected '@@ -start,count +start,count @@'"
        )
    i += 1
    counted = old_count >= 0
    old_seen = new_seen = 0
    while i < len(lines):
        if counted and old_seen >= old_count and new_seen >= new_count:
            if i < len(lines) and lines[i].startswith("\\"):
                _mark_no_newline(hunk)
                i += 1
            break
        raw = lines[i]
        if raw.startswith("\\"):
            _mark_no_newline(hunk)
            i += 1
            continue
        if not counted and _ends_bare_hunk(lines, i):
            break
        kind = raw[:1] if raw[:1] in (" ", "-", "+") else None
        if kind is None and raw.removesuffix("\r") == "":
            kind = " "  # a blank context line whose leading space was stripped
            raw = " " + raw
        if kind is None:
            if counted:
                raise ToolInputError(
                    f"{ERROR_PREFIX} hunk {number} of {display} ({hunk.header}) ends after {old_seen} old and "
                    f"{new_seen} new lines, but its header counts {old_count} and {new_count}; fix the counts"
                )
            break
        hunk.lines.append(DiffLine(kind=kind, text=raw[1:]))  # type: ignore[arg-type]
        old_seen += kind != "+"
        new_seen += kind != "-"
        i += 1
    else:
        if counted and (old_seen < old_count or new_seen < new_count):
            raise ToolInputError(
                f"{ERROR_PREFIX} hunk {number} of {display} ({hunk.header}) is cut short: {old_seen} old and "
                f"{new_seen} new lines where its header counts {old_count} and {new_count}"
            )
    if not counted:
        while hunk.lines and hunk.lines[-1].kind == " " and hunk.lines[-1].content == "":
            hunk.lines.pop()  # blank lines after the hunk, not context
        hunk.old_count = len(hunk.old)
    if not any(line.kind != " " for line in hunk.lines):
        raise ToolInputError(f"{ERROR_PREFIX} hunk {number} of {display} ({hunk.header}) changes nothing")
    return hunk, i


def _ends_bare_hunk(lines: list[str], i: int) -> bool:
    line = lines[i]
    return line.startswith("@@") or (line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "))


def _mark_no_newline(hunk: Hunk) -> None:
    if hunk.lines:
        hunk.lines[-1].no_newline = True


def _header_name(rest: str) -> tuple[str, str]:
    """The path and timestamp of a ``---``/``+++`` header (after the marker)."""
    if rest.startswith('"'):
        name, end = _unquote_c_style(rest)
        return name, rest[end:].strip()
    name, _, stamp = rest.partition("\t")
    return name.rstrip(), stamp.strip()


def _unquote_c_style(text: str) -> tuple[str, int]:
    """Git's quoting of unusual file names: ``"a/caf\\303\\251.txt"`` → ``a/café.txt``."""
    out = bytearray()
    i = 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            escape = text[i + 1]
            if escape in "01234567":
                digits = re.match(r"[0-7]{1,3}", text[i + 1 :])[0]  # type: ignore[index]
                out.append(int(digits, 8) & 0xFF)
                i += 1 + len(digits)
                continue
            out += _C_ESCAPES.get(escape, escape).encode()
            i += 2
            continue
        out += text[i].encode()
        i += 1
    return out.decode("utf-8", errors="replace"), i + 1


def _strip_prefix(name: str, prefix: str) -> str:
    return name[len(prefix) :] if name.startswith(prefix) else name


def target_names(file: FilePatch) -> tuple[str, str]:
    """The old and new names with git's ``a/`` and ``b/`` prefixes removed when both carry them."""
    old, new = file.old_name, file.new_name
    if (old == DEV_NULL or old.startswith("a/")) and (new == DEV_NULL or new.startswith("b/")):
        old, new = _strip_prefix(old, "a/"), _strip_prefix(new, "b/")
    return old, new


def _display_name(file: FilePatch) -> str:
    old, new = target_names(file)
    return old if new == DEV_NULL else new


def apply_hunks(data: bytes, hunks: list[Hunk], display: str, *, creating: bool) -> bytes:
    """``data`` with every hunk applied in order; ``ToolInputError`` naming the first that does not apply."""
    text = data.decode("utf-8", errors="surrogateescape")
    contents, endings = split_lines(text)
    newline = "\r\n" if endings.count("\r\n") > endings.count("\n") else "\n"
    shift = 0
    """How far the lines of the old file have moved: earlier hunks' offsets and growth."""
    floor = 0
    """Hunks apply in order: none starts before the end of the previous one."""
    for number, hunk in enumerate(hunks, start=1):
        old = [line.content for line in hunk.old]
        if hunk.old_start is None and not old and contents:
            raise ToolInputError(
                f"{ERROR_PREFIX} hunk {number} of {display} (@@) only adds lines: give it context lines, "
                "or a header '@@ -start,count +start,count @@' that places it"
            )
        expected = hunk.stated_index + shift if hunk.old_start is not None else floor
        position = _find(contents, old, expected, floor)
        if position is None:
            raise ToolInputError(
                f"{ERROR_PREFIX} hunk {number} of {display} ({hunk.header}) does not apply: "
                + _mismatch(contents, old, max(expected, floor), shift, hunk)
            )
        new_contents: list[str] = []
        new_endings: list[str] = []
        cursor = position
        for line in hunk.lines:
            if line.kind == " ":
                new_contents.append(contents[cursor])
                new_endings.append(endings[cursor])
                cursor += 1
            elif line.kind == "-":
                cursor += 1
            else:
                ending = ("\r\n" if line.text.endswith("\r") else "\n") if creating else newline
                new_contents.append(line.content)
                new_endings.append("" if line.no_newline else ending)
        contents[position:cursor] = new_contents
        endings[position:cursor] = new_endings
        if hunk.old_start is not None:
            shift = position - hunk.stated_index + len(new_contents) - len(old)
        floor = position + len(new_contents)
    return join_lines(contents, endings, newline, display)


def join_lines(contents: list[str], endings: list[str], newline: str, display: str) -> bytes:
    """The file's bytes from its lines and endings (both patch formats): a last line without a newline
    that other lines now follow gets ``newline``; characters that cannot be encoded are the tool's error."""
    for index in range(len(endings) - 1):
        if endings[index] == "":  # a last line without newline that lines now follow
            endings[index] = newline
    try:
        return "".join(c + e for c, e in zip(contents, endings, strict=True)).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as error:
        raise ToolInputError(
            f"{ERROR_PREFIX} {display}: the patch holds characters that cannot be encoded: {error}"
        ) from error


def split_lines(text: str) -> tuple[list[str], list[str]]:
    """Lines without their endings, and the endings (``\\n``, ``\\r\\n`` or ``""`` for a last line without one)."""
    if text == "":
        return [], []
    pieces = text.split("\n")
    contents: list[str] = []
    endings: list[str] = []
    for piece in pieces[:-1]:
        if piece.endswith("\r"):
            contents.append(piece[:-1])
            endings.append("\r\n")
        else:
            contents.append(piece)
            endings.append("\n")
    if pieces[-1] != "":
        contents.append(pieces[-1])
        endings.append("")
    return contents, endings


def _find(contents: list[str], old: list[str], expected: int, floor: int) -> int | None:
    """Where ``old`` occurs at or after ``floor``, nearest ``expected`` first."""
    last = len(contents) - len(old)
    if last < floor:
        return None
    if not old:
        return expected if floor <= expected <= len(contents) else None
    expected = min(max(expected, floor), last)
    for distance in range(max(expected - floor, last - expected) + 1):
        for candidate in (expected - distance, expected + distance) if distance else (expected,):
            if floor <= candidate <= last and contents[candidate : candidate + len(old)] == old:
                return candidate
    return None


def _mismatch(contents: list[str], old: list[str], position: int, shift: int, hunk: Hunk) -> str:
    """Why the hunk does not apply where its header puts it, in the old file's line numbers."""
    if not old:
        if position > len(contents):
            return f"it inserts after line {hunk.old_start} but the file has only {len(contents) - shift} lines"
        return "it inserts inside an earlier hunk"
    for offset, want in enumerate(old):
        line_number = position + offset - shift + 1
        if position + offset >= len(contents):
            return f"line {line_number} expected {_quote(want)} but the file ends before it"
        if contents[position + offset] != want:
            return (
                f"line {line_number} expected {_quote(want)} but found {_quote(contents[position + offset])}"
                "; nor do its lines occur together anywhere else in the file"
            )
    return "its lines overlap an earlier hunk"


def _quote(line: str) -> str:
    clipped = line if len(line) <= _QUOTE_LIMIT else line[:_QUOTE_LIMIT] + "…"
    return json.dumps(clipped, ensure_ascii=False)
