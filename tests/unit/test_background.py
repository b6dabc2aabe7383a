"""The layout background processes keep in a sandbox, and "new output since the last read" across readers."""

from __future__ import annotations

import pytest

from sandcastle.errors import ProcessNotFound
from sandcastle.sandbox import background


class Files(dict[str, bytes]):
    def read(self, path: str) -> bytes:
        try:
            return self[path]
        except KeyError:
            raise FileNotFoundError(path) from None

    def write(self, path: str, data: bytes) -> None:
        self[path] = data


@pytest.mark.parametrize("process_id", ["../../etc", "proc-", "proc-XYZ", "proc-12345678/../x", ""])
def test_an_id_that_is_not_a_process_id_never_becomes_a_path(process_id: str) -> None:
    with pytest.raises(ProcessNotFound, match="is not a process id"):
        background.process_dir(process_id)


def test_each_read_returns_only_what_is_new_and_the_cursor_lives_with_the_files() -> None:
    files, process_id = Files(), background.new_process_id()
    directory = background.process_dir(process_id)
    files.write(f"{directory}/command", b"server")
    files.write(f"{directory}/stdout", b"one\n")

    first = background.read_output(process_id, read=files.read, write=files.write, running=True)
    files.write(f"{directory}/stdout", b"one\ntwo\n")
    files.write(f"{directory}/stderr", b"warn\n")
    files.write(f"{directory}/exit", b"3\n")
    second = background.read_output(process_id, read=files.read, write=files.write, running=True)
    third = background.read_output(process_id, read=files.read, write=files.write, running=False)

    assert (first.stdout, first.running, first.exit_code) == (b"one\n", True, None)
    assert (second.stdout, second.stderr, second.running, second.exit_code) == (b"two\n", b"warn\n", False, 3)
    assert (third.stdout, third.stderr) == (b"", b"")


def test_a_process_this_sandbox_never_started_is_not_found() -> None:
    with pytest.raises(ProcessNotFound, match="no background process proc-00000000abcd"):
        background.read_output("proc-00000000abcd", read=Files().read, write=Files().write, running=False)


def test_a_backend_that_reads_from_an_offset_is_asked_only_for_what_is_new() -> None:
    files, process_id, asked = Files(), background.new_process_id(), []
    directory = background.process_dir(process_id)
    files.write(f"{directory}/command", b"server")
    files.write(f"{directory}/stdout", b"0123456789")

    def read_from(path: str, offset: int) -> bytes:
        asked.append((path.rsplit("/", 1)[1], offset))
        return files.read(path)[offset:]

    background.read_output(process_id, read=files.read, write=files.write, running=True, read_from=read_from)
    files.write(f"{directory}/stdout", b"0123456789abc")
    again = background.read_output(process_id, read=files.read, write=files.write, running=True, read_from=read_from)

    assert again.stdout == b"abc"
    assert asked == [("stdout", 0), ("stderr", 0), ("stdout", 10), ("stderr", 0)]
