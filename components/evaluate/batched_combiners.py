"""TFMA's own metric combiners fed a batch of examples at a time: each `add_input` does with numpy
over the batch what TFMA's combiner does in Python for one example, into the same accumulator.

TFMA computes every metric by Beam combiners whose `add_input` takes one example: ~22 such calls
per example and slice for a classifier's metrics, each in Python (the profile in
bench/evaluate/RESULTS.md). Here each combiner TFMA builds is replaced by a subclass of its own
class (`batched`), with the same key, the same accumulator and TFMA's own `merge_accumulators` and
`extract_output` where they work on sums; only the per-example step is vectorized, reproducing
what TFMA's `metric_util.to_label_prediction_example_weight` yields for one example:

| TFMA combiner                          | per example, in TFMA                         | per batch, here            |
| -------------------------------------- | -------------------------------------------- | -------------------------- |
| ExampleCount                           | += 1                                         | += rows                    |
| Keras metrics (accuracy, loss)         | queued, `update_state` per 1000 examples     | `update_state` per batch   |
| MultiClassConfusionMatrix              | one (actual, argmax) cell += 1               | a count per cell           |
| CalibrationHistogram (AUC, precision, | the class's probability (top-k: or -inf) into | np.bincount over buckets   |
|   recall, pr_auc)                      |   one of 10,000 buckets                      |                            |
| WeightedLabelsPredictionsExamples      | sums of label, prediction, weight            | the same sums              |
| Mean squared / absolute error          | sums of the error and the weight             | the same sums              |
| SquaredPearsonCorrelation              | the five sums of the correlation             | the same sums              |

The sums are the same numbers added in another order, so a float metric may differ from TFMA's
per-example result in its last digits (tests/components/evaluate/test_batched_metrics.py compares
both on the same examples, test_step.py both paths on the same split). Two differences are
deliberate, both where TFMA 0.52 is wrong:
- its mean squared and absolute errors count the first of several merged accumulators twice; the
  batched ones merge them once;
- the histogram of one bucket it builds for top-k precision and recall (bucket 0: not in the top k,
  -inf; 1: in it; 2: a prediction of exactly 1.0) lists only the buckets hit, and
  `binary_confusion_matrices._histogram_to_binary_confusion_matrices` reads it by position. A slice
  where the class is never predicted ([0]) gets recall 1.0 instead of 0 and a precision (the class's
  share of the slice) where none is defined; one where every example is predicted as the class, some
  at exactly 1.0 ([1, 2]), counts only those as predicted (the others as false negatives or true
  negatives). The batched histogram of one bucket lists all three buckets, empty ones too, which
  TFMA reads right. Which rows come out at exactly 1.0 in float32 depends on the CPU and the
  batching. (TFMA's own per-example path, which `tfma_runner` falls back to for settings not
  batched, keeps the bug.)

Only the settings an evaluation here produces are vectorized (no example weights, no micro
averaging, class_id and top_k sub keys); any other combiner or setting raises when the metrics are
built, rather than being computed in a way TFMA would not.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from tensorflow_model_analysis.api import types
from tensorflow_model_analysis.metrics import (calibration, calibration_histogram, example_count,
                                               mean_regression_error, metric_types, metric_util,
                                               multi_class_confusion_matrix_metrics as multi_class,
                                               squared_pearson_correlation, tf_metric_wrapper)


class Rows(NamedTuple):
    """One model output's labels, predictions and example weights for a batch, one row per example."""

    labels: np.ndarray  # (rows, label width)
    predictions: np.ndarray  # (rows, prediction width)
    weights: np.ndarray  # (rows,), float64


def _dense(value: Any) -> Any:
    """A batched TFMA value (a VarLenTensorValue of one value per example, an array, or a dict of
    them) as dense arrays with one row per example."""
    if isinstance(value, dict):
        return {key: _dense(item) for key, item in value.items()}
    if isinstance(value, types.VarLenTensorValue):
        rows = int(value.dense_shape[0])
        if len(value.values) != rows or not np.array_equal(value.indices[:, 0], np.arange(rows)):
            raise ValueError(f"expected exactly one value per example in a batch of {rows}, got {len(value.values)}")
        return np.asarray(value.values).reshape(rows, 1)
    return value


