"""Artifact directories: how a step writes one so that no half-written output looks valid, and the
manifest that lets the next step, the cache and lineage trust it without re-reading the data.

A step builds its output in a sibling `.partial-*` directory and renames it into place only when
everything, the manifest last, is written. A directory without `_manifest.json` is not an artifact.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.errors import DataError

MANIFEST = "_manifest.json"
SCHEMA_VERSION = 1

# The kinds of artifact the steps write (a manifest's `kind`), which are also their names in the
# pipeline: the DAG's outputs, the lineage tags and the step registry use these.
EXAMPLES = "examples"
TRANSFORM = "transform"
TUNING = "tuning"
MODEL = "model"
EVALUATION = "evaluation"


def digest_tree(root: str | os.PathLike[str]) -> str:
    """sha256 over every file's relative path and content, in a stable order."""
    root = Path(root)
    total = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        total.update(path.relative_to(root).as_posix().encode())
        total.update(b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                total.update(block)
        total.update(b"\0")
    return "sha256:" + total.hexdigest()


def write_manifest(root: str | os.PathLike[str], kind: str, producer: str, **facts: Any) -> dict[str, Any]:
    manifest = {
        "kind": kind,
        "producer": producer,
        "digest": digest_tree(root),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "schema_version": SCHEMA_VERSION,
        **facts,
    }
    Path(root, MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest_any(root: str | os.PathLike[str], kind: str = "") -> dict[str, Any]:
    """The manifest of a complete artifact of whatever kind, or a DataError saying why `root` is not one."""
    path = Path(root, MANIFEST)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{root} is not a complete {kind + ' ' if kind else ''}artifact (no {MANIFEST})") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path} cannot be read: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("digest"), str):
        raise DataError(f"{path} is not a manifest (no digest)")
    return manifest


def read_manifest(root: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """The manifest of a complete artifact of `kind`, or a DataError saying why `root` is not one."""
    manifest = read_manifest_any(root, kind)
    if manifest.get("kind") != kind:
        raise DataError(f"{root} holds a {manifest.get('kind')!r} artifact, expected {kind!r}")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{root} was written with artifact schema {manifest.get('schema_version')}, "
                        f"this tunepipe reads {SCHEMA_VERSION}")
    return manifest


# What a filesystem that does not sync directories (some FUSE and network ones) answers: there a
# rename is as durable as the filesystem makes it.
_CANNOT_SYNC_A_DIRECTORY = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def sync_directory(directory: str | os.PathLike[str]) -> None:
    """Put `directory`'s entries (a file renamed into it) on the disk, as `os.fsync` does a file's data."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in _CANNOT_SYNC_A_DIRECTORY:
            raise
    finally:
        os.close(descriptor)


def write_text_whole(path: str | os.PathLike[str], text: str) -> None:
    """Write `path` so that it holds either what it held or all of `text`, never a part (a full disk,
    a kill mid-write, a power loss): written beside it and synced to the disk, then renamed over it,
    and its directory synced. An OSError names `path`."""
    path = Path(path)
    aside = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with open(aside, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # a full disk that write() did not report (NFS, some FUSE) is raised here
        os.replace(aside, path)
        sync_directory(path.parent)
    except BaseException as error:
        aside.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename in (None, str(aside)):
            error.filename = str(path)  # the file meant, not the one beside it (a directory's error keeps its name)
            if error.filename2 == str(path):
                error.filename2 = None
        raise


@contextlib.contextmanager
def building(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh directory beside `final`; on success it replaces `final`, on failure it is removed.

    Writing aside in the same parent keeps the rename atomic on one filesystem.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
