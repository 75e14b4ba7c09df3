"""Write an N-row, penguins-like CSV for the ingest/preprocess benchmark.

Same columns and text format as data/penguins/penguins.csv:

    species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year

Species in the real proportions (Adelie 44%, Gentoo 36%, Chinstrap 20%), each on its own islands;
measurements drawn per species and sex around the real group means, with the real within-species
correlation (one shared "size" factor); about 0.6% of rows without any measurement and about 3%
without a sex, written as `NA` like the original. Vectorized with numpy and written by pyarrow, so a
million rows take a second or two. The same seed gives the same file.

    uv run python -m bench.ingest_preprocess.generate --rows 1000000 --out /tmp/penguins-1m.csv
    uv run python bench/ingest_preprocess/generate.py --rows 20000 --out /tmp/penguins-20k.csv
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

COLUMNS = ("species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex", "year")
SPECIES = ("Adelie", "Chinstrap", "Gentoo")
SPECIES_SHARE = (152 / 344, 68 / 344, 124 / 344)
# Island shares per species, in the order of ISLANDS (from the real table).
ISLANDS = ("Biscoe", "Dream", "Torgersen")
ISLAND_SHARE = {"Adelie": (44 / 152, 56 / 152, 52 / 152), "Chinstrap": (0.0, 1.0, 0.0), "Gentoo": (1.0, 0.0, 0.0)}
MEASUREMENTS = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")
# Group means per (species, sex) and within-group standard deviations, from the real table.
MEANS = {
    ("Adelie", "female"): (37.3, 17.6, 187.8, 3368.8), ("Adelie", "male"): (40.4, 19.1, 192.4, 4043.5),
    ("Chinstrap", "female"): (46.6, 17.6, 191.7, 3527.2), ("Chinstrap", "male"): (51.1, 19.3, 199.9, 3939.0),
    ("Gentoo", "female"): (45.6, 14.2, 212.7, 4679.7), ("Gentoo", "male"): (49.5, 15.7, 221.5, 5484.8),
}
STD = (2.2, 0.8, 5.5, 300.0)
# Decimals as printed in the original: bills in tenths of a mm, flippers in mm, mass to 25 g.
ROUND_TO = (0.1, 0.1, 1.0, 25.0)
MISSING_MEASUREMENTS = 0.006
MISSING_SEX = 0.03
# Share of a measurement's variance that comes from the shared size factor (with sex, correlation ~0.5).
SHARED = 0.3


def penguins(rows: int, seed: int = 0) -> pa.Table:
    """The synthetic table, typed as the CSV will be read back (numbers with nulls, strings with nulls)."""
    rng = np.random.default_rng(seed)
    species_index = rng.choice(len(SPECIES), size=rows, p=SPECIES_SHARE)
    male = rng.random(rows) < 0.5
    island_index = np.empty(rows, dtype=np.int64)
    for index, name in enumerate(SPECIES):
        rows_of = np.flatnonzero(species_index == index)
        island_index[rows_of] = rng.choice(len(ISLANDS), size=rows_of.size, p=ISLAND_SHARE[name])
    size = rng.standard_normal(rows)
    group_means = np.array([[MEANS[(name, sex)] for sex in ("female", "male")] for name in SPECIES])  # (3, 2, 4)
    means = group_means[species_index, male.astype(np.int64)]  # (rows, 4)
    noise = np.sqrt(SHARED) * size[:, None] + np.sqrt(1 - SHARED) * rng.standard_normal((rows, len(MEASUREMENTS)))
    values = means + noise * np.array(STD)
    values = np.round(values / np.array(ROUND_TO)) * np.array(ROUND_TO)
    no_measurements = rng.random(rows) < MISSING_MEASUREMENTS
    no_sex = no_measurements | (rng.random(rows) < MISSING_SEX)
    year = rng.integers(2007, 2010, size=rows)

    columns: dict[str, pa.Array] = {
        "species": pa.DictionaryArray.from_arrays(pa.array(species_index, pa.int8()), list(SPECIES)).cast(pa.string()),
        "island": pa.DictionaryArray.from_arrays(pa.array(island_index, pa.int8()), list(ISLANDS)).cast(pa.string()),
    }
    for position, name in enumerate(MEASUREMENTS):
        column = values[:, position]
        if ROUND_TO[position] >= 1:
            columns[name] = pa.array(column.astype(np.int64), mask=no_measurements)
        else:
            # Round again after the scaling so the text is "39.1", not "39.099999999999994".
            columns[name] = pa.array(np.round(column, 1), mask=no_measurements)
    sex = pa.DictionaryArray.from_arrays(pa.array(male.astype(np.int8)), ["female", "male"]).cast(pa.string())
    columns["sex"] = pc.if_else(pa.array(no_sex), pa.scalar(None, pa.string()), sex)
    columns["year"] = pa.array(year)
    return pa.table(columns)


def write_csv(table: pa.Table, out: str | Path) -> None:
    """As text, nulls as `NA` and no quotes, like the original file."""
    text = pa.table({name: pc.fill_null(table.column(name).cast(pa.string()), "NA") for name in table.column_names})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(text, out, write_options=pacsv.WriteOptions(quoting_style="none", quoting_header="none",
                                                                  batch_size=65_536))


def generate(rows: int, out: str | Path, seed: int = 0) -> Path:
    write_csv(penguins(rows, seed), out)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="number of data rows")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    started = time.perf_counter()
    path = generate(args.rows, args.out, args.seed)
    print(f"wrote {args.rows:,} rows to {path} ({path.stat().st_size / 1e6:.1f} MB) "
          f"in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