def rows(element: metric_types.StandardMetricInputs, eval_config, model_name: str, output_name: str) -> Rows:
    """The batch as TFMA's `to_label_prediction_example_weight` sees it (model, output, label and
    prediction key lookups are TFMA's own), before any sub key: each row is one example's inputs."""
    dense = metric_types.StandardMetricInputs(
        labels=_dense(element.label), predictions=_dense(element.prediction), example_weights=None)
    label, prediction, _ = next(metric_util.to_label_prediction_example_weight(
        dense, eval_config=eval_config, model_name=model_name, output_name=output_name, flatten=False,
        squeeze=False))
    prediction = np.asarray(prediction)
    if prediction.ndim == 1:  # one scalar per example
        prediction = prediction.reshape(-1, 1)
    label = np.asarray(label).reshape(len(prediction), -1)
    return Rows(label, prediction, np.ones(len(prediction), np.float64))


def batch_size(element: metric_types.StandardMetricInputs) -> int:
    """The number of examples in a batch, from its predictions (or labels)."""
    def size(value: Any) -> int | None:
        if isinstance(value, dict):
            return next((found for found in map(size, value.values()) if found is not None), None)
        if isinstance(value, types.VarLenTensorValue):
            return int(value.dense_shape[0])
        return None if value is None else len(value)

    found = size(element.prediction)
    found = size(element.label) if found is None else found
    if found is None:
        raise ValueError("a batch without predictions or labels: its size is unknown")
    return found


def _binarized(found: Rows, sub_key: metric_types.SubKey | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example, the label, prediction and weight TFMA yields with flatten=True for a class_id
    (and top_k) sub key, or for a single-output model without one: float64 vectors."""
    labels, predictions = found.labels, found.predictions
    if sub_key is None:
        if predictions.shape[1] != 1 or labels.shape[1] != 1:
            raise NotImplementedError("a multi-column output without a class_id sub key (micro averaging)")
        return labels[:, 0].astype(np.float64), predictions[:, 0].astype(np.float64), found.weights
    if sub_key.k is not None or sub_key.class_id is None:
        raise NotImplementedError(f"sub key {sub_key}: only class_id, with or without top_k, is batched")
    if labels.shape[1] != 1 or predictions.shape[1] < 2:
        raise NotImplementedError("class_id needs sparse labels (a class index) and one probability per class")
    class_id = sub_key.class_id
    if not 0 <= class_id < predictions.shape[1]:
        raise ValueError(f'class_id "{class_id}" out of range of predictions with {predictions.shape[1]} classes')
    selected = predictions[:, class_id].astype(np.float64)
    if sub_key.top_k is not None:
        # TFMA sets every prediction outside the top k to -inf (ties: the first in a stable sort).
        top = np.argsort(-predictions, axis=1, kind="stable")[:, :sub_key.top_k]
        selected = np.where((top == class_id).any(axis=1), selected, -np.inf)
    return (labels[:, 0] == class_id).astype(np.float64), selected, found.weights


class _ExampleCount(example_count._ExampleCountCombiner):
    def add_input(self, accumulator: float, element: metric_types.StandardMetricInputs) -> float:
        return accumulator + float(batch_size(element))


class _KerasMetrics(tf_metric_wrapper._CompilableMetricsCombiner):
    """Keras metrics updated once per batch, their weights summed as TFMA sums them per 1000 examples."""

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        for output_index, output_name in enumerate(self._output_names):
            found = rows(element, self._eval_config, self._model_name, output_name)
            for metric_index, metric in enumerate(self._metrics[output_name]):
                metric.reset_states()
                metric.update_state(found.labels, found.predictions, found.weights.reshape(-1, 1))
                accumulator.add_weights(output_index, metric_index, metric.get_weights())
        return accumulator


class _MultiClassConfusionMatrix(multi_class._MultiClassConfusionMatrixCombiner):
    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        found = rows(element, self._eval_config, self._key.model_name, self._key.output_name)
        if found.predictions.shape[1] < 2:
            raise ValueError(f"Predictions shape must be > 1 for multi-class confusion matrix: "
                             f"shape={found.predictions.shape[1:]}")
        actual = (found.labels.argmax(axis=1) if found.labels.shape[1] > 1 else found.labels[:, 0]).astype(np.int64)
        predicted = found.predictions.argmax(axis=1)
        every = np.arange(len(predicted))
        for threshold in self._thresholds:
            # As TFMA: once an example falls to "no class" at a threshold it stays there, and its
            # score at the next threshold is read from the last column (index -1).
            scores = found.predictions[every, predicted]
            predicted = np.where(scores <= threshold, multi_class.NO_PREDICTED_CLASS_ID, predicted)
            cells, counts = np.unique(np.stack([actual, predicted], axis=1), axis=0, return_counts=True)
            matrix = accumulator.setdefault(threshold, {})
            for (actual_id, predicted_id), count in zip(cells.tolist(), counts.tolist()):
                cell = multi_class.MatrixEntryKey(actual_id, predicted_id)
                matrix[cell] = matrix.get(cell, 0.0) + float(count)
        return accumulator


class _Histogram:
    """A calibration histogram as arrays over all buckets (TFMA's: a dict of the buckets hit)."""

    def __init__(self, buckets: int):
        self.hits = np.zeros(buckets, np.int64)
        self.labels = np.zeros(buckets, np.float64)
        self.predictions = np.zeros(buckets, np.float64)
        self.examples = np.zeros(buckets, np.float64)

    def __getstate__(self) -> dict:
        # Beam encodes accumulators between the combine phases: only the buckets hit travel.
        hit = np.flatnonzero(self.hits)
        return {"size": len(self.hits), "hit": hit, "hits": self.hits[hit], "labels": self.labels[hit],
                "predictions": self.predictions[hit], "examples": self.examples[hit]}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])
        for name in ("hits", "labels", "predictions", "examples"):
            getattr(self, name)[state["hit"]] = state[name]


