"""The local E2B server's upload bodies: a gzip body is unpacked with a cap, so a small bomb cannot fill memory."""

from __future__ import annotations

import gzip

import pytest

from sandcastle.e2b_server import filesystem


def test_a_gzip_body_is_unpacked() -> None:
    assert filesystem._decoded_body("gzip", gzip.compress(b"hello")) == b"hello"
    assert filesystem._decoded_body("", b"raw") == b"raw"


def test_a_gzip_body_unpacking_past_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filesystem, "_MAX_UNZIPPED_BYTES", 1024)
    bomb = gzip.compress(b"\0" * 10_000)  # ~40 bytes that unpack to 10 kB

    with pytest.raises(ValueError, match="unpacks to more than 1024 bytes"):
        filesystem._decoded_body("gzip", bomb)
