"""TFMA itself: the EvalConfig (model specs, metrics with their thresholds, slices), the Beam
pipeline that runs it over the held-out split, and reading its metrics, plots and validation back.

Metrics (candidate and baseline, overall and per slice): example count, accuracy, loss
(cross-entropy), per-class precision, recall, one-vs-rest AUC and calibration (mean prediction /
mean label), the macro average of the one-vs-rest AUCs (`macro_auc`), and the multi-class confusion
matrix plot. Precision and recall are those of the class the model answers (its top-1), as in the
confusion matrix, not of "probability above 0.5". Thresholds are TFMA metric thresholds, checked by
TFMA's validator on the overall slice (on every slice as well with `thresholds_on_slices`).
"""
from __future__ import annotations

import json
import math
from typing import Any

import apache_beam as beam

from components import beam_run
from components.beam_run import BeamConfig
from components.evaluate.blessing import BASELINE, CANDIDATE, Threshold, failure
from components.evaluate.metrics import METRICS, PER_CLASS
from components.evaluate.tfma_inputs import BATCH_ROWS, LABEL_INDEX_KEY, ToTFMAInputs, tfx_io
from components.serving import PROBABILITIES, SERVING_SIGNATURE

TFMA_DIR = "tfma"


def eval_config(vocabulary: tuple[str, ...], slices: tuple[str, ...], applied: list[Threshold],
                has_baseline: bool, thresholds_on_slices: bool = False):
    """TFMA's EvalConfig: model specs, metrics with their thresholds, and slices."""
    from tensorflow_model_analysis.proto import config_pb2

    def model_spec(name: str, is_baseline: bool):
        return config_pb2.ModelSpec(name=name, signature_name=SERVING_SIGNATURE, label_key=LABEL_INDEX_KEY,
                                    prediction_key=PROBABILITIES, is_baseline=is_baseline)

    def metric_threshold(threshold: Threshold):
        if threshold.kind == "value":
            value = config_pb2.GenericValueThreshold()
            if threshold.lower is not None:
                value.lower_bound.value = threshold.lower
            if threshold.upper is not None:
                value.upper_bound.value = threshold.upper
            return config_pb2.MetricThreshold(value_threshold=value)
        change = config_pb2.GenericChangeThreshold(
            direction=config_pb2.MetricDirection.HIGHER_IS_BETTER if threshold.direction == "higher_is_better"
            else config_pb2.MetricDirection.LOWER_IS_BETTER)
        if threshold.absolute is not None:
            change.absolute.value = threshold.absolute
        if threshold.relative is not None:
            change.relative.value = threshold.relative
        return config_pb2.MetricThreshold(change_threshold=change)

    def metric(name: str, **settings: Any):
        metric_config = config_pb2.MetricConfig(class_name=METRICS[name][0],
                                                config=json.dumps({"name": name, **settings}))
        for threshold in applied:
            if threshold.metric != name or name in PER_CLASS:  # per-class ones: see per_class_failures
                continue
            if thresholds_on_slices:
                # One per-slice threshold per kind: TFMA allows a value and a change threshold in one.
                metric_config.per_slice_thresholds.add(slicing_specs=[config_pb2.SlicingSpec()]).threshold.CopyFrom(
                    metric_threshold(threshold))
                for column in slices:
                    metric_config.per_slice_thresholds.add(
                        slicing_specs=[config_pb2.SlicingSpec(feature_keys=[column])]).threshold.CopyFrom(
                        metric_threshold(threshold))
            else:
                metric_config.per_slice_thresholds.add(slicing_specs=[config_pb2.SlicingSpec()]).threshold.CopyFrom(
                    metric_threshold(threshold))
        return metric_config

    class_ids = list(range(len(vocabulary)))
    metrics_specs = [
        config_pb2.MetricsSpec(metrics=[metric("example_count"), metric("accuracy"), metric("loss"),
                                        config_pb2.MetricConfig(class_name="MultiClassConfusionMatrixPlot")]),
        # Precision and recall of the class the model answers (its top-1), not of probability > 0.5.
        # No CalibrationPlot: TFMA computes metrics example by example in Python, and the per-class
        # calibration histograms cost as much again as a metric while no one reads them in the KFP UI.
        config_pb2.MetricsSpec(metrics=[metric(name, **({"top_k": 1} if name in ("precision", "recall") else {}))
                                        for name in PER_CLASS],
                               binarize=config_pb2.BinarizationOptions(class_ids={"values": class_ids})),
        # One-vs-rest AUC per class, averaged with equal weights.
        config_pb2.MetricsSpec(metrics=[metric("macro_auc")], aggregate=config_pb2.AggregationOptions(
            macro_average=True, class_weights={class_id: 1.0 for class_id in class_ids})),
    ]
    models = [model_spec(CANDIDATE, False)] + ([model_spec(BASELINE, True)] if has_baseline else [])
    return config_pb2.EvalConfig(
        model_specs=models, metrics_specs=metrics_specs,
        slicing_specs=[config_pb2.SlicingSpec()] + [config_pb2.SlicingSpec(feature_keys=[name]) for name in slices],
        options=config_pb2.Options(include_default_metrics={"value": False}))


