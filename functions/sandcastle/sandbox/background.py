"""Background processes kept *in the sandbox*: one layout and one read rule for every backend.

A tool call runs in its own Lambda invocation, so nothing about a background process may live in
a Lambda's memory. Each process has a directory in the sandbox, ``~/.sandcastle/processes/<id>/``:

``command``  the command line (written before it starts)
``stdout``   ``stderr``  everything it printed (the wrapper below redirects them there)
``exit``     its exit status, written when it ends (by the wrapper; 137 by ``kill_process``)
``read``     how far ``process_output`` has read each stream (so "new since the last read" holds
             across invocations)

A backend only starts the wrapper so that it outlives the call (the local sandbox's init, E2B's
``commands.run(background=True)``), feeds its stdin, kills its process group and says which are
still running; ``read_output`` is the rest.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from collections.abc import Callable

from sandcastle.errors import ProcessNotFound
from sandcastle.sandbox.base import SANDBOX_HOME, ProcessOutput

PROCESSES_DIR = f"{SANDBOX_HOME}/.sandcastle/processes"
KILLED_EXIT_CODE = 128 + 9
_PROCESS_ID = re.compile(r"proc-[0-9a-f]{8,32}")


def new_process_id() -> str:
    return f"proc-{secrets.token_hex(6)}"


def process_dir(process_id: str) -> str:
    """The process's directory; ``ProcessNotFound`` for an id no sandbox could have made."""
    if not _PROCESS_ID.fullmatch(process_id):
        raise ProcessNotFound(f"{process_id!r} is not a process id (they look like proc-1a2b3c4d5e6f)")
    return f"{PROCESSES_DIR}/{process_id}"


def wrapper(process_id: str, command: str) -> str:
    """The shell line a backend starts: ``command`` with its output and exit status kept in its directory.

    It writes its own pid to ``pgid`` (it is its process group's leader where the backend gives it
    a session of its own) and runs the command in a plain ``bash -c``: the wrapper itself is the
    one login shell.
    """
    directory = shlex.quote(process_dir(process_id))
    return (
        f'd={directory}; echo $$ > "$d/pgid"; '
        f'bash -c {shlex.quote(command)} > "$d/stdout" 2> "$d/stderr"; '
        'code=$?; echo "$code" > "$d/exit.partial" && mv -f "$d/exit.partial" "$d/exit"'
    )


def read_output(
    process_id: str,
    *,
    read: Callable[[str], bytes],
    write: Callable[[str, bytes], None],
    running: bool,
    read_from: Callable[[str, int], bytes] | None = None,
) -> ProcessOutput:
    """The new output of a process since the last read (moving the cursor), and its exit status.

    ``read``/``write`` are the sandbox's file operations; ``running`` is whether the backend still
    sees the process; ``read_from(path, offset)``, where the backend has it, reads only what is new
    (else the whole file is read and sliced). The exit status is read before the output, so once it
    is there the output read is complete.
    """
    tail = read_from or (lambda path, offset: read(path)[offset:])
    directory = process_dir(process_id)
    try:
        read(f"{directory}/command")
    except FileNotFoundError:
        raise ProcessNotFound(f"no background process {process_id} in this sandbox") from None
    exit_code = _exit_code(_read_or_empty(read, f"{directory}/exit"))
    cursor = _cursor(_read_or_empty(read, f"{directory}/read"))
    new_stdout = _read_or_empty(lambda path: tail(path, cursor["stdout"]), f"{directory}/stdout")
    new_stderr = _read_or_empty(lambda path: tail(path, cursor["stderr"]), f"{directory}/stderr")
    if new_stdout or new_stderr:
        cursor = {"stdout": cursor["stdout"] + len(new_stdout), "stderr": cursor["stderr"] + len(new_stderr)}
        write(f"{directory}/read", json.dumps(cursor).encode())
    return ProcessOutput(
        process_id=process_id,
        stdout=new_stdout,
        stderr=new_stderr,
        running=running and exit_code is None,
        exit_code=exit_code,
    )


def _read_or_empty(read: Callable[[str], bytes], path: str) -> bytes:
    try:
        return read(path)
    except FileNotFoundError:
        return b""


def _exit_code(data: bytes) -> int | None:
    try:
        return int(data.strip())
    except ValueError:
        return None


def _cursor(data: bytes) -> dict[str, int]:
    try:
        cursor = json.loads(data)
        return {"stdout": max(0, int(cursor["stdout"])), "stderr": max(0, int(cursor["stderr"]))}
    except (ValueError, KeyError, TypeError):
        return {"stdout": 0, "stderr": 0}
