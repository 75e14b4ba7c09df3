"""Exporting a trained model for serving: a SavedModel with the tf.Example and raw-feature
signatures of the serving contract (`components.serving`). Preprocessing lives inside the model, so a
client sends raw feature values and missing or unseen ones are handled as in training.

A missing feature may come either way TF Serving clients send it, as TFX expects: the key left out
of the tf.Example, or present with an empty value list. Both parse to the value a missing one has in
training (NaN for a number, "" for a category). tf.Example keys are the columns' own names; the
raw-tensor signature names its inputs by the columns' internal names (TF allows only ASCII letters,
digits and `_.-/` there), listed with the columns' names in the model's `features.json`.
"""
from __future__ import annotations

import math
import os

from components.problem import REGRESSION
from components.schema import NUMERIC
from components.serving import (CLASSES, EXAMPLES_INPUT, PREDICTIONS, PROBABILITIES, RAW_SIGNATURE,
                                SERVING_SIGNATURE)
from components.transform import Transform


def _parse(examples, transform: Transform) -> dict:
    """Serialized tf.Examples as the model's input tensors ([batch, 1] each, by internal name)."""
    import tensorflow as tf

    spec = {feature.name: tf.io.RaggedFeature(tf.float32 if feature.kind == NUMERIC else tf.string)
            for feature in transform.features}
    parsed = tf.io.parse_example(examples, spec)
    return {feature.key: parsed[feature.name].to_tensor(default_value=math.nan if feature.kind == NUMERIC else "",
                                                        shape=[None, 1])
            for feature in transform.features}


def _outputs(keras_model, transform: Transform):
    """The signature outputs for the transform's kind of problem (`components.serving`)."""
    import tensorflow as tf

    if transform.kind == REGRESSION:
        return lambda features: {PREDICTIONS: tf.squeeze(keras_model(features, training=False), axis=-1)}
    classes = tf.constant(list(transform.label_vocabulary))
    if transform.kind == "binary":
        positive = transform.positive_index

        def binary(features):
            probability = keras_model(features, training=False)  # of the positive class, [batch, 1]
            columns = [1.0 - probability, probability] if positive == 1 else [probability, 1.0 - probability]
            probabilities = tf.concat(columns, axis=-1)
            return {PROBABILITIES: probabilities, CLASSES: tf.gather(classes, tf.argmax(probabilities, axis=-1))}

        return binary

    def multiclass(features):
        probabilities = keras_model(features, training=False)
        return {PROBABILITIES: probabilities, CLASSES: tf.gather(classes, tf.argmax(probabilities, axis=-1))}

    return multiclass


def features_document(transform: Transform) -> list[dict]:
    """What `features.json` says of each input: the column's name, its kind, the raw signature's input."""
    return [{"name": feature.name, "kind": feature.kind, "input": feature.key} for feature in transform.features]


def export_saved_model(keras_model, transform: Transform, path: str | os.PathLike[str]) -> None:
    """Write `keras_model` as a SavedModel with the tf.Example and raw-feature serving signatures."""
    import keras
    import tensorflow as tf

    predict = _outputs(keras_model, transform)

    def serve_examples(examples):
        return predict(_parse(examples, transform))

    raw_spec = {feature.key: tf.TensorSpec([None, 1], tf.float32 if feature.kind == NUMERIC else tf.string,
                                           name=feature.key) for feature in transform.features}
    archive = keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint(SERVING_SIGNATURE, serve_examples,
                         input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    archive.add_endpoint(RAW_SIGNATURE, predict, input_signature=[raw_spec])
    archive.write_out(str(path), verbose=False)
