"""What each tool returns: the ``output`` of a tool-result event, one model per tool.

A tool's ``execute`` returns one of these; the event stores it as JSON without its unset fields
(``exclude_none``), which is the shape the tools' plain dicts had, so items written before these
models existed read back typed. Each model forbids unknown keys and requires the keys only it has,
so ``ToolOutput`` (their union) tells them apart by shape alone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, SerializerFunctionWrapHandler, model_serializer
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeptStream(_Output):
    """A command's stdout or stderr as kept (``large_values.keep_value``): redacted, clipped, and
    when clipped or not UTF-8 saved whole at ``full_output``."""

    text: str
    bytes: int
    truncated: bool | None = None
    not_utf8: bool | None = None
    full_output: str | None = None
    """Where the whole stream is (``s3://…``)."""


class CommandOutput(_Output):
    """``run_command``: the exit code and the kept streams; ``timed_out`` when it was killed."""

    exit_code: int | None
    """None when the command was killed (``timed_out``): stored as ``null``, as it always was."""
    stdout: KeptStream
    stderr: KeptStream
    duration_ms: int
    timed_out: bool | None = None
    timeout_s: float | None = None

    @model_serializer(mode="wrap")
    def _exit_code_always(self, handler: SerializerFunctionWrapHandler) -> Any:
        """``exit_code`` is written even when None (``exclude_none`` leaves out only the unset flags)."""
        data = handler(self)
        return {"exit_code": self.exit_code, **data} if isinstance(data, dict) else data

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The fields' schema in both modes: the serializer above returns these same fields, not "any"."""
        return handler({key: value for key, value in schema.items() if key != "serialization"})


class BackgroundOutput(_Output):
    """A background process as a tool found it (``run_command`` with ``background``, ``process_output``,
    ``write_stdin``, ``kill_process``): its id, the output new since the last read, how it ended."""

    process_id: str
    running: bool
    exit_code: int | None = None
    stdout: KeptStream
    stderr: KeptStream


class WriteFileOutput(_Output):
    """``write_file``: the path as given and the bytes written."""

    path: str
    bytes: int


class ReadTextOutput(_Output):
    """``read_file`` of text: the content from ``offset``; ``next_offset`` when more remains."""

    path: str
    bytes: int
    """The whole file's size."""
    offset: int
    content: str
    truncated: bool | None = None
    next_offset: int | None = None


class ReadBinaryOutput(_Output):
    """``read_file`` of a binary file: its size, not its bytes."""

    path: str
    bytes: int
    binary: Literal[True]


class ListEntry(_Output):
    path: str
    """Relative to the listed directory."""
    type: Literal["file", "dir", "link", "other"]
    size: int


class ListFilesOutput(_Output):
    """``list_files``: the shallowest entries; ``truncated`` and ``omitted`` when some were left out."""

    path: str
    entries: list[ListEntry]
    truncated: bool | None = None
    omitted: int | None = None


class PatchedFile(_Output):
    path: str
    action: Literal["modified", "created", "deleted", "moved"]
    hunks: int
    moved_from: str | None = None
    """``moved``: the path the file had before (``*** Move to:``)."""


class PatchOutput(_Output):
    """``apply_patch``: each file it changed."""

    files: list[PatchedFile]


ToolOutput = (
    CommandOutput
    | BackgroundOutput
    | WriteFileOutput
    | ReadTextOutput
    | ReadBinaryOutput
    | ListFilesOutput
    | PatchOutput
)
"""Any tool's output; unambiguous by shape (each model forbids the others' keys)."""
