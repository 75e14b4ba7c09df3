"""What `artifacts.write_text_whole` promises beyond a kill: the new text is on the disk before it
replaces the old, and the rename after it, so a power loss too leaves one or the other."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from components import artifacts
from tests.conftest import record_syncs


def test_a_file_written_whole_is_on_the_disk_before_it_replaces_the_old_and_the_rename_after(tmp_path, monkeypatch):
    path = tmp_path / "oracle.json"
    path.write_text('{"trials": 1}')
    events = record_syncs(monkeypatch, "replace")
    artifacts.write_text_whole(path, '{"trials": 22}')
    assert path.read_text() == '{"trials": 22}' and os.listdir(tmp_path) == ["oracle.json"]
    written, directory = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", written, len('{"trials": 22}')), ("rename", written), ("fsync", directory, None)]


def directories_fail_to_sync(monkeypatch, code: int) -> None:
    """`os.fsync` of a directory raises `code`; files sync as ever."""
    fsync = os.fsync

    def syncing(descriptor):
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(code, os.strerror(code))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", syncing)


@pytest.mark.parametrize("code", sorted({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}))
def test_a_filesystem_that_cannot_sync_a_directory_still_gets_the_file(tmp_path, monkeypatch, code):
    directories_fail_to_sync(monkeypatch, code)
    artifacts.write_text_whole(tmp_path / "trial.json", "{}")
    assert (tmp_path / "trial.json").read_text() == "{}"


def test_a_directory_that_fails_to_sync_is_an_error_naming_the_file(tmp_path, monkeypatch):
    directories_fail_to_sync(monkeypatch, errno.EIO)
    with pytest.raises(OSError) as raised:
        artifacts.write_text_whole(tmp_path / "trial.json", "{}")
    assert (raised.value.errno, raised.value.filename) == (errno.EIO, str(tmp_path / "trial.json"))
    # Renamed already: the new text, whole, and nothing beside it.
    assert (tmp_path / "trial.json").read_text() == "{}" and os.listdir(tmp_path) == ["trial.json"]
