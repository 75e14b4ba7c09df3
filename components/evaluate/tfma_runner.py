"""TFMA itself: the EvalConfig (model specs, metrics with their thresholds, slices), the Beam
pipeline that runs it over the held-out split, and reading its metrics, plots and validation back.

The metrics are those of `components.evaluate.metrics` for the kind of problem, for the candidate
and the baseline, overall and per slice. A classifier's precision and recall are those of the class
the model answers (its top-1), as in the confusion matrix, not of "probability above 0.5". The
thresholds on TFMA's own metrics are TFMA metric thresholds, checked by TFMA's validator on the
overall slice (on every slice as well with `thresholds_on_slices`); the derived metrics (`rmse`,
`r2`) are computed here from TFMA's numbers.
"""
from __future__ import annotations

import json
import math
from typing import Any

import apache_beam as beam

from components import beam_run
from components.beam_run import BeamConfig
from components.evaluate import metrics as metric_table
from components.evaluate.blessing import BASELINE, CANDIDATE, Threshold, failure
from components.evaluate.tfma_inputs import BATCH_ROWS, LABEL_INDEX_KEY, ToTFMAInputs, tfx_io
from components.problem import REGRESSION
from components.serving import PREDICTIONS, PROBABILITIES, SERVING_SIGNATURE

TFMA_DIR = "tfma"


def _metric_threshold(threshold: Threshold):
    from tensorflow_model_analysis.proto import config_pb2

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


def eval_config(kind: str, label: str, vocabulary: tuple[str, ...], positive_index: int, slices: tuple[str, ...],
                applied: list[Threshold], has_baseline: bool, thresholds_on_slices: bool = False):
    """TFMA's EvalConfig for a model of `kind`: model specs, metrics with their thresholds, and slices."""
    from tensorflow_model_analysis.proto import config_pb2

    table = metric_table.BY_KIND[kind]

    def model_spec(name: str, is_baseline: bool):
        if kind == REGRESSION:
            return config_pb2.ModelSpec(name=name, signature_name=SERVING_SIGNATURE, label_key=label,
                                        prediction_key=PREDICTIONS, is_baseline=is_baseline)
        return config_pb2.ModelSpec(name=name, signature_name=SERVING_SIGNATURE, label_key=LABEL_INDEX_KEY,
                                    prediction_key=PROBABILITIES, is_baseline=is_baseline)

    def metric(name: str, **settings: Any):
        metric_config = config_pb2.MetricConfig(class_name=table[name].tfma,
                                                config=json.dumps({"name": name, **settings}))
        if table[name].per_class:
            return metric_config  # per-class thresholds: see blessing.own_failures
        specs = [config_pb2.SlicingSpec()]
        if thresholds_on_slices:
            specs += [config_pb2.SlicingSpec(feature_keys=[column]) for column in slices]
        for threshold in (t for t in applied if t.metric == name):
            # One per-slice threshold per kind: TFMA allows a value and a change threshold in one.
            for spec in specs:
                metric_config.per_slice_thresholds.add(slicing_specs=[spec]).threshold.CopyFrom(
                    _metric_threshold(threshold))
        return metric_config

    if kind == REGRESSION:
        metrics_specs = [config_pb2.MetricsSpec(metrics=[metric(name) for name, found in table.items() if found.tfma])]
    else:
        class_ids = list(range(len(vocabulary)))
        metrics_specs = [
            config_pb2.MetricsSpec(metrics=[metric("example_count"), metric("accuracy"), metric("loss"),
                                            config_pb2.MetricConfig(class_name="MultiClassConfusionMatrixPlot")]),
            # No CalibrationPlot: TFMA computes metrics example by example in Python, and the per-class
            # calibration histograms cost as much again as a metric while no one reads them in the KFP UI.
            config_pb2.MetricsSpec(metrics=[metric(name, **({"top_k": 1} if name in ("precision", "recall") else {}))
                                            for name in metric_table.per_class(kind)],
                                   binarize=config_pb2.BinarizationOptions(class_ids={"values": class_ids})),
            # One-vs-rest AUC per class, averaged with equal weights.
            config_pb2.MetricsSpec(metrics=[metric("macro_auc")], aggregate=config_pb2.AggregationOptions(
                macro_average=True, class_weights={class_id: 1.0 for class_id in class_ids})),
        ]
        if kind == "binary":
            metrics_specs.append(config_pb2.MetricsSpec(
                metrics=[metric("roc_auc"), metric("pr_auc")],
                binarize=config_pb2.BinarizationOptions(class_ids={"values": [positive_index]})))
    models = [model_spec(CANDIDATE, False)] + ([model_spec(BASELINE, True)] if has_baseline else [])
    return config_pb2.EvalConfig(
        model_specs=models, metrics_specs=metrics_specs,
        slicing_specs=[config_pb2.SlicingSpec()] + [config_pb2.SlicingSpec(feature_keys=[name]) for name in slices],
        options=config_pb2.Options(include_default_metrics={"value": False}))


