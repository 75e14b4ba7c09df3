"""TFMA's metrics computed over batches against TFMA's own per-example combiners, on the same
examples, without Beam (a few seconds): every metric and plot of the EvalConfig the evaluate step
builds, for a classifier against a baseline, a binary classifier and a regression; the ties and
bucket edges where a vectorized top-k or histogram could differ; and the settings that have no
batched form, which must be refused rather than computed differently."""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from tensorflow_model_analysis.api import types
from tensorflow_model_analysis.metrics import calibration_histogram, metric_specs, metric_types
from tensorflow_model_analysis.proto import config_pb2

from components.evaluate import batched_combiners, batched_metrics, tfma_runner
from components.evaluate.blessing import BASELINE, CANDIDATE, Threshold
from components.problem import REGRESSION
from components.serving import PREDICTIONS, PROBABILITIES

LABEL = "label"


def classifier_rows(classes: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and two models' probabilities, with rows where a vectorized version could go wrong:
    ties for the top class, probabilities of exactly 0, 1 and a bucket edge (0.5, 0.25)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, 150)
    models = {}
    for offset, name in enumerate((CANDIDATE, BASELINE)):
        probabilities = rng.dirichlet([0.4] * classes, size=len(labels))
        probabilities[:8] = np.eye(classes)[np.arange(8) % classes]  # certain: 1 and 0
        probabilities[8:14] = 1 / classes  # a tie of every class
        probabilities[14:20, :2] = 0.5  # a tie of the first two
        probabilities[14:20, 2:] = 0
        if classes > 2:
            probabilities[20:26] = [0.25, 0.5, 0.25] + [0] * (classes - 3)
        models[name] = probabilities.astype(np.float32)
    return labels, models


def examples_one_by_one(labels, predictions: dict[str, np.ndarray], output: str, two_models: bool):
    """What TFMA's metric combiners get after its unbatching: one example each."""
    for index, label in enumerate(labels):
        outputs = {name: {output: values[index]} for name, values in predictions.items()}
        yield metric_types.StandardMetricInputs(
            labels=np.array([label]), predictions=outputs if two_models else outputs[CANDIDATE], example_weights=None)


def batch(labels, predictions: dict[str, np.ndarray], output: str, two_models: bool):
    """What they get from the batch extractors: the labels as TFMA decodes them, the model outputs as arrays."""
    rows = len(labels)
    decoded = types.VarLenTensorValue(np.asarray(labels), np.stack([np.arange(rows), np.zeros(rows, int)], axis=1),
                                      np.array([rows, 1]))
    outputs = {name: {output: values} for name, values in predictions.items()}
    return metric_types.StandardMetricInputs(labels=decoded, predictions=outputs if two_models else outputs[CANDIDATE],
                                             example_weights=None)


def with_model_names(eval_config, names: list[str]):
    """The EvalConfig as TFMA completes it before building computations: every spec names the models."""
    for spec in eval_config.metrics_specs:
        spec.model_names[:] = names
    return eval_config


def metrics(eval_config, parts: list[list]) -> dict:
    """Every metric and plot of `eval_config` over `parts` (each a list of inputs to one accumulator,
    merged as Beam merges bundles), through TFMA's computations: combiners, then derived ones."""
    computations = metric_specs.to_computations(list(eval_config.metrics_specs), eval_config)
    results = {}
    for computation in computations:
        if isinstance(computation, metric_types.MetricComputation):
            combiner = computation.combiner
            combiner.setup()
            accumulators = []
            for part in parts:
                accumulator = combiner.create_accumulator()
                for element in part:
                    accumulator = combiner.add_input(accumulator, element)
                accumulators.append(pickle.loads(pickle.dumps(accumulator)))  # as Beam encodes them
            results.update(combiner.extract_output(combiner.merge_accumulators(accumulators)))
    for computation in computations:
        if isinstance(computation, metric_types.DerivedMetricComputation):
            results.update(computation.result(results))
    return results


