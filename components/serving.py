"""The exported model's serving contract: what train writes and evaluate, push and TF Serving
clients rely on.

A model artifact is a SavedModel with two signatures: `serving_default` takes serialized
tf.Examples (input `examples`, TF Serving's convention, keys the columns' names) and `serving_raw`
one [batch, 1] tensor per raw feature (named as `features.json` says). A classifier returns
`probabilities` [batch, classes] and `classes` (the predicted label); class i of `probabilities` is
line i of `label_vocabulary.txt`. A regression model returns `predictions` [batch], in the label's
units.
"""
from __future__ import annotations

SERVING_SIGNATURE = "serving_default"
RAW_SIGNATURE = "serving_raw"
EXAMPLES_INPUT = "examples"
PROBABILITIES = "probabilities"
CLASSES = "classes"
PREDICTIONS = "predictions"
FEATURES_FILE = "features.json"
LABEL_VOCABULARY = "label_vocabulary.txt"
SAVED_MODEL = "saved_model.pb"
# What a SavedModel directory consists of: what push copies into the serving directory.
SAVED_MODEL_ENTRIES = (SAVED_MODEL, "variables", "assets", "fingerprint.pb")