def slice_columns(tfma_config) -> tuple[str, ...]:
    """The columns the EvalConfig slices by: the rows of a batch share their values."""
    columns = []
    for spec in tfma_config.slicing_specs:
        columns += list(spec.feature_keys) + list(spec.feature_values)
    return tuple(dict.fromkeys(columns))


def run_tfma(files: list[str], columns: dict[str, str], label: str, vocabulary: tuple[str, ...] | None,
             candidate: str, baseline: str | None, tfma_config, tfma_dir: str, beam_config: BeamConfig,
             per_example: bool = False, progress_token: str | None = None) -> None:
    """TFMA over the Parquet `files`: the candidate model (and the baseline) at these paths; a
    classifier's `vocabulary` turns labels into class indices (None: a regression label).

    TFMA computes the metrics of `tfma_config` over batches of examples that share their slice
    values (`components.evaluate.batched_metrics`); `per_example` runs TFMA's own per-example
    metrics instead, with its default extractors (the same numbers but where TFMA 0.52 is wrong,
    `components.evaluate.batched_combiners`; 28x slower at 100k rows: bench/evaluate)."""
    import tensorflow_model_analysis as tfma
    from tfx_bsl.public import tfxio

    from components.evaluate.batched_metrics import batched_config
    from components.evaluate.extractors import batch_extractors

    if not per_example:
        try:
            tfma_config = batched_config(tfma_config)
        except NotImplementedError as refused:  # a metric or slice with no batched form: TFMA's own path
            print(f"evaluate: TFMA's per-example metrics ({refused})", flush=True)
            per_example = True
    reader = tfx_io(columns, indexed_label=vocabulary is not None)
    shared_models = [tfma.default_eval_shared_model(eval_saved_model_path=candidate, model_name=CANDIDATE,
                                                    eval_config=tfma_config)]
    if baseline is not None:
        shared_models.append(tfma.default_eval_shared_model(eval_saved_model_path=baseline, model_name=BASELINE,
                                                            eval_config=tfma_config))
    eval_shared_model = shared_models if baseline is not None else shared_models[0]
    adapter = tfxio.TensorAdapterConfig(reader.ArrowSchema(), reader.TensorRepresentations())
    to_inputs = ToTFMAInputs(columns, label, vocabulary, reader.ArrowSchema(), tfma.ARROW_INPUT_COLUMN, BATCH_ROWS,
                             group_by=() if per_example else slice_columns(tfma_config),
                             progress_token=progress_token)
    extractors = None if per_example else batch_extractors(eval_shared_model, tfma_config, adapter)

    def build(root: beam.Pipeline) -> None:
        _ = (root
             | "ReadHeldOut" >> beam.Create(files)
             | "ReadParquet" >> beam.io.ReadAllFromParquetBatched(columns=list(columns))
             | "ToTFMAInputs" >> beam.ParDo(to_inputs)
             | "TFMA" >> tfma.ExtractEvaluateAndWriteResults(
                 eval_shared_model=eval_shared_model, eval_config=tfma_config, extractors=extractors,
                 output_path=tfma_dir, tensor_adapter_config=adapter))

    beam_run.run(beam_config, build)


