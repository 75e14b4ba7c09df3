"""What `artifacts.write_text_whole` promises beyond a kill: the new text is on the disk before it
replaces the old, and the rename after it, so a power loss too leaves one or the other."""
from __future__ import annotations

import errno
import os

import pytest

from components import artifacts


def recording_syncs(monkeypatch) -> list[tuple[str, int]]:
    """Every fsync (by the inode synced) and every rename (by the inode renamed), in order."""
    events: list[tuple[str, int]] = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(descriptor):
        events.append(("fsync", os.fstat(descriptor).st_ino))
        fsync(descriptor)

    def recorded_replace(source, target, *args, **kwargs):
        events.append(("rename", os.stat(source).st_ino))
        replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    return events


def test_a_file_written_whole_is_on_the_disk_before_it_replaces_the_old_and_the_rename_after(tmp_path, monkeypatch):
    path = tmp_path / "oracle.json"
    path.write_text('{"trials": 1}')
    events = recording_syncs(monkeypatch)
    artifacts.write_text_whole(path, '{"trials": 2}')
    assert path.read_text() == '{"trials": 2}' and os.listdir(tmp_path) == ["oracle.json"]
    written, directory = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", written), ("rename", written), ("fsync", directory)]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EOPNOTSUPP])
def test_a_filesystem_that_cannot_sync_a_directory_still_gets_the_file(tmp_path, monkeypatch, code):
    fsync = os.fsync

    def no_directories(descriptor):
        if os.path.isdir(f"/proc/self/fd/{descriptor}"):
            raise OSError(code, os.strerror(code))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", no_directories)
    artifacts.write_text_whole(tmp_path / "trial.json", "{}")
    assert (tmp_path / "trial.json").read_text() == "{}"


def test_a_directory_that_fails_to_sync_is_an_error_naming_the_file(tmp_path, monkeypatch):
    fsync = os.fsync

    def failing(descriptor):
        if os.path.isdir(f"/proc/self/fd/{descriptor}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError) as raised:
        artifacts.write_text_whole(tmp_path / "trial.json", "{}")
    assert (raised.value.errno, raised.value.filename) == (errno.EIO, str(tmp_path / "trial.json"))
