"""Data spans: a source pattern with a span placeholder, and which spans a run reads.

A source like `data/spans/{SPAN}/*.csv` or `gs://bucket/events/{YYYY}-{MM}-{DD}/*.parquet` names
one folder (or file) per span, as TFX's input patterns do. Spans are ordered by number or by date,
never by name: span 10 comes after span 9. A run reads the newest span, or the newest N
(`data.span_window`, a rolling window).

This module only parses and orders; listing files is `components.ingest`'s (through Beam's
filesystems, so the same pattern works on GCS or S3). It imports nothing heavy: the config
validates patterns with it.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

SPAN = "{SPAN}"
DATE_PARTS = ("{YYYY}", "{MM}", "{DD}")
_PLACEHOLDER = re.compile(r"\{[^{}/]*\}")
_GROUPS = {"{SPAN}": r"(?P<span>\d+)", "{YYYY}": r"(?P<year>\d{4})", "{MM}": r"(?P<month>\d{2})",
           "{DD}": r"(?P<day>\d{2})"}


@dataclass(frozen=True, order=True)
class Span:
    """One span: its place in the order, and its name as it appears in the paths."""

    key: tuple[int, ...]
    name: str


class SpanPattern:
    """A source with a `{SPAN}` placeholder, or `{YYYY}`, `{MM}` and `{DD}` together."""

    def __init__(self, source: str):
        self.source = source
        found = _PLACEHOLDER.findall(source)
        unknown = sorted({name for name in found if name not in _GROUPS})
        if unknown:
            raise ValueError(f"unknown placeholder {', '.join(unknown)} in the source {source!r}: use {SPAN} "
                             f"or {'-'.join(DATE_PARTS)}")
        repeated = sorted({name for name in found if found.count(name) > 1})
        if repeated:
            raise ValueError(f"the placeholder {', '.join(repeated)} appears more than once in {source!r}")
        dated = [part for part in DATE_PARTS if part in found]
        if SPAN in found and dated:
            raise ValueError(f"the source {source!r} mixes {SPAN} with a date: use one or the other")
        if dated and len(dated) != len(DATE_PARTS):
            missing = [part for part in DATE_PARTS if part not in found]
            raise ValueError(f"the date in the source {source!r} lacks {', '.join(missing)}: "
                             f"a date span needs {', '.join(DATE_PARTS)}")
        self.dated = bool(dated)
        self.has_spans = bool(found)
        self._regex = self._path_regex()

    @property
    def glob(self) -> str:
        """The pattern that lists every span's files."""
        return _PLACEHOLDER.sub("*", self.source)

    def _path_regex(self) -> re.Pattern[str]:
        """The source as a regex over listed paths, with a group for each placeholder."""
        pieces = []
        for piece in re.split(r"(\{[^{}/]*\}|\*\*|\*|\?)", self.source):
            if piece in _GROUPS:
                pieces.append(_GROUPS[piece])
            elif piece == "**":
                pieces.append(".*")
            elif piece == "*":
                pieces.append("[^/]*")
            elif piece == "?":
                pieces.append("[^/]")
            else:
                pieces.append(re.escape(piece))
        return re.compile("".join(pieces))

    def span_of(self, path: str) -> Span | None:
        """The span a listed path belongs to; None for a path that only the glob matches
        (e.g. `data/spans/latest/` where a number belongs)."""
        match = self._regex.search(path)
        if match is None:
            return None
        if not self.dated:
            return Span((int(match["span"]),), match["span"])
        year, month, day = int(match["year"]), int(match["month"]), int(match["day"])
        try:
            dt.date(year, month, day)
        except ValueError:
            return None
        return Span((year, month, day), f"{match['year']}-{match['month']}-{match['day']}")

    def of_span(self, name: str) -> str:
        """The source with one span filled in: the files of that span."""
        if not self.dated:
            return self.source.replace(SPAN, name)
        year, month, day = name.split("-")
        return self.source.replace("{YYYY}", year).replace("{MM}", month).replace("{DD}", day)


def newest(spans: set[Span] | list[Span], window: int) -> list[Span]:
    """The newest `window` spans, oldest first."""
    return sorted(set(spans))[-window:]