def sums(accumulator) -> dict[str, float]:
    names = [name for name in dir(accumulator) if name.startswith("total_")]
    return {name: getattr(accumulator, name) for name in names}


def assert_same(per_example: dict, batched: dict, rel: float = 1e-9) -> None:
    assert set(per_example) == set(batched)
    for key, expected in per_example.items():
        found = batched[key]
        if hasattr(expected, "SerializeToString"):  # plots: protos
            assert found == expected, key
        elif isinstance(expected, list):  # calibration histograms (the batched one may list empty buckets too)
            found = [bucket for bucket in found if bucket.weighted_examples or bucket.weighted_labels]
            expected = [bucket for bucket in expected if bucket.weighted_examples or bucket.weighted_labels]
            assert [bucket.bucket_id for bucket in found] == [bucket.bucket_id for bucket in expected], key
            for mine, theirs in zip(found, expected):
                assert (mine.weighted_labels, mine.weighted_examples) == (theirs.weighted_labels,
                                                                          theirs.weighted_examples), key
                assert mine.weighted_predictions == pytest.approx(theirs.weighted_predictions, rel=rel), key
        elif hasattr(expected, "total_weighted_examples"):
            assert sums(found) == pytest.approx(sums(expected), rel=rel), key
        elif isinstance(expected, dict):  # confusion matrices by threshold
            assert found == expected, key
        else:
            assert np.asarray(found, np.float64) == pytest.approx(np.asarray(expected, np.float64), rel=rel,
                                                                  nan_ok=True), key


@pytest.mark.parametrize("kind, classes", [("multiclass", 3), ("multiclass", 5), ("binary", 2)])
def test_every_classifier_metric_over_batches_equals_tfmas_per_example_result(kind, classes):
    labels, predictions = classifier_rows(classes, seed=classes)
    vocabulary = tuple(f"class {index}" for index in range(classes))
    thresholds = [Threshold("accuracy", "value", "config", lower=0.5)]
    native = with_model_names(tfma_runner.eval_config(kind, LABEL, vocabulary, 1, ("island",), thresholds, True),
                              [CANDIDATE, BASELINE])
    one_by_one = list(examples_one_by_one(labels, predictions, PROBABILITIES, two_models=True))
    expected = metrics(native, [one_by_one[:90], one_by_one[90:]])
    found = metrics(batched_metrics.batched_config(native),
                    [[batch(labels[:90], {name: p[:90] for name, p in predictions.items()}, PROBABILITIES, True)],
                     [batch(labels[90:], {name: p[90:] for name, p in predictions.items()}, PROBABILITIES, True)]])
    public = {key for key in expected if not key.name.startswith("_")}
    assert {key.name for key in public} >= {"example_count", "accuracy", "loss", "precision", "recall", "auc",
                                             "calibration", "macro_auc", "multi_class_confusion_matrix_plot"}
    assert {key.model_name for key in public} == {CANDIDATE, BASELINE}
    # The loss is a Keras metric summed in float32: the batches add it up in another order.
    loss = {key for key in expected if key.name == "loss"}
    assert_same({key: expected[key] for key in expected if key not in loss},
                {key: found[key] for key in found if key not in loss})
    assert_same({key: expected[key] for key in loss}, {key: found[key] for key in loss}, rel=1e-6)


def regression_rows() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    labels = rng.normal(150, 70, 250).astype(np.float32)
    predictions = (labels + rng.normal(0, 40, len(labels))).astype(np.float32).reshape(-1, 1)
    predictions[:5, 0] = labels[:5]  # errors of exactly 0
    return labels, {CANDIDATE: predictions}