class _CalibrationHistogram(calibration_histogram._CalibrationHistogramCombiner):
    def create_accumulator(self) -> _Histogram:
        return _Histogram(self._num_buckets + 2)

    def add_input(self, accumulator: _Histogram, element: metric_types.StandardMetricInputs) -> _Histogram:
        labels, predictions, weights = _binarized(
            rows(element, self._eval_config, self._key.model_name, self._key.output_name), self._key.sub_key)
        if self._fractional_labels:
            if ((labels < 0) | (labels > 1)).any():
                raise ValueError("label must be within [0, 1] for a calibration histogram with fractional labels")
            # TFMA splits each example into (0, p, w * (1 - l)) and (1, p, w * l), dropping zero weights.
            negative, positive = weights * (1 - labels), weights * labels
            keep_negative, keep_positive = negative != 0, positive != 0
            labels = np.concatenate([np.zeros(keep_negative.sum()), np.ones(keep_positive.sum())])
            predictions = np.concatenate([predictions[keep_negative], predictions[keep_positive]])
            weights = np.concatenate([negative[keep_negative], positive[keep_positive]])
        values = predictions if self._prediction_based_bucketing else labels
        if np.isnan(values).any():
            raise ValueError(f"{self._key.name}: a NaN {'prediction' if self._prediction_based_bucketing else 'label'}")
        # TFMA's bucket index, the same float64 operations in the same order.
        index = (values - self._left) / self._range * self._num_buckets + 1
        last = self._num_buckets + 1
        buckets = np.where(index < 0, 0, np.where(index >= last, last, np.trunc(np.clip(index, 0, last))))
        buckets = buckets.astype(np.int64)
        size = len(accumulator.hits)
        accumulator.hits += np.bincount(buckets, minlength=size)
        accumulator.labels += np.bincount(buckets, weights=labels * weights, minlength=size)
        accumulator.predictions += np.bincount(buckets, weights=predictions * weights, minlength=size)
        accumulator.examples += np.bincount(buckets, weights=weights, minlength=size)
        return accumulator

    def merge_accumulators(self, accumulators) -> _Histogram:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            for name in ("hits", "labels", "predictions", "examples"):
                getattr(result, name).__iadd__(getattr(accumulator, name))
        return result

    def extract_output(self, accumulator: _Histogram) -> dict:
        # TFMA reads a one-bucket histogram (top-k) by position, without rebinning it: every bucket.
        listed = np.arange(len(accumulator.hits)) if self._num_buckets == 1 else np.flatnonzero(accumulator.hits)
        return {self._key: [calibration_histogram.Bucket(int(index), float(accumulator.labels[index]),
                                                         float(accumulator.predictions[index]),
                                                         float(accumulator.examples[index]))
                            for index in listed]}


class _WeightedLabelsPredictionsExamples(calibration._WeightedLabelsPredictionsExamplesCombiner):
    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        labels, predictions, weights = _binarized(
            rows(element, self._eval_config, self._key.model_name, self._key.output_name), self._key.sub_key)
        accumulator.total_weighted_examples += float(weights.sum())
        accumulator.total_weighted_labels += float((labels * weights).sum())
        accumulator.total_weighted_predictions += float((predictions * weights).sum())
        return accumulator


class _MeanRegressionError:
    """The error sums of TFMA's mean squared and mean absolute error, per batch."""

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        key = self._metric_key
        found = rows(element, self._eval_config, key.model_name, key.output_name)
        if found.labels.shape[1] != 1 or found.predictions.shape[1] != 1:
            raise NotImplementedError(f"{key.name}: only one label and one prediction per example is batched")
        errors = self._errors(found.labels[:, 0], found.predictions[:, 0])
        kept = ~np.isnan(errors)
        accumulator.total_regression_error += float((errors[kept] * found.weights[kept]).sum())
        accumulator.total_example_weights += float(found.weights[kept].sum())
        return accumulator

    def merge_accumulators(self, accumulators):
        # TFMA 0.52's version takes `next(iter(accumulators))` and then loops over `accumulators`
        # from the start: given a list or tuple (TFMA's own tuple combiner passes tuples) it adds
        # the first accumulator to itself, which skews the mean whenever more than one is merged.
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            result.merge(accumulator)
        return result


