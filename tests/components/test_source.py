"""Span patterns: which spans a run reads, in number or date order, and what a bad pattern gets."""
from __future__ import annotations

import json

import pytest

from components import source
from components.ingest import step as ingest
from components.spans import SpanPattern
from pipeline import config
from components.beam_run import BeamConfig
from components.errors import ConfigError, DataError
from tests.components.ingest.test_step import HEADER, penguin_rows
from tests.conftest import data_config


def write_spans(root, names, rows=20):
    for seed, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "part-0.csv").write_text(HEADER + penguin_rows(rows, seed=seed))


def test_the_newest_span_is_read_by_number_not_by_name(tmp_path):
    write_spans(tmp_path / "spans", ["1", "2", "9", "10"])
    (tmp_path / "spans" / "latest").mkdir()  # a folder the glob matches but that is no span
    (tmp_path / "spans" / "latest" / "part-0.csv").write_text(HEADER + penguin_rows(5))

    resolved = source.resolve(str(tmp_path / "spans" / "{SPAN}" / "*.csv"))

    assert resolved.spans == ("10",)
    assert [f.path for f in resolved.files] == [str(tmp_path / "spans" / "10" / "part-0.csv")]


def test_a_rolling_window_reads_the_newest_spans_and_ingest_records_them(tmp_path):
    write_spans(tmp_path / "spans", ["2026-01-30", "2026-02-01", "2026-01-31", "2025-12-31"], rows=30)
    cfg = data_config(tmp_path / "spans" / "{YYYY}-{MM}-{DD}" / "*.csv", span_window=3)

    result = ingest.run(cfg.data, BeamConfig(), tmp_path / "examples")

    assert result.spans == ("2026-01-30", "2026-01-31", "2026-02-01")
    assert result.counts["rows_read"] == 90
    manifest = json.loads((tmp_path / "examples" / "_manifest.json").read_text())
    assert manifest["spans"] == ["2026-01-30", "2026-01-31", "2026-02-01"]
    assert len(manifest["files"]) == 3


def test_named_spans_are_read_even_when_newer_ones_arrived(tmp_path):
    # What resolve-source chose is what ingest reads, whatever lands in between.
    write_spans(tmp_path / "spans", ["1", "2", "3"])
    cfg = data_config(tmp_path / "spans" / "{SPAN}" / "*.csv")
    result = ingest.run(cfg.data, BeamConfig(), tmp_path / "examples", spans=["2"])
    assert result.spans == ("2",) and result.counts["rows_read"] == 20


def test_a_pattern_whose_paths_hold_no_span_says_so(tmp_path):
    write_spans(tmp_path / "spans", ["latest"])
    with pytest.raises(DataError, match=r"matches no span: 1 file\(s\) match .*/spans/\*/\*\.csv, none with a span "
                                        r"number where the placeholder is"):
        source.resolve(str(tmp_path / "spans" / "{SPAN}" / "*.csv"))
    with pytest.raises(DataError, match="matches no files"):
        source.resolve(str(tmp_path / "nothing" / "{SPAN}" / "*.csv"))


def test_an_impossible_date_is_not_a_span():
    pattern = SpanPattern("/data/{YYYY}-{MM}-{DD}/x.csv")
    assert pattern.span_of("/data/2026-02-30/x.csv") is None
    assert pattern.span_of("/data/2026-02-28/x.csv").name == "2026-02-28"


@pytest.mark.parametrize("source, message", [
    ("/d/{DAY}/*.csv", r"unknown placeholder \{DAY\}"),
    ("/d/{YYYY}-{MM}/*.csv", r"lacks \{DD\}"),
    ("/d/{SPAN}/{YYYY}-{MM}-{DD}.csv", r"mixes \{SPAN\} with a date"),
    ("/d/{SPAN}/{SPAN}.csv", r"\{SPAN\} appears more than once"),
])
def test_bad_placeholders_are_config_errors(source, message):
    with pytest.raises(ConfigError, match=rf"data\.source: .*{message}"):
        config.from_dict({"data": {"source": source, "label": "species"}})


def test_a_window_without_spans_is_a_config_error():
    with pytest.raises(ConfigError, match=r"span_window 3 needs a span placeholder"):
        config.from_dict({"data": {"source": "/d/*.csv", "label": "species", "span_window": 3}})


def test_a_local_pattern_matches_as_beams_filesystems_do(tmp_path):
    from components.source import match

    (tmp_path / "2026" / "12").mkdir(parents=True)
    for name in ("2026/12/a.csv", "2026/b.csv", ".hidden.csv", "top.csv"):
        (tmp_path / name).write_text("x\n")
    found = [f.path for f in match(str(tmp_path / "**" / "*.csv"))]
    assert found == sorted(str(tmp_path / name) for name in ("2026/12/a.csv", "2026/b.csv", ".hidden.csv", "top.csv"))