def run_tfma(files: list[str], columns: dict[str, str], label: str, vocabulary: tuple[str, ...], candidate: str,
             baseline: str | None, tfma_config, tfma_dir: str, beam_config: BeamConfig) -> None:
    """TFMA over the Parquet `files`: the candidate model (and the baseline) at these paths."""
    import tensorflow_model_analysis as tfma
    from tfx_bsl.public import tfxio

    reader = tfx_io(columns, label)
    shared_models = [tfma.default_eval_shared_model(eval_saved_model_path=candidate, model_name=CANDIDATE,
                                                    eval_config=tfma_config)]
    if baseline is not None:
        shared_models.append(tfma.default_eval_shared_model(eval_saved_model_path=baseline, model_name=BASELINE,
                                                            eval_config=tfma_config))
    adapter = tfxio.TensorAdapterConfig(reader.ArrowSchema(), reader.TensorRepresentations())
    to_inputs = ToTFMAInputs(columns, label, vocabulary, reader.ArrowSchema(), tfma.ARROW_INPUT_COLUMN, BATCH_ROWS)

    def build(root: beam.Pipeline) -> None:
        _ = (root
             | "ReadHeldOut" >> beam.Create(files)
             | "ReadParquet" >> beam.io.ReadAllFromParquetBatched(columns=list(columns))
             | "ToTFMAInputs" >> beam.ParDo(to_inputs)
             | "TFMA" >> tfma.ExtractEvaluateAndWriteResults(
                 eval_shared_model=shared_models if baseline is not None else shared_models[0],
                 eval_config=tfma_config, output_path=tfma_dir, tensor_adapter_config=adapter))

    beam_run.run(beam_config, build)


def number(value: float) -> float | None:
    """A metric as JSON can hold it: NaN (e.g. precision of a class never predicted) becomes null."""
    return None if value is None or not math.isfinite(value) else float(value)


def read_metrics(tfma_dir: str, vocabulary: tuple[str, ...]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """slice key -> {"candidate"|"baseline"|"change": {metric: value or {class: value}}}."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    sliced: dict[tuple, dict[str, dict[str, Any]]] = {}
    for for_slice in tfma.load_metrics(tfma_dir):
        slice_key = slicer_lib.deserialize_slice_key(for_slice.slice_key)
        by_model = sliced.setdefault(slice_key, {})
        for entry in for_slice.metric_keys_and_values:
            key = entry.key
            if key.name not in METRICS or not entry.value.HasField("double_value"):
                continue
            role = "change" if key.is_diff else (BASELINE if key.model_name == BASELINE else CANDIDATE)
            value = number(entry.value.double_value.value)
            values = by_model.setdefault(role, {})
            if key.name in PER_CLASS:
                class_id = key.sub_key.class_id.value if key.sub_key.HasField("class_id") else None
                if class_id is None:
                    continue
                values.setdefault(key.name, {})[vocabulary[class_id]] = value
            else:
                values[key.name] = int(value) if key.name == "example_count" and value is not None else value
    return sliced


def confusion_matrices(tfma_dir: str, vocabulary: tuple[str, ...]) -> dict[tuple, list[list[int]]]:
    """The candidate's multi-class confusion matrix per slice: rows actual class, columns predicted."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    matrices = {}
    for plots in tfma.load_plots(tfma_dir):
        matrix = [[0] * len(vocabulary) for _ in vocabulary]
        for entry in plots.plot_keys_and_values:
            if entry.key.model_name not in ("", CANDIDATE):
                continue
            for confusion in entry.value.multi_class_confusion_matrix_at_thresholds.matrices[:1]:
                for cell in confusion.entries:
                    if 0 <= cell.actual_class_id < len(vocabulary) and 0 <= cell.predicted_class_id < len(vocabulary):
                        matrix[cell.actual_class_id][cell.predicted_class_id] += int(round(cell.num_weighted_examples))
        matrices[slicer_lib.deserialize_slice_key(plots.slice_key)] = matrix
    return matrices


def blank_undefined_auc(sliced: dict[tuple, dict[str, dict[str, Any]]], matrices: dict[tuple, list[list[int]]],
                         vocabulary: tuple[str, ...]) -> None:
    """One-vs-rest AUC is undefined for a class with no positive or no negative example in a slice
    (TFMA reports 0 there): make it null, and the macro average with it."""
    for slice_key, by_model in sliced.items():
        matrix = matrices.get(slice_key)
        if matrix is None:
            continue
        rows = [sum(row) for row in matrix]
        total = sum(rows)
        undefined = [name for name, count in zip(vocabulary, rows) if count == 0 or count == total]
        if not undefined:
            continue
        for values in by_model.values():
            if isinstance(values.get("auc"), dict):
                values["auc"].update({name: None for name in undefined})
            if "macro_auc" in values:
                values["macro_auc"] = None


def tfma_failures(tfma_dir: str, applied: list[Threshold], sliced: dict[tuple, dict[str, dict[str, Any]]],
                   vocabulary: tuple[str, ...]) -> tuple[bool, list[dict[str, Any]]]:
    """TFMA's verdict on the thresholds it checked, each failure with the threshold and by how much."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    validation = tfma.load_validation_result(tfma_dir)
    failures = []
    for for_slice in validation.metric_validations_per_slice:
        slice_key = slicer_lib.deserialize_slice_key(for_slice.slice_key)
        for found in for_slice.failures:
            key = found.metric_key
            kind = "change" if found.metric_threshold.HasField("change_threshold") else "value"
            threshold = next((t for t in applied if t.metric == key.name and t.kind == kind), None)
            class_name = (vocabulary[key.sub_key.class_id.value] if key.sub_key.HasField("class_id")
                          and key.sub_key.class_id.value < len(vocabulary) else None)
            value = number(found.metric_value.double_value.value) if found.HasField("metric_value") else None
            failures.append(failure(threshold, key.name, class_name, slice_key, kind, value,
                                     sliced.get(slice_key, {}), found.message))
    return validation.validation_ok, failures
