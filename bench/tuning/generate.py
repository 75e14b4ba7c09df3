"""A generated tabular classification table that is harder than the penguins: the classes depend on
interactions and non-linear functions of the features (a linear model cannot separate them), two
features are noise, categorical effects interact with a numeric feature, some values are missing
and labels carry noise. Used by bench/tuning/run.py; deterministic for a given seed.

    uv run python bench/tuning/generate.py out.csv --rows 8000 --seed 7
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CLASSES = ("north", "east", "south", "west")
REGIONS = ("r1", "r2", "r3", "r4", "r5", "r6")
CHANNELS = ("web", "store", "phone", "partner")
MISSING_SHARE = 0.03
LABEL_NOISE = 0.35


def generate(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6))
    region = rng.integers(len(REGIONS), size=rows)
    channel = rng.integers(len(CHANNELS), size=rows)
    region_effect = rng.normal(scale=1.2, size=len(REGIONS))
    channel_slope = rng.normal(scale=1.5, size=len(CHANNELS))
    scores = np.stack([
        1.5 * x[:, 0] * x[:, 1],                            # an interaction
        np.sin(2.0 * x[:, 2]) + 0.6 * x[:, 3],              # a periodic effect
        x[:, 0] ** 2 + x[:, 2] ** 2 - 1.4,                  # a ring
        region_effect[region] + channel_slope[channel] * x[:, 3],  # categories changing a slope
    ], axis=1)
    # Gumbel noise on the scores: the label is a draw from a softmax, so even the best model errs.
    noisy = scores + LABEL_NOISE * rng.gumbel(size=scores.shape)
    label = np.asarray(CLASSES)[noisy.argmax(axis=1)]
    columns = {f"x{index}": x[:, index].round(4) for index in range(6)}  # x4 and x5 are noise
    columns["region"] = np.asarray(REGIONS)[region]
    columns["channel"] = np.asarray(CHANNELS)[channel]
    table = {name: pa.array(values) for name, values in columns.items()}
    for name in ("x1", "channel"):
        missing = rng.random(rows) < MISSING_SHARE
        table[name] = pa.array(np.where(missing, None, columns[name]).tolist(), type=table[name].type)
    table["label"] = pa.array(label)
    return pa.table(table)


def write(path: str | Path, rows: int = 8000, seed: int = 7) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(generate(rows, seed), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(write(args.out, args.rows, args.seed))


if __name__ == "__main__":
    main()
