"""Exporting a trained model for serving: a SavedModel with the tf.Example and raw-feature
signatures of the serving contract (`components.serving`). Preprocessing lives inside the model, so a
client sends raw feature values and missing or unseen ones are handled as in training."""
from __future__ import annotations

import math
import os
from typing import Any

from components.schema import NUMERIC
from components.serving import CLASSES, EXAMPLES_INPUT, PROBABILITIES, RAW_SIGNATURE, SERVING_SIGNATURE
from components.transform import Transform


def _example_spec(transform: Transform) -> dict[str, Any]:
    import tensorflow as tf

    # A feature missing from an example gets the value a missing one has in training: NaN or "".
    return {feature.name: tf.io.FixedLenFeature([1], tf.float32, default_value=[math.nan])
            if feature.kind == NUMERIC else tf.io.FixedLenFeature([1], tf.string, default_value=[""])
            for feature in transform.features}


def export_saved_model(keras_model, transform: Transform, path: str | os.PathLike[str]) -> None:
    """Write `keras_model` as a SavedModel with the tf.Example and raw-feature serving signatures."""
    import keras
    import tensorflow as tf

    classes = tf.constant(list(transform.label_vocabulary))
    example_spec = _example_spec(transform)

    def predict(features):
        probabilities = keras_model(features, training=False)
        return {PROBABILITIES: probabilities, CLASSES: tf.gather(classes, tf.argmax(probabilities, axis=-1))}

    def serve_examples(examples):
        return predict(tf.io.parse_example(examples, example_spec))

    raw_spec = {feature.name: tf.TensorSpec([None, 1], tf.float32 if feature.kind == NUMERIC else tf.string,
                                            name=feature.name) for feature in transform.features}
    archive = keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint(SERVING_SIGNATURE, serve_examples,
                         input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    archive.add_endpoint(RAW_SIGNATURE, predict, input_signature=[raw_spec])
    archive.write_out(str(path), verbose=False)
