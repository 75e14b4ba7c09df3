"""The input tune and train read: a split small enough is held in memory, a larger one streamed,
and both give the model the same rows, every row once an epoch, reshuffled each epoch, rows with a
label the train split never had left out."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from components.examples import split_files
from components.model import data
from components.transform import Transform


def rows(dataset) -> list[tuple]:
    """Every (features..., target) row of one pass over `dataset`, in order."""
    out = []
    for features, targets in dataset.as_numpy_iterator():
        columns = [features[key][:, 0] for key in sorted(features)]
        out += list(zip(*columns, targets.tolist(), strict=True))
    return out


@pytest.fixture(scope="module")
def transform(penguin_inputs) -> Transform:
    return Transform.read(penguin_inputs.transform)


@pytest.fixture(params=["in memory", "streamed"])
def way(request, monkeypatch) -> str:
    if request.param == "streamed":
        monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)
    return request.param


def test_the_penguins_are_read_once_into_memory_and_a_split_over_the_budget_every_epoch(penguin_inputs, transform,
                                                                                        monkeypatch):
    reads = []
    real = data._feature_arrays
    monkeypatch.setattr(data, "_feature_arrays", lambda batch, t: reads.append(batch.num_rows) or real(batch, t))
    rows_in_split = pq.read_table(split_files(penguin_inputs.examples, "train")).num_rows

    held = data.dataset(penguin_inputs.examples, "train", transform, 32, shuffle=True, seed=1)
    assert held.cardinality().numpy() == -(-rows_in_split // 32)  # a known length: batches of the rows held
    rows(held), rows(held)
    assert sum(reads) == rows_in_split

    reads.clear()
    monkeypatch.setattr(data, "IN_MEMORY_BYTES", data._tensor_bytes(rows_in_split, transform, True) - 1)
    streamed = data.dataset(penguin_inputs.examples, "train", transform, 32, shuffle=True, seed=1)
    rows(streamed), rows(streamed)
    assert sum(reads) == 2 * rows_in_split


def test_both_ways_give_every_row_of_the_split_in_its_order_with_its_label_index(penguin_inputs, transform, way):
    table = pq.read_table(split_files(penguin_inputs.examples, "eval")).to_pylist()
    got = rows(data.dataset(penguin_inputs.examples, "eval", transform, 16))
    assert len(got) == len(table) > 0
    keys = sorted(feature.key for feature in transform.features)
    names = {feature.key: feature.name for feature in transform.features}
    for row, original in zip(got, table, strict=True):
        assert row[-1] == transform.label_vocabulary.index(original[transform.label])
        for key, value in zip(keys, row[:-1], strict=True):
            expected = original[names[key]]
            if isinstance(value, bytes):
                assert value.decode() == (expected or "")
            elif expected is None:
                assert np.isnan(value)
            else:
                assert value == pytest.approx(expected)


def test_a_shuffled_split_gives_every_row_once_an_epoch_in_a_new_order_the_seed_repeats(penguin_inputs,
                                                                                          transform, way):
    def passes(dataset, count: int) -> list[list[str]]:
        # Rows as text: a missing value is NaN, which equals nothing, not even itself.
        return [[repr(row) for row in rows(dataset)] for _ in range(count)]

    [unshuffled] = passes(data.dataset(penguin_inputs.examples, "train", transform, 32), 1)
    first, second = passes(data.dataset(penguin_inputs.examples, "train", transform, 32, shuffle=True, seed=7), 2)
    assert sorted(first) == sorted(second) == sorted(unshuffled)
    assert first != second and first != unshuffled and second != unshuffled
    [again] = passes(data.dataset(penguin_inputs.examples, "train", transform, 32, shuffle=True, seed=7), 1)
    assert again == first


def test_rows_of_a_class_the_train_split_never_had_are_left_out_and_said_once(penguin_inputs, transform, way,
                                                                                caplog):
    dropped = transform.label_vocabulary[-1]
    narrower = dataclasses.replace(transform, label_vocabulary=transform.label_vocabulary[:-1])
    table = pq.read_table(split_files(penguin_inputs.examples, "eval")).to_pylist()
    expected = sum(row[transform.label] != dropped for row in table)
    assert 0 < expected < len(table)
    with caplog.at_level(logging.WARNING, logger="tunepipe.model"):
        dataset = data.dataset(penguin_inputs.examples, "eval", narrower, 16)
        assert len(rows(dataset)) == expected
        assert len(rows(dataset)) == expected
    unknown = len(table) - expected
    assert [record.getMessage() for record in caplog.records] == [
        f"eval split: {unknown} row(s) have a label the train split does not have; they are left out"]


def test_a_regression_label_is_its_value_and_a_binary_one_is_whether_it_is_the_positive_class(
        penguin_inputs, diabetes_inputs, transform, way):
    def read(inputs, problem: Transform) -> list[tuple]:
        dataset = data.dataset(inputs.examples, "eval", problem, 16)
        assert (dataset.cardinality().numpy() >= 0) == (way == "in memory")  # held: a known length
        return rows(dataset)

    regression = Transform.read(diabetes_inputs.transform)
    table = pq.read_table(split_files(diabetes_inputs.examples, "eval")).to_pylist()
    got = read(diabetes_inputs, regression)
    assert regression.kind == "regression" and len(got) == len(table) > 0
    assert [row[-1] for row in got] == [[pytest.approx(original[regression.label])] for original in table]

    # Positive the first class: not the default (the second) a forgotten `positive_class` would give.
    positive = transform.label_vocabulary[0]
    binary = dataclasses.replace(transform, label_vocabulary=transform.label_vocabulary[:2], positive_class=positive)
    table = pq.read_table(split_files(penguin_inputs.examples, "eval")).to_pylist()
    got = read(penguin_inputs, binary)
    expected = [[float(original[transform.label] == positive)] for original in table
                if original[transform.label] in binary.label_vocabulary]
    assert binary.kind == "binary" and len(got) == len(expected) < len(table)
    assert [row[-1] for row in got] == expected and {value for [value] in expected} == {0.0, 1.0}
