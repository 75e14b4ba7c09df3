"""The ingest step on small tables: splitting, rejects, statistics and every kind of bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from components import artifacts
from components.beam_run import BeamConfig
from components.examples import REJECTS_DIR, SPLITS, STATISTICS_FILE, split_files
from components.errors import ConfigError, DataError
from components.ingest import step as ingest
from components.schema import Schema
from tests.conftest import PENGUINS, data_config

BEAM = BeamConfig()
HEADER = "species,island,bill_length_mm,body_mass_g\n"


def penguin_rows(count: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    species = rng.choice(["Adelie", "Gentoo", "Chinstrap"], count)
    island = rng.choice(["Biscoe", "Dream", "Torgersen"], count)
    return "".join(f"{s},{i},{rng.normal(44, 5):.2f},{rng.integers(2700, 6300)}\n"
                   for s, i in zip(species, island))


def rows_by_split(examples: Path) -> dict[tuple, str]:
    located = {}
    for split in SPLITS:
        for path in split_files(examples, split):
            for row in pq.read_table(path).to_pylist():
                located[tuple(row.values())] = split
    return located


def no_partial_left(parent: Path) -> bool:
    return not any(".partial-" in path.name for path in parent.iterdir())


def test_penguins_are_split_with_schema_statistics_and_manifest(tmp_path):
    out = tmp_path / "examples"
    result = ingest.run(data_config(PENGUINS, features={"exclude": ["year"]}).data, BEAM, out)

    assert result.counts["rows_read"] == 344
    assert result.counts["rejected"] == 0
    assert result.counts["missing_label"] == 0
    assert sum(result.counts["splits"].values()) == 344
    schema = Schema.read(out)
    assert schema.label.name == "species"
    assert [c.name for c in schema.features] == ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm",
                                                 "body_mass_g", "sex"]
    assert schema.kinds()["bill_length_mm"] == "numeric" and schema.kinds()["sex"] == "categorical"
    assert schema.kinds()["year"] == "numeric"  # kept as a passthrough column
    manifest = artifacts.read_manifest(out, "examples")
    assert manifest["digest"] == artifacts.digest_tree(out) == result.digest


def test_statistics_equal_pyarrow_over_the_written_split(tmp_path):
    out = tmp_path / "examples"
    ingest.run(data_config(PENGUINS).data, BEAM, out)
    statistics = json.loads((out / STATISTICS_FILE).read_text())
    train = pq.read_table(split_files(out, "train"))

    body_mass = statistics["splits"]["train"]["columns"]["body_mass_g"]
    values = train["body_mass_g"].drop_null().to_numpy()
    assert body_mass["count"] == len(values)
    assert body_mass["missing"] == train["body_mass_g"].null_count
    assert body_mass["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert body_mass["std"] == pytest.approx(values.std(), rel=1e-9)
    assert (body_mass["min"], body_mass["max"]) == (values.min(), values.max())

    island = statistics["splits"]["train"]["columns"]["island"]
    counted = pc.value_counts(train["island"].drop_null()).to_pylist()
    assert {item["value"]: item["count"] for item in island["values"]} == {c["values"]: c["counts"] for c in counted}
    assert statistics["counts"]["splits"]["train"] == train.num_rows


def test_same_row_same_split_across_reruns_and_appends(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text(HEADER + penguin_rows(2000, seed=1))
    ingest.run(data_config(source).data, BEAM, tmp_path / "first")
    ingest.run(data_config(source).data, BEAM, tmp_path / "again")
    with source.open("a") as handle:
        handle.write(penguin_rows(1000, seed=2))
    ingest.run(data_config(source).data, BEAM, tmp_path / "appended")

    first = rows_by_split(tmp_path / "first")
    assert rows_by_split(tmp_path / "again") == first
    appended = rows_by_split(tmp_path / "appended")
    assert len(appended) == 3000
    assert all(appended[row] == split for row, split in first.items())
    train_share = sum(split == "train" for split in appended.values()) / len(appended)
    assert 0.77 < train_share < 0.83


def test_same_rows_split_the_same_from_parquet_as_from_csv(tmp_path):
    csv = tmp_path / "table.csv"
    csv.write_text(HEADER + penguin_rows(500, seed=3))
    parquet = tmp_path / "table.parquet"
    pq.write_table(pacsv.read_csv(csv), parquet)
    ingest.run(data_config(csv).data, BEAM, tmp_path / "from_csv")
    ingest.run(data_config(parquet).data, BEAM, tmp_path / "from_parquet")
    assert rows_by_split(tmp_path / "from_csv") == rows_by_split(tmp_path / "from_parquet")


def test_hash_key_columns_decide_the_split(tmp_path):
    source = tmp_path / "table.csv"
    # Two rows that differ only outside the key must land together.
    source.write_text(HEADER + "".join(f"Adelie,Dream,{i}.0,{3000 + k}\n" for i in range(300) for k in range(2)))
    config = data_config(source, split={"train": 0.5, "eval": 0.5, "hash_key": ["bill_length_mm"]})
    ingest.run(config.data, BEAM, tmp_path / "examples")
    located = rows_by_split(tmp_path / "examples")
    for i in range(300):
        assert located[("Adelie", "Dream", float(i), 3000.0)] == located[("Adelie", "Dream", float(i), 3001.0)]


def test_test_split_is_written_when_configured(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text(HEADER + penguin_rows(1000))
    result = ingest.run(data_config(source, split={"train": 0.6, "eval": 0.2, "test": 0.2}).data, BEAM,
                        tmp_path / "examples")
    assert set(result.counts["splits"]) == {"train", "eval", "test"}
    assert 150 < result.counts["splits"]["test"] < 250
    assert pq.read_table(split_files(tmp_path / "examples", "test")).num_rows == result.counts["splits"]["test"]


def test_unparseable_rows_go_to_rejects_with_a_reason(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text(HEADER + penguin_rows(300) + "Adelie,Dream,41.0\n" + "Gentoo,Biscoe,heavy,5000\n"
                      + "NA,Dream,40.0,3000\n")
    result = ingest.run(data_config(source, max_reject_fraction=0.05).data, BEAM, tmp_path / "examples")

    assert result.counts == {"rows_read": 303, "rejected": 2, "missing_label": 1,
                             "splits": result.counts["splits"]}
    assert sum(result.counts["splits"].values()) == 300
    rejects = [json.loads(line) for path in (tmp_path / "examples" / REJECTS_DIR).glob("*.jsonl")
               for line in path.read_text().splitlines()]
    reasons = sorted(reject["reason"] for reject in rejects)
    assert reasons == ["column 'bill_length_mm': 'heavy' is not a number", "expected 4 fields, found 3"]
    assert all(reject["file"] == str(source) for reject in rejects)


def test_too_many_rejects_fail_and_leave_no_artifact(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text(HEADER + penguin_rows(100) + "Gentoo,Biscoe,heavy,5000\n" * 5)
    out = tmp_path / "examples"
    with pytest.raises(DataError, match=r"5 of 105 rows cannot be parsed .*max_reject_fraction=0.01.*'heavy'"):
        ingest.run(data_config(source).data, BEAM, out)
    assert not out.exists()
    assert no_partial_left(tmp_path)
    kept = tmp_path / "examples-rejected-rows.jsonl"
    assert len(kept.read_text().splitlines()) == 5


def test_a_failed_rerun_keeps_the_previous_artifact(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text(HEADER + penguin_rows(100))
    out = tmp_path / "examples"
    ingest.run(data_config(source).data, BEAM, out)
    digest = artifacts.read_manifest(out, "examples")["digest"]
    source.write_text(HEADER)
    with pytest.raises(DataError):
        ingest.run(data_config(source).data, BEAM, out)
    assert artifacts.read_manifest(out, "examples")["digest"] == digest == artifacts.digest_tree(out)


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "the file is empty"),
    ("header.csv", HEADER.encode(), "no data rows"),
    ("nolabel.csv", b"island,bill_length_mm\nDream,40\n", "no label column 'species'"),
    ("unlabelled.csv", (HEADER + "NA,Dream,40,3000\n,Biscoe,41,3100\n").encode(), "'species' is missing on every row"),
    ("latin1.csv", (HEADER + penguin_rows(2000)).encode() + "Adelie,Dr\u00e9am,40,3000\n".encode("latin-1"),
     "not valid UTF-8"),
])
def test_bad_tables_fail_with_one_line_naming_the_file(tmp_path, name, content, message):
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / "examples"
    with pytest.raises(DataError) as error:
        ingest.run(data_config(source).data, BEAM, out)
    text = str(error.value)
    assert message in text and str(source) in text
    assert "\n" not in text and "[while running" not in text
    assert not out.exists() and no_partial_left(tmp_path)


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match=f"the data source {tmp_path}/missing.csv does not exist"):
        ingest.run(data_config(tmp_path / "missing.csv").data, BEAM, tmp_path / "examples")
    with pytest.raises(DataError, match=r"pattern .*\*\.csv matches no files"):
        ingest.run(data_config(tmp_path / "*.csv").data, BEAM, tmp_path / "examples")


def test_files_with_different_columns_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text(HEADER + penguin_rows(10))
    (tmp_path / "b.csv").write_text("species,island\nAdelie,Dream\n")
    with pytest.raises(DataError, match=r"b\.csv: columns .* differ"):
        ingest.run(data_config(tmp_path / "*.csv").data, BEAM, tmp_path / "examples")


def test_a_glob_reads_every_matching_file(tmp_path):
    (tmp_path / "part-1.csv").write_text(HEADER + penguin_rows(120, seed=5))
    (tmp_path / "part-2.csv").write_text(HEADER + penguin_rows(80, seed=6))
    result = ingest.run(data_config(tmp_path / "part-*.csv").data, BEAM, tmp_path / "examples")
    assert result.counts["rows_read"] == 200


def test_config_naming_a_column_the_data_lacks(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text(HEADER + penguin_rows(10))
    with pytest.raises(DataError, match="columns the data does not have: beak"):
        ingest.run(data_config(source, features={"exclude": ["beak"]}).data, BEAM, tmp_path / "examples")


def test_feature_types_can_be_overridden(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text(HEADER + penguin_rows(50))
    result = ingest.run(data_config(source, features={"types": {"body_mass_g": "categorical"}}).data, BEAM,
                        tmp_path / "examples")
    assert result.schema.kinds()["body_mass_g"] == "categorical"
    table = pq.read_table(split_files(tmp_path / "examples", "train"))
    assert table.schema.field("body_mass_g").type == pa.string()


def test_wrong_type_in_the_data_section_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.max_reject_fraction"):
        data_config("x.csv", max_reject_fraction="some")


def test_duplicate_column_names_are_one_line_naming_them(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text("species,island,mass,mass\nAdelie,Dream,1,2\nGentoo,Biscoe,3,4\n")
    with pytest.raises(DataError) as raised:
        ingest.run(data_config(source).data, BEAM, tmp_path / "examples")
    assert str(raised.value) == (f"{source}: duplicate column names: 'mass' in columns 3, 4 (each column needs its "
                                 f"own name)")
    assert not (tmp_path / "examples").exists()


def test_a_regression_on_a_text_label_is_refused(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text(HEADER + penguin_rows(50))
    with pytest.raises(DataError, match="data.problem_type is regression, but the label 'species' holds text "
                                        "\\(e.g. '(Adelie|Gentoo|Chinstrap)'\\)"):
        ingest.run(data_config(source, problem_type="regression").data, BEAM, tmp_path / "examples")


def test_a_numeric_label_with_few_whole_values_is_classification_and_the_decision_is_recorded(tmp_path):
    source = tmp_path / "table.csv"
    rng = np.random.default_rng(0)
    source.write_text("rating,size\n" + "".join(f"{rng.integers(1, 6)},{rng.normal():.3f}\n" for _ in range(300)))
    result = ingest.run(data_config(source, label="rating").data, BEAM, tmp_path / "auto")
    assert result.problem.type == "classification"
    assert result.problem.reason == "auto: 5 distinct whole numbers (at most 10 make classes)"
    schema = Schema.read(tmp_path / "auto")
    assert (schema.problem_type, schema.problem_reason) == ("classification", result.problem.reason)
    assert artifacts.read_manifest(tmp_path / "auto", "examples")["problem_type"] == "classification"
    forced = ingest.run(data_config(source, label="rating", problem_type="regression").data, BEAM,
                        tmp_path / "forced")
    assert (forced.problem.type, forced.problem.reason) == ("regression", "configured")