class _MeanSquaredError(_MeanRegressionError, mean_regression_error._MeanSquaredErrorCombiner):
    @staticmethod
    def _errors(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        # TFMA: np.linalg.norm(label - prediction) ** 2, the difference and the norm in the inputs'
        # precision, the square of the norm in float64.
        difference = labels - predictions
        return np.sqrt(difference * difference).astype(np.float64) ** 2


class _MeanAbsoluteError(_MeanRegressionError, mean_regression_error._MeanAbsoluteErrorCombiner):
    @staticmethod
    def _errors(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        return np.absolute(labels - predictions).astype(np.float64)


class _SquaredPearsonCorrelation(squared_pearson_correlation._SquaredPearsonCorrelationCombiner):
    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        labels, predictions, weights = _binarized(
            rows(element, self._eval_config, self._key.model_name, self._key.output_name), self._key.sub_key)
        accumulator.total_weighted_labels += float((weights * labels).sum())
        accumulator.total_weighted_predictions += float((weights * predictions).sum())
        accumulator.total_weighted_squared_labels += float((weights * labels ** 2).sum())
        accumulator.total_weighted_squared_predictions += float((weights * predictions ** 2).sum())
        accumulator.total_weighted_labels_times_predictions += float((weights * labels * predictions).sum())
        accumulator.total_weighted_examples += float(weights.sum())
        return accumulator


# TFMA's combiner class -> its batched subclass. Exact classes: a subclass TFMA adds is not assumed
# to accumulate the same way.
_BATCHED = {
    example_count._ExampleCountCombiner: _ExampleCount,
    tf_metric_wrapper._CompilableMetricsCombiner: _KerasMetrics,
    multi_class._MultiClassConfusionMatrixCombiner: _MultiClassConfusionMatrix,
    calibration_histogram._CalibrationHistogramCombiner: _CalibrationHistogram,
    calibration._WeightedLabelsPredictionsExamplesCombiner: _WeightedLabelsPredictionsExamples,
    mean_regression_error._MeanSquaredErrorCombiner: _MeanSquaredError,
    mean_regression_error._MeanAbsoluteErrorCombiner: _MeanAbsoluteError,
    squared_pearson_correlation._SquaredPearsonCorrelationCombiner: _SquaredPearsonCorrelation,
}


def _unsupported(combiner) -> str | None:
    """Why `combiner`'s settings have no batched form here, or None."""
    settings = vars(combiner)
    if settings.get("_example_weighted"):
        return "example weights"
    if settings.get("_aggregation_type") is not None or settings.get("_class_weights"):
        return "aggregation (micro averaging, class weights)"
    key = settings.get("_key") or settings.get("_metric_key")
    sub_key = settings.get("_sub_key") if isinstance(combiner, _KerasMetrics) else getattr(key, "sub_key", None)
    if isinstance(combiner, (_KerasMetrics, _MeanRegressionError)) and sub_key is not None:
        return f"sub key {sub_key}"
    if isinstance(combiner, (_WeightedLabelsPredictionsExamples, _SquaredPearsonCorrelation)) and sub_key is not None \
            and sub_key.top_k is not None:
        return f"sub key {sub_key}"
    if sub_key is not None and (sub_key.k is not None or (sub_key.top_k is not None and sub_key.class_id is None)):
        return f"sub key {sub_key} (only class_id, with or without top_k)"
    if isinstance(combiner, _MultiClassConfusionMatrix) and (
            combiner._extract_label_prediction_and_weight is not metric_util.to_label_prediction_example_weight):
        return "its own input extraction"
    return None


def batched(combiner):
    """TFMA's `combiner` as its batched subclass, with the same settings (key, buckets, thresholds...)."""
    cls = _BATCHED.get(type(combiner))
    if cls is None:
        raise NotImplementedError(f"TFMA's {type(combiner).__module__}.{type(combiner).__name__} has no batched form")
    replacement = cls.__new__(cls)
    replacement.__dict__.update(combiner.__dict__)
    reason = _unsupported(replacement)
    if reason:
        raise NotImplementedError(f"TFMA's {type(combiner).__name__} with {reason} has no batched form")
    return replacement