def test_every_regression_metric_over_batches_equals_tfmas_per_example_result():
    labels, predictions = regression_rows()
    native = tfma_runner.eval_config(REGRESSION, LABEL, (), 1, (), [], False)
    # One accumulator: TFMA's mean errors merge a list of several wrongly (the next test).
    expected = metrics(native, [list(examples_one_by_one(labels, predictions, PREDICTIONS, two_models=False))])
    found = metrics(batched_metrics.batched_config(native),
                    [[batch(labels[:100], {CANDIDATE: predictions[CANDIDATE][:100]}, PREDICTIONS, False),
                      batch(labels[100:], {CANDIDATE: predictions[CANDIDATE][100:]}, PREDICTIONS, False)]])
    assert {key.name for key in expected} >= {"example_count", "mse", "mae", "mean_label", "mean_prediction",
                                               "calibration", "squared_pearson"}
    assert_same(expected, found)


def test_mean_errors_merged_from_several_accumulators_are_the_mean_over_all_examples():
    labels, predictions = regression_rows()
    errors = labels.astype(np.float64) - predictions[CANDIDATE][:, 0].astype(np.float64)
    parts = [[batch(labels[start:start + 80], {CANDIDATE: predictions[CANDIDATE][start:start + 80]}, PREDICTIONS,
                    False)] for start in range(0, len(labels), 80)]
    found = metrics(batched_metrics.batched_config(tfma_runner.eval_config(REGRESSION, LABEL, (), 1, (), [], False)),
                    parts)
    by_name = {key.name: value for key, value in found.items()}
    assert by_name["mse"] == pytest.approx(np.mean(errors ** 2), rel=1e-6)
    assert by_name["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-6)
    assert by_name["example_count"] == len(labels)


def test_the_wrapped_metric_keeps_its_name_thresholds_and_per_slice_thresholds():
    thresholds = [Threshold("accuracy", "value", "config", lower=0.5),
                  Threshold("accuracy", "change", "config", absolute=-0.01, direction="higher_is_better")]
    native = tfma_runner.eval_config("multiclass", LABEL, ("a", "b", "c"), 1, ("island",), thresholds, True,
                                     thresholds_on_slices=True)
    wrapped = batched_metrics.batched_config(native)
    for spec, wrapped_spec in zip(native.metrics_specs, wrapped.metrics_specs):
        for metric, wrapped_metric in zip(spec.metrics, wrapped_spec.metrics):
            assert wrapped_metric.class_name == "Batched" and wrapped_metric.module == batched_metrics.__name__
            assert list(wrapped_metric.per_slice_thresholds) == list(metric.per_slice_thresholds)
            settings = json.loads(wrapped_metric.config)
            assert settings["class_name"] == metric.class_name
            assert settings["name"] == json.loads(metric.config or "{}").get("name", settings["name"])
    assert (metric_specs.metric_thresholds_from_metrics_specs(list(wrapped.metrics_specs), wrapped)
            == metric_specs.metric_thresholds_from_metrics_specs(list(native.metrics_specs), native))
    assert wrapped.slicing_specs == native.slicing_specs and wrapped.model_specs == native.model_specs


def test_a_histogram_accumulator_travels_as_the_buckets_hit():
    labels, predictions = classifier_rows(3, seed=1)
    config = tfma_runner.eval_config("multiclass", LABEL, ("a", "b", "c"), 1, (), [], False)
    histogram = next(computation.combiner for computation in metric_specs.to_computations(
        list(batched_metrics.batched_config(config).metrics_specs), config)
        if isinstance(computation, metric_types.MetricComputation)
        and isinstance(computation.combiner, batched_combiners._CalibrationHistogram)
        and computation.combiner._num_buckets == calibration_histogram.DEFAULT_NUM_BUCKETS)
    accumulator = histogram.add_input(histogram.create_accumulator(),
                                      batch(labels, predictions, PROBABILITIES, two_models=False))
    travelled = pickle.loads(pickle.dumps(accumulator))
    assert histogram.extract_output(travelled) == histogram.extract_output(accumulator)
    assert len(pickle.dumps(accumulator)) < 10_001 * 8  # not the 10,002 buckets of each array


@pytest.mark.parametrize("metrics_spec, reason", [
    (config_pb2.MetricsSpec(metrics=[config_pb2.MetricConfig(class_name="AUC")],
                            aggregate=config_pb2.AggregationOptions(micro_average=True)), "aggregation"),
    (config_pb2.MetricsSpec(metrics=[config_pb2.MetricConfig(class_name="MeanAbsolutePercentageError")]),
     "no batched form"),
    (config_pb2.MetricsSpec(metrics=[config_pb2.MetricConfig(class_name="Precision", config='{"top_k": 2}')]),
     "only class_id"),
])
def test_a_setting_without_a_batched_form_is_refused_when_the_metrics_are_built(metrics_spec, reason):
    eval_config = config_pb2.EvalConfig(model_specs=[config_pb2.ModelSpec(label_key=LABEL)],
                                        metrics_specs=[metrics_spec])
    wrapped = batched_metrics.batched_config(eval_config)
    with pytest.raises(NotImplementedError, match=reason):
        metric_specs.to_computations(list(wrapped.metrics_specs), wrapped)


def _certain_positives():
    """11 examples of class 0, every one predicted class 0, one of them at exactly 1.0 (the overflow
    bucket): top-k histogram [1, 2]."""
    probabilities = np.tile(np.array([0.99999994, 3e-8, 3e-8], np.float32), (11, 1))
    probabilities[9] = [1.0, 0.0, 0.0]
    return np.zeros(11, int), probabilities


def _never_predicted():
    """Two examples of class 2 among four, class 0 predicted for every one: class 2's histogram [0]."""
    return np.array([2, 2, 0, 0]), np.tile(np.array([0.6, 0.3, 0.1], np.float32), (4, 1))


@pytest.mark.parametrize("rows, class_id, recall, precision, tfma_recall, tfma_precision", [
    (_certain_positives, 0, 1.0, 1.0, 1 / 11, 1.0),
    (_never_predicted, 2, 0.0, None, 1.0, 0.5),  # never predicted: precision undefined (NaN)
], ids=("all predicted, one at exactly 1.0", "never predicted"))
def test_top_k_precision_and_recall_are_right_where_tfma_reads_its_sparse_histogram_by_position(
        rows, class_id, recall, precision, tfma_recall, tfma_precision):
    # TFMA 0.52's one-bucket histogram lists only the buckets hit and is read by position; the
    # batched one lists every bucket (module docstring of batched_combiners). The per-example values
    # are TFMA's as it is: when they change, TFMA has fixed it and the deviation can go.
    labels, probabilities = rows()
    vocabulary = tuple(f"class {index}" for index in range(3))
    config = with_model_names(tfma_runner.eval_config("multiclass", LABEL, vocabulary, 1, (), [], True),
                              [CANDIDATE, BASELINE])
    predictions = {CANDIDATE: probabilities, BASELINE: probabilities}

    def of_the_class(found: dict) -> dict:
        return {(key.model_name, key.name): value for key, value in found.items()
                if key.name in ("recall", "precision") and key.sub_key is not None
                and key.sub_key.class_id == class_id}

    def expected(recall_value, precision_value) -> dict:
        return {(model, name): value for model in (CANDIDATE, BASELINE)
                for name, value in (("recall", recall_value), ("precision", precision_value))}

    def same(found: dict, wanted: dict) -> bool:
        return set(found) == set(wanted) and all(
            math.isnan(found[key]) if wanted[key] is None else found[key] == pytest.approx(wanted[key])
            for key in wanted)

    batched = of_the_class(metrics(batched_metrics.batched_config(config),
                                   [[batch(labels, predictions, PROBABILITIES, True)]]))
    assert same(batched, expected(recall, precision)), batched
    per_example = of_the_class(metrics(config, [list(examples_one_by_one(labels, predictions, PROBABILITIES, True))]))
    assert same(per_example, expected(tfma_recall, tfma_precision)), per_example
