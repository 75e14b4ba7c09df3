"""The preprocess step: analyzers over the train split, and the Keras layers built from them."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from components import transform
from components.beam_run import BeamConfig
from components.examples import split_files
from components.errors import DataError
from components.ingest import step as ingest
from components.model.preprocessing import build_preprocessing
from components.preprocess import step as preprocess
from components.preprocess.config import PreprocessConfig
from tests.conftest import PENGUINS, data_config

BEAM = BeamConfig()


@pytest.fixture(scope="module")
def penguin_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("preprocess")
    ingest.run(data_config(PENGUINS, features={"exclude": ["year"]}).data, BEAM, root / "examples")
    result = preprocess.run(root / "examples", root / "transform", PreprocessConfig(), BEAM)
    train = pq.read_table(split_files(root / "examples", "train"))
    return root, result, train


def test_numeric_analyzers_equal_numpy_over_the_train_split(penguin_artifacts):
    _, result, train = penguin_artifacts
    for feature in result.transform.features:
        if feature.kind != "numeric":
            continue
        values = train[feature.name].drop_null().to_numpy()
        assert feature.mean == pytest.approx(values.mean(), rel=1e-12)
        assert feature.variance == pytest.approx(values.var(), rel=1e-9)
        assert feature.fill_value == feature.mean


def test_vocabularies_are_the_train_values_most_frequent_first(penguin_artifacts):
    _, result, train = penguin_artifacts
    island = next(f for f in result.transform.features if f.name == "island")
    counted = sorted(((c["counts"], c["values"]) for c in pc.value_counts(train["island"].drop_null()).to_pylist()),
                     key=lambda item: (-item[0], item[1]))
    assert list(zip(island.counts, island.vocabulary)) == counted
    assert island.encoding == "one_hot"
    assert result.transform.label_vocabulary == ("Adelie", "Chinstrap", "Gentoo")
    assert result.transform.train_rows == train.num_rows


def test_transform_artifact_round_trips(penguin_artifacts):
    root, result, _ = penguin_artifacts
    assert transform.Transform.read(root / "transform") == result.transform
    assert json.loads((root / "transform" / transform.TRANSFORM_FILE).read_text())["label"]["name"] == "species"


def test_only_the_train_split_is_analyzed(tmp_path):
    source = tmp_path / "table.csv"
    rows = "".join(f"{'a' if i % 2 else 'b'},{i}\n" for i in range(400))
    source.write_text("species,x\n" + rows)
    ingest.run(data_config(source).data, BEAM, tmp_path / "examples")
    result = preprocess.run(tmp_path / "examples", tmp_path / "transform", PreprocessConfig(), BEAM)
    train = pq.read_table(split_files(tmp_path / "examples", "train"))
    everything = pq.read_table(split_files(tmp_path / "examples", "train")
                               + split_files(tmp_path / "examples", "eval"))
    assert result.transform.features[0].mean == pytest.approx(train["x"].to_numpy().mean())
    assert result.transform.features[0].mean != pytest.approx(everything["x"].to_numpy().mean())


def test_large_vocabularies_are_cut_to_top_k_and_embedded(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text("species,code\n" + "".join(f"{'a' if i % 3 else 'b'},c{i % 50}\n" for i in range(2000)))
    ingest.run(data_config(source).data, BEAM, tmp_path / "examples")
    config = PreprocessConfig(vocabulary_top_k=20, embedding_threshold=10)
    code = preprocess.run(tmp_path / "examples", tmp_path / "transform", config, BEAM).transform.features[0]
    assert len(code.vocabulary) == 20
    assert code.encoding == "embedding"


def test_a_classifier_needs_two_classes(tmp_path):
    source = tmp_path / "table.csv"
    source.write_text("species,x\n" + "".join(f"a,{i}\n" for i in range(50)))
    ingest.run(data_config(source).data, BEAM, tmp_path / "examples")
    with pytest.raises(DataError, match="a classifier needs two or more"):
        preprocess.run(tmp_path / "examples", tmp_path / "transform", PreprocessConfig(), BEAM)
    assert not (tmp_path / "transform").exists()


def test_input_that_is_not_an_examples_artifact(tmp_path):
    (tmp_path / "examples").mkdir()
    with pytest.raises(DataError, match="is not a complete examples artifact"):
        preprocess.run(tmp_path / "examples", tmp_path / "transform", PreprocessConfig(), BEAM)


def test_keras_layers_encode_as_the_analyzers_say(penguin_artifacts):
    import keras
    import tensorflow as tf

    _, result, train = penguin_artifacts
    transform = result.transform
    inputs, encoded = build_preprocessing(transform)
    model = keras.Model(inputs, encoded)

    def column(name, kind):
        values = train[name].to_pylist()
        if kind == "numeric":
            return tf.constant([[np.nan if v is None else v] for v in values], dtype=tf.float32)
        return tf.constant([["" if v is None else v] for v in values])

    batch = {f.name: column(f.name, f.kind) for f in transform.features}
    output = np.asarray(model(batch))
    # Feature order: island one-hot (1 OOV + 3), 4 numeric, sex one-hot (1 OOV + 2).
    assert output.shape == (train.num_rows, 4 + 4 + 3)
    numeric = output[:, 4:8]
    present = ~np.isnan(np.asarray(batch["bill_length_mm"])[:, 0])
    assert np.abs(numeric[present].mean(axis=0)).max() < 1e-4
    assert np.allclose(numeric[present].std(axis=0), 1.0, atol=1e-3)

    unseen = {f.name: (tf.constant([[np.nan]], dtype=tf.float32) if f.kind == "numeric"
                       else tf.constant([["Atlantis"]])) for f in transform.features}
    row = np.asarray(model(unseen))[0]
    assert row[0] == 1 and row[1:4].sum() == 0          # unseen island -> out-of-vocabulary
    assert np.allclose(row[4:8], 0.0, atol=1e-6)         # missing numbers -> the mean -> 0 after normalizing