def number(value: float) -> float | None:
    """A metric as JSON can hold it: NaN (e.g. precision of a class never predicted) becomes null."""
    return None if value is None or not math.isfinite(value) else float(value)


def read_metrics(tfma_dir: str, kind: str, vocabulary: tuple[str, ...]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """slice key -> {"candidate"|"baseline"|"change": {metric: value or {class: value}}}."""
    table = metric_table.BY_KIND[kind]
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    sliced: dict[tuple, dict[str, dict[str, Any]]] = {}
    for for_slice in tfma.load_metrics(tfma_dir):
        slice_key = slicer_lib.deserialize_slice_key(for_slice.slice_key)
        by_model = sliced.setdefault(slice_key, {})
        for entry in for_slice.metric_keys_and_values:
            key = entry.key
            if key.name not in table or not entry.value.HasField("double_value"):
                continue
            role = "change" if key.is_diff else (BASELINE if key.model_name == BASELINE else CANDIDATE)
            value = number(entry.value.double_value.value)
            values = by_model.setdefault(role, {})
            if table[key.name].per_class:
                class_id = key.sub_key.class_id.value if key.sub_key.HasField("class_id") else None
                if class_id is None:
                    continue
                values.setdefault(key.name, {})[vocabulary[class_id]] = value
            else:
                values[key.name] = int(value) if key.name == "example_count" and value is not None else value
    return sliced


def derive(sliced: dict[tuple, dict[str, dict[str, Any]]], kind: str, label_variance: float | None) -> None:
    """Add the derived metrics: rmse on every slice, r2 (1 - mse / the label's variance) overall."""
    if kind != REGRESSION:
        return
    for slice_key, by_model in sliced.items():
        for role in (CANDIDATE, BASELINE):
            values = by_model.get(role)
            if values is None:
                continue
            mse = values.get("mse")
            values["rmse"] = math.sqrt(mse) if mse is not None else None
            if not slice_key:
                values["r2"] = float(1 - mse / label_variance) if mse is not None and label_variance else None
        if CANDIDATE in by_model and BASELINE in by_model:
            change = by_model.setdefault("change", {})
            for name in ("rmse", "r2"):
                mine, theirs = by_model[CANDIDATE].get(name), by_model[BASELINE].get(name)
                if mine is not None and theirs is not None:
                    change[name] = mine - theirs


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


def tfma_failures(tfma_dir: str, kind: str, applied: list[Threshold],
                  sliced: dict[tuple, dict[str, dict[str, Any]]], vocabulary: tuple[str, ...]
                  ) -> tuple[bool, list[dict[str, Any]]]:
    """TFMA's verdict on the thresholds it checked, each failure with the threshold and by how much."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    validation = tfma.load_validation_result(tfma_dir)
    table = metric_table.BY_KIND[kind]
    if not any(table[t.metric].tfma and not table[t.metric].per_class for t in applied if t.metric in table):
        # TFMA checked nothing (every applied threshold is per-class or derived), which it reports as
        # "missing thresholds", not as a verdict.
        return True, []
    failures = []
    # In slice order (overall first, as own_failures orders them), not in the order TFMA's pipeline
    # happened to finish the slices, which depends on how the examples were batched and bundled.
    by_slice = sorted(((slicer_lib.deserialize_slice_key(for_slice.slice_key), for_slice)
                       for for_slice in validation.metric_validations_per_slice),
                      key=lambda pair: [(column, str(value)) for column, value in pair[0]])
    for slice_key, for_slice in by_slice:
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
