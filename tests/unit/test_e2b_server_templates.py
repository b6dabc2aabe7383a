"""Snapshots copy a live workspace: a sandbox racing the copy must not make it read host files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandcastle.e2b_server.templates import copy_tree


def test_a_directory_swapped_for_a_symlink_during_the_copy_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a workspace with a file at its top and a directory below, and a host directory with a secret
    workspace, host, copy = tmp_path / "workspace", tmp_path / "host", tmp_path / "copy"
    (workspace / "a").mkdir(parents=True)
    (workspace / "0-first.txt").write_text("mine")
    host.mkdir()
    (host / "secret.txt").write_text("host only")
    real_chmod = os.chmod
    swapped = []

    def swap_then_chmod(path: object, mode: int, **kwargs: object) -> None:
        # When the first file has been copied (the walk has listed the top, not yet entered "a"),
        # the sandbox replaces "a" with a symlink to the host directory.
        if not swapped:
            (workspace / "a").rmdir()
            (workspace / "a").symlink_to(host)
            swapped.append(True)
        real_chmod(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", swap_then_chmod)

    # When the workspace is copied
    copy_tree(workspace, copy, owner=None)

    # Then the host's file was not copied through the swapped-in link
    assert swapped and (copy / "0-first.txt").read_text() == "mine"
    assert not (copy / "a" / "secret.txt").exists()


def test_a_file_swapped_for_a_symlink_after_it_was_looked_at_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a workspace file and a host file only root may read
    workspace, copy = tmp_path / "workspace", tmp_path / "copy"
    workspace.mkdir()
    (workspace / "b.txt").write_text("mine")
    secret = tmp_path / "shadow"
    secret.write_text("host only")
    secret.chmod(0o600)
    real_stat, real_lstat = os.stat, os.lstat
    swapped: list[bool] = []

    def swapping(real: object) -> object:
        def look(path: object, *args: object, **kwargs: object) -> os.stat_result:
            result = real(path, *args, **kwargs)  # type: ignore[operator]
            if str(path).endswith("b.txt") and not swapped:
                swapped.append(True)
                os.unlink(workspace / "b.txt")  # the sandbox swaps it right after the copy looked
                os.symlink(secret, workspace / "b.txt")
            return result  # type: ignore[no-any-return]

        return look

    monkeypatch.setattr(os, "stat", swapping(real_stat))
    monkeypatch.setattr(os, "lstat", swapping(real_lstat))

    # When the workspace is copied
    copy_tree(workspace, copy, owner=None)
    monkeypatch.undo()

    # Then neither the host file's content nor its mode was touched through the link
    assert swapped
    assert not (copy / "b.txt").exists() or (copy / "b.txt").is_symlink()
    assert "host only" not in "".join(
        path.read_text() for path in copy.rglob("*") if path.is_file() and not path.is_symlink()
    )
    assert secret.stat().st_mode & 0o777 == 0o600


def test_links_stay_links_and_special_files_stay_behind(tmp_path: Path) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    source.mkdir()
    (source / "etc").symlink_to("/etc")
    os.mkfifo(source / "pipe")

    copy_tree(source, copy, owner=None)

    assert os.readlink(copy / "etc") == "/etc"
    assert sorted(os.listdir(copy)) == ["etc"]
