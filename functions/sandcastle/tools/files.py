"""``write_file`` and ``read_file``: files in the run's sandbox."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from sandcastle.errors import ToolInputError
from sandcastle.sandbox.base import Sandbox
from sandcastle.tools.base import ToolArgs, ToolContext


class WriteFileArgs(ToolArgs):
    path: str = Field(min_length=1, description="File path, relative to the home directory or absolute under it.")
    content: str = Field(description="The whole text content of the file.")


class ReadFileArgs(ToolArgs):
    path: str = Field(min_length=1, description="File path, relative to the home directory or absolute under it.")
    offset: int = Field(default=0, ge=0, description="Byte offset to start reading at.")
    limit: int | None = Field(default=None, ge=1, description="Bytes to read at most.")


class WriteFile:
    name: ClassVar[str] = "write_file"
    description: ClassVar[str] = "Create or overwrite a text file in your sandbox, creating parent directories."
    args_model: ClassVar[type[ToolArgs]] = WriteFileArgs

    def execute(self, sandbox: Sandbox, args: WriteFileArgs, context: ToolContext) -> dict[str, Any]:
        data = args.content.encode("utf-8")
        try:
            sandbox.write_file(args.path, data)
        except ValueError as error:
            raise ToolInputError(str(error)) from error
        return {"path": args.path, "bytes": len(data)}


class ReadFile:
    name: ClassVar[str] = "read_file"
    description: ClassVar[str] = (
        "Read a text file from your sandbox. Large files: use offset and limit (bytes). "
        "A binary file is reported, not dumped."
    )
    args_model: ClassVar[type[ToolArgs]] = ReadFileArgs

    def execute(self, sandbox: Sandbox, args: ReadFileArgs, context: ToolContext) -> dict[str, Any]:
        try:
            data = sandbox.read_file(args.path)
        except FileNotFoundError as error:
            raise ToolInputError(f"path: {args.path} does not exist") from error
        except (ValueError, IsADirectoryError) as error:
            raise ToolInputError(str(error)) from error
        size = len(data)
        limit = min(args.limit or context.output_limit_bytes, context.output_limit_bytes)
        chunk = data[args.offset : args.offset + limit]
        if b"\x00" in chunk:
            return {"path": args.path, "bytes": size, "binary": True, "content": None}
        output: dict[str, Any] = {
            "path": args.path,
            "bytes": size,
            "offset": args.offset,
            "content": chunk.decode("utf-8", errors="replace"),
        }
        if args.offset + len(chunk) < size:
            output["truncated"] = True
            output["next_offset"] = args.offset + len(chunk)
        return output
