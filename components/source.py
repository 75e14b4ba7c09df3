"""The resolve-source step: which files a run reads, and a fingerprint of them.

A source is a path, glob or URI (local: the standard library lists it; gs://, s3://, ...: Beam's
filesystems do, imported only for them), optionally with
a span placeholder (`components.spans`): then the newest `data.span_window` spans are chosen. The
fingerprint (names, sizes, modification times) is what lets the ingest step's cache see new data
under the same pattern (kubeflow/pipelines#3432), so this step is never cached itself.
"""
from __future__ import annotations

import glob
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from components.errors import DataError
from components.spans import SpanPattern, newest


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    modified: float


@dataclass(frozen=True)
class ResolvedSource:
    """What a run reads: the spans chosen (empty when the source has no span placeholder) and their files."""

    spans: tuple[str, ...]
    files: list[SourceFile]

    @property
    def fingerprint(self) -> str:
        """Names, sizes and modification times of the files: a cache key that changes with the data."""
        digest = hashlib.sha256()
        for source_file in self.files:
            digest.update(f"{source_file.path}\0{source_file.size}\0{source_file.modified}\n".encode())
        return "files:" + digest.hexdigest()[:32]


def match(source: str) -> list[SourceFile]:
    """The files a path, glob or URI names, sorted; DataError when there are none."""
    files = _match_remote(source) if "://" in source else _match_local(source)
    if not files:
        if _is_pattern(source):
            raise DataError(f"the data source pattern {source} matches no files")
        raise DataError(f"the data source {source} does not exist")
    return sorted(files, key=lambda f: f.path)


def _is_pattern(source: str) -> bool:
    return any(char in source for char in "*?[")


def _match_local(source: str) -> list[SourceFile]:
    path = source.removeprefix("file://")
    try:
        # As Beam's filesystems match a URI: `**` crosses folders, hidden files count.
        if _is_pattern(path):
            names = glob.glob(path, recursive=True, include_hidden=True)
        else:
            names = [path] if os.path.exists(path) else []
        found = [(name, os.stat(name)) for name in names]
    except OSError as error:
        raise DataError(f"cannot list the data source {source}: {error.strerror}") from None
    return [SourceFile(os.path.abspath(name), status.st_size, status.st_mtime)
            for name, status in found if stat.S_ISREG(status.st_mode)]


def _match_remote(source: str) -> list[SourceFile]:
    from apache_beam.io.filesystems import FileSystems

    try:
        results = FileSystems.match([source])
    except Exception as error:  # Beam raises its own BeamIOError with a nested dict of causes
        raise DataError(f"cannot list the data source {source}: {error}") from None
    return [SourceFile(m.path, m.size_in_bytes, m.last_updated_in_seconds)
            for result in results for m in result.metadata_list
            if not m.path.endswith("/")]


def open_file(path: str) -> BinaryIO:
    """A file of a source for reading: a local one with the standard library, a URI with Beam's filesystems."""
    if "://" not in path or path.startswith("file://"):
        return open(path.removeprefix("file://"), "rb")
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)


def resolve(source: str, span_window: int = 1, spans: Sequence[str] | None = None) -> ResolvedSource:
    """The files of the newest `span_window` spans of `source` (or of the named `spans`), or of the
    source itself when it has no span placeholder."""
    pattern = SpanPattern(source)
    if not pattern.has_spans:
        return ResolvedSource((), match(source))
    if spans is None:
        listed = match(pattern.glob)
        found = {span for span in map(pattern.span_of, (f.path for f in listed)) if span is not None}
        if not found:
            raise DataError(f"the data source pattern {source} matches no span: {len(listed)} file(s) match "
                            f"{pattern.glob}, none with a {'date' if pattern.dated else 'span number'} where the "
                            f"placeholder is")
        spans = [span.name for span in newest(found, span_window)]
    files = sorted({f for span in spans for f in match(pattern.of_span(span))}, key=lambda f: f.path)
    return ResolvedSource(tuple(spans), files)
