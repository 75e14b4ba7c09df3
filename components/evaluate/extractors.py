"""TFMA's extractors for batched metrics: TFMA's default extractors (features, labels, example
weights, the models' predictions, each over a whole Arrow batch) without its unbatching, and the
slice keys of a batch whose examples share their slice values.

TFMA's default list ends with `UnbatchExtractor`, which splits each batch into one extract per
example, and a slice-key extractor over single examples. Here the extracts stay batches: the feed
(`components.evaluate.tfma_inputs`) groups the rows of each batch by the slice columns, so every
example of a batch falls in the same slices, and TFMA's own slicer computes them from the batch's
first example, in the form TFMA's extractor gives it one unbatched example.
"""
from __future__ import annotations

import copy
from typing import Any

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.api import types
from tensorflow_model_analysis.extractors import extractor, slice_key_extractor, unbatch_extractor
from tensorflow_model_analysis.slicer import slicer_lib
from tensorflow_model_analysis.utils import util


def _first_example(value: Any) -> Any:
    """A batched feature's value for the batch's first example, as TFMA's unbatching splits it."""
    if isinstance(value, dict):
        return {key: _first_example(item) for key, item in value.items()}
    if isinstance(value, types.VarLenTensorValue):
        return next(value.dense_rows(), np.array([]))
    value = np.asarray(value)
    return value[0].reshape(1) if value.ndim == 1 else value[0]


class _BatchSliceKeys(beam.DoFn):
    def __init__(self, slice_specs: list[slicer_lib.SingleSliceSpec], model_names: list[str]):
        self._slice_specs = slice_specs
        self._model_names = model_names

    def process(self, batch: types.Extracts):
        # As TFMA's slice-key extractor: transformed features first (per model when there are
        # several), then the raw features.
        transformed = batch.get(constants.TRANSFORMED_FEATURES_KEY)
        searched = []
        if transformed is not None:
            searched = [transformed] if len(self._model_names) <= 1 else [
                transformed[name] for name in self._model_names if name in transformed]
        searched = [_first_example(features) for features in searched]
        first = _first_example(util.get_features_from_extracts(batch))
        slice_keys = list(dict.fromkeys(slicer_lib.get_slices_for_features_dicts(searched, first,
                                                                                 self._slice_specs)))
        batch = copy.copy(batch)
        batch[constants.SLICE_KEY_TYPES_KEY] = slicer_lib.slice_keys_to_numpy_array(slice_keys)
        yield batch


def batch_extractors(eval_shared_model, eval_config, tensor_adapter_config) -> list[extractor.Extractor]:
    """TFMA's default extractors for these models, keeping batches whole."""
    import tensorflow_model_analysis as tfma

    if eval_config.cross_slicing_specs or any(spec.slice_keys_sql for spec in eval_config.slicing_specs):
        raise NotImplementedError("cross slices and SQL slices need TFMA's per-example slicing")
    slice_specs = [slicer_lib.SingleSliceSpec(spec=spec) for spec in eval_config.slicing_specs] or [
        slicer_lib.SingleSliceSpec()]
    model_names = [spec.name for spec in eval_config.model_specs]
    result = []
    for each in tfma.default_extractors(eval_shared_model=eval_shared_model, eval_config=eval_config,
                                        tensor_adapter_config=tensor_adapter_config):
        if each.stage_name == unbatch_extractor.UNBATCH_EXTRACTOR_STAGE_NAME:
            continue
        if each.stage_name == slice_key_extractor.SLICE_KEY_EXTRACTOR_STAGE_NAME:
            # The same stage name: TFMA's evaluator runs after it.
            each = extractor.Extractor(stage_name=each.stage_name,
                                       ptransform=beam.ParDo(_BatchSliceKeys(slice_specs, model_names)))
        result.append(each)
    return result
