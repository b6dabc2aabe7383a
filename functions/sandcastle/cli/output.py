"""What every command prints and exits with: the exit-code table, ``--json``, and errors in one line.

Exit codes (README, "Exit codes"): ``0`` succeeded · ``1`` the run (or the operation) did not succeed ·
``2`` usage error (bad arguments, an invalid request, no such run) · ``3`` cannot reach the server or not
authorised (no server, connection refused, 401/403, no AWS credentials or region) · ``130`` interrupted
(Ctrl-C) · ``141`` the reader of stdout went away (``| head``).

With ``--json`` stdout carries one JSON document and nothing else; what is said for people (progress,
transcripts, hints) goes to stderr. Commands print through ``say``, ``data`` and ``table`` and report
failures through ``fail`` / ``failure``; ``run_command`` turns what escapes a command into a code.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from typing import Any, TextIO

from sandcastle.errors import CommandFailed

__all__ = ["CommandFailed", "Exit", "configure", "data", "fail", "failure", "human", "run_command", "say", "table"]


class Exit(IntEnum):
    OK = 0
    NOT_SUCCEEDED = 1
    USAGE = 2
    UNREACHABLE = 3
    INTERRUPTED = 130
    BROKEN_PIPE = 141


_json_mode = False


def configure(*, json_output: bool) -> None:
    global _json_mode
    _json_mode = json_output


def json_mode() -> bool:
    return _json_mode


def human() -> TextIO:
    """Where words for people go: stdout, or stderr when stdout is for JSON."""
    return sys.stderr if _json_mode else sys.stdout


def say(text: str = "") -> None:
    print(text, file=human(), flush=True)


def data(document: Any, lines: Iterable[str] | Callable[[], Iterable[str]] = ()) -> None:
    """The command's result: ``document`` as JSON with ``--json``, else ``lines`` for people."""
    if _json_mode:
        print(json.dumps(document, indent=2, ensure_ascii=False), flush=True)
        return
    for line in lines() if callable(lines) else lines:
        print(line, flush=True)


def table(document: Any, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A list: ``document`` as JSON with ``--json``, else aligned columns under ``headers``."""
    if _json_mode:
        data(document)
        return
    cells = [[str(c) for c in headers], *([("-" if c is None else str(c)) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), flush=True)


def fail(message: str, code: Exit) -> int:
    print(f"sandcastle: {message}", file=sys.stderr, flush=True)
    return int(code)


def failure(error: BaseException, *, where: str = "") -> int:
    """Say what went wrong talking to the API or AWS, in a line, and return its exit code."""
    message, code = classify(error)
    return fail(f"{where}{message}", code)


def classify(error: BaseException) -> tuple[str, Exit]:
    """The one table from an error to a line and an exit code."""
    from sandcastle.errors import ApiError, InvalidRunRequest

    if isinstance(error, CommandFailed):
        return str(error), Exit(error.code)
    if isinstance(error, InvalidRunRequest):
        return str(error), Exit.USAGE
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(error, pydantic.ValidationError):
        from sandcastle.validation import describe_issues

        return describe_issues(error.errors()), Exit.USAGE
    if isinstance(error, ApiError):
        if error.status in (401, 403):
            return f"not authorised ({error.status}): {error}; check --api-key / SANDCASTLE_API_KEY", Exit.UNREACHABLE
        if 400 <= error.status < 500 and error.status not in (409, 429):
            return str(error), Exit.USAGE
        return str(error), Exit.NOT_SUCCEEDED
    aws = _aws_problem(error)
    if aws is not None:
        return aws
    if isinstance(error, OSError):
        reason = getattr(error, "reason", None) or error.strerror or error
        return f"cannot reach the server: {reason}", Exit.UNREACHABLE
    return str(error), Exit.NOT_SUCCEEDED


def _aws_problem(error: BaseException) -> tuple[str, Exit] | None:
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is None or not isinstance(error, botocore.BotoCoreError | botocore.ClientError):
        return None
    if isinstance(error, botocore.NoRegionError):
        return "no AWS region: pass --region or set AWS_REGION", Exit.UNREACHABLE
    if isinstance(error, botocore.NoCredentialsError | botocore.PartialCredentialsError):
        return "no AWS credentials: pass --profile, set AWS_PROFILE, or run `aws configure`", Exit.UNREACHABLE
    if isinstance(error, botocore.ProfileNotFound):
        return f"{error}: pass an existing --profile (`aws configure list-profiles`)", Exit.UNREACHABLE
    if isinstance(error, botocore.ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if code in ("ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException", "InvalidClientTokenId"):
            return f"AWS refused the credentials ({code}): refresh them or pass another --profile", Exit.UNREACHABLE
        if code in ("AccessDenied", "AccessDeniedException"):
            return f"AWS denied the call ({code}): {message}", Exit.UNREACHABLE
        return f"AWS: {code}: {message}", Exit.NOT_SUCCEEDED
    if isinstance(error, botocore.EndpointConnectionError | botocore.ConnectTimeoutError):
        return f"cannot reach AWS: {error}", Exit.UNREACHABLE
    return f"AWS: {error}", Exit.NOT_SUCCEEDED


def run_command(command: Callable[[], int]) -> int:
    """Run a command; what escapes it becomes a line and an exit code, never a traceback."""
    try:
        code = command()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader of stdout is gone (``| head -1``): stop quietly; Python's exit flush must not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(Exit.BROKEN_PIPE)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return int(Exit.INTERRUPTED)
    except Exception as error:
        if not _known(error):
            raise  # a bug of ours: its traceback is what a report needs
        return failure(error)


def _known(error: BaseException) -> bool:
    from sandcastle.errors import ApiError, InvalidRunRequest

    pydantic = sys.modules.get("pydantic")
    return (
        isinstance(error, CommandFailed | ApiError | InvalidRunRequest | OSError)
        or (pydantic is not None and isinstance(error, pydantic.ValidationError))
        or _aws_problem(error) is not None
    )
