"""The evaluate step: TensorFlow Model Analysis on Beam over the held-out split, the candidate model
side by side with the baseline (the model in production), and the blessing that decides the push.

The held-out split is `test` when the examples have one, else `eval`. Its Parquet shards are read
in Arrow batches and each batch becomes tf.Examples in one vectorized call (tfx_bsl's encoder): the
features as the model's `serving_default` signature parses them (numbers as float_list, text as
bytes_list, a missing value as an empty feature, which the model fills as in training), the raw
label and any slice columns for slicing, and the label's index in the candidate's label vocabulary
(`LABEL_INDEX_KEY`, int64): TFMA compares that index with the `probabilities` output. Rows whose
label the candidate never saw in training cannot be scored and are left out (counted and reported).

Metrics (TFMA, candidate and baseline, overall and per slice): example count, accuracy, loss
(cross-entropy), per-class precision, recall, one-vs-rest AUC and calibration (mean prediction /
mean label), the macro average of the one-vs-rest AUCs (`macro_auc`), and the multi-class confusion
matrix plot. Precision and recall are those of the class the model answers (its top-1), as in the
confusion matrix, not of "probability above 0.5".

Thresholds (`EvaluationConfig.value_thresholds` / `change_thresholds`) become TFMA metric thresholds
and are checked by TFMA's validator on the overall slice (on every slice as well with
`thresholds_on_slices`). The model is blessed when every applied threshold holds. When a kind of
threshold is not configured, a default applies, and the blessing says so (`defaulted`, and each
threshold's `source`):

- value, when `value_thresholds` is empty: accuracy strictly above the share of the most frequent
  class in the evaluated split. That is what a model scores by always answering the commonest
  class: a model that does no better has learnt nothing, whatever the data (a fixed bar such as 0.5
  is trivial for a 95/5 problem and unreachable for a hard 20-class one).
- change, when `change_thresholds` is empty and there is a baseline: accuracy not lower than the
  baseline's by more than 0.01 (`DEFAULT_MAX_ACCURACY_DROP`), so noise on a small split does not
  block every retrain but a real regression does.

With no baseline (the first run) change thresholds are not applied: value thresholds alone decide,
and the blessing lists the change thresholds as skipped with the reason.

The baseline is a `model` artifact or a SavedModel as push copied it to the serving directory
(no manifest, no label vocabulary there). Both are scored against the candidate's label indices, so a
baseline whose classes differ from the candidate's (a different vocabulary, or for a served copy a
different number of classes) cannot be compared: it is left out, change thresholds are skipped, and
the blessing's notes say why.

Output layout (an `evaluation` artifact):

    tfma/                 TFMA's own output: metrics, plots, validations, eval_config.json
    blessing.json         {blessed, failures: [{metric, class, slice, threshold, value, ...,
                          by_how_much}], baseline, thresholds, skipped_thresholds, defaulted, notes}
    metrics.json          overall and per-slice metrics of the candidate and the baseline, plain numbers
    confusion_matrix.json {categories, matrix}: rows are the actual class, columns the predicted one
                          (a KFP ClassificationMetrics artifact takes it as it is)
    report.md             what a person reads in the KFP UI
    _manifest.json        written last
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from components import artifacts, beam_run, ingest
from components.schema import NUMERIC, Schema
from pipeline.config import BeamConfig, EvaluationConfig
from pipeline.errors import ConfigError, DataError

log = logging.getLogger("tunepipe.evaluate")

KIND = "evaluation"
MODEL_KIND = "model"
TFMA_DIR = "tfma"
BLESSING = "blessing.json"
METRICS = "metrics.json"
CONFUSION_MATRIX = "confusion_matrix.json"
REPORT = "report.md"

CANDIDATE = "candidate"
BASELINE = "baseline"
OVERALL = "overall"
# The label as an index into the candidate's label vocabulary: what TFMA compares with `probabilities`.
LABEL_INDEX_KEY = "__tunepipe_label_index__"
SERVING_SIGNATURE = "serving_default"
PREDICTION_KEY = "probabilities"
EXAMPLES_INPUT = "examples"
LABEL_VOCABULARY = "label_vocabulary.txt"
DEFAULT_MAX_ACCURACY_DROP = 0.01
# Rows per Arrow batch handed to TFMA (one model call each).
BATCH_ROWS = 4096
_PROGRESS_EVERY_ROWS = 100_000

# Metric name -> the TFMA metric computing it, and whether it is computed per class.
_METRICS = {
    "example_count": ("ExampleCount", False),
    "accuracy": ("SparseCategoricalAccuracy", False),
    "loss": ("SparseCategoricalCrossentropy", False),
    "macro_auc": ("AUC", False),
    "precision": ("Precision", True),
    "recall": ("Recall", True),
    "auc": ("AUC", True),
    "calibration": ("Calibration", True),
}
_PER_CLASS = tuple(name for name, (_, per_class) in _METRICS.items() if per_class)
_OVERALL_ORDER = ("example_count", "accuracy", "loss", "macro_auc")


@dataclass(frozen=True)
class EvaluateResult:
    path: str
    blessed: bool
    split: str
    example_count: int
    metrics: dict[str, Any]  # the candidate's overall metrics (per-class ones as {class: value})
    baseline: str | None
    baseline_metrics: dict[str, Any] | None
    failures: list[dict[str, Any]]
    thresholds: list[dict[str, Any]]  # applied
    skipped_thresholds: list[dict[str, Any]]  # configured or default, not applied, with the reason
    defaulted: bool
    notes: list[str] = field(default_factory=list)
    digest: str = ""


# --- inputs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Model:
    path: str
    label_vocabulary: tuple[str, ...] | None
    known_vocabulary: bool = True  # False: only the number of classes is known


def _read_vocabulary(path: Path, manifest: dict[str, Any] | None) -> tuple[str, ...] | None:
    if manifest and manifest.get("label_vocabulary"):
        return tuple(str(label) for label in manifest["label_vocabulary"])
    if (path / LABEL_VOCABULARY).is_file():
        return tuple(line for line in (path / LABEL_VOCABULARY).read_text().splitlines() if line)
    return None


def _output_classes(path: Path, role: str) -> int | None:
    """Check that the SavedModel has the signature TFMA will call; the number of classes it scores.

    Reads saved_model.pb only (no graph is loaded), so a wrong directory fails here in one line
    rather than deep inside the Beam pipeline.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as error:  # protobuf raises its own DecodeError
        raise DataError(f"the {role} {path}: saved_model.pb cannot be read ({error})") from None
    signature = next((graph.signature_def[SERVING_SIGNATURE] for graph in saved_model.meta_graphs
                      if SERVING_SIGNATURE in graph.signature_def), None)
    if signature is None or EXAMPLES_INPUT not in signature.inputs or PREDICTION_KEY not in signature.outputs:
        raise DataError(f"the {role} {path} has no {SERVING_SIGNATURE!r} signature taking serialized tf.Examples "
                        f"({EXAMPLES_INPUT!r}) and returning {PREDICTION_KEY!r}: not a model tunepipe exported")
    dims = signature.outputs[PREDICTION_KEY].tensor_shape.dim
    return dims[-1].size if dims and dims[-1].size > 0 else None


def _candidate(model: str | os.PathLike[str]) -> _Model:
    path = Path(model)
    manifest = artifacts.read_manifest(path, MODEL_KIND)
    if not (path / "saved_model.pb").is_file():
        raise DataError(f"{path}: the model artifact has no saved_model.pb")
    vocabulary = _read_vocabulary(path, manifest)
    if not vocabulary:
        raise DataError(f"{path}: the model artifact has no label vocabulary ({LABEL_VOCABULARY})")
    _output_classes(path, "model")
    return _Model(str(path), vocabulary)


def _baseline(baseline: str | os.PathLike[str]) -> _Model:
    """A `model` artifact, or a SavedModel as pushed to the serving directory (no manifest there)."""
    path = Path(baseline)
    if not path.is_dir():
        raise DataError(f"the baseline model {path} does not exist")
    manifest = None
    if (path / artifacts.MANIFEST).is_file():
        manifest = artifacts.read_manifest(path, MODEL_KIND)
    if not (path / "saved_model.pb").is_file():
        raise DataError(f"the baseline {path} is neither a model artifact nor a SavedModel directory "
                        f"(no saved_model.pb)")
    vocabulary = _read_vocabulary(path, manifest)
    classes = _output_classes(path, "baseline")
    if vocabulary is None and classes is not None:
        # A served copy has no vocabulary file: the class count is all that can be compared.
        vocabulary = tuple(f"class {index}" for index in range(classes))
        return _Model(str(path), vocabulary, known_vocabulary=False)
    return _Model(str(path), vocabulary)


def _incomparable(baseline: _Model, vocabulary: tuple[str, ...]) -> bool:
    """True when the baseline's class i is not the candidate's class i (as far as can be known)."""
    if baseline.label_vocabulary is None:
        return False
    if not baseline.known_vocabulary:
        return len(baseline.label_vocabulary) != len(vocabulary)
    return baseline.label_vocabulary != vocabulary


def held_out_split(examples: str | os.PathLike[str]) -> str:
    """`test` when the examples have a test split, else `eval`."""
    return "test" if ingest.split_files(examples, "test") else "eval"


def _check_slices(config: EvaluationConfig, schema: Schema, examples: str | os.PathLike[str]) -> None:
    unknown = [name for name in config.slices if name not in schema.names]
    if unknown:
        raise ConfigError(f"evaluation.slices: {', '.join(repr(name) for name in unknown)} "
                          f"{'is not a column' if len(unknown) == 1 else 'are not columns'} of {examples} "
                          f"(columns: {', '.join(schema.names)})")


@dataclass(frozen=True)
class _LabelCounts:
    per_class: dict[str, int]  # rows per class of the candidate's vocabulary
    unknown: int  # rows whose label the candidate does not know

    @property
    def known(self) -> int:
        return sum(self.per_class.values())

    @property
    def majority_share(self) -> float:
        return max(self.per_class.values()) / self.known if self.known else 0.0


def _label_counts(files: list[str], label: str, vocabulary: tuple[str, ...]) -> _LabelCounts:
    """One pass over the label column only: class counts for the default threshold and the report."""
    counts = np.zeros(len(vocabulary), dtype=np.int64)
    unknown = 0
    value_set = pa.array(vocabulary, pa.string())
    for path in files:
        with FileSystems.open(path) as handle:
            column = pq.read_table(handle, columns=[label]).column(label)
        indices = pc.index_in(pc.cast(column, pa.string()), value_set=value_set)
        known = indices.drop_null().to_numpy()
        counts += np.bincount(known, minlength=len(vocabulary))
        unknown += len(indices) - len(known)
    return _LabelCounts({name: int(count) for name, count in zip(vocabulary, counts)}, unknown)


# --- tf.Examples for TFMA -------------------------------------------------------------------------

def _list_array(values: pa.Array, item_type: pa.DataType) -> pa.LargeListArray:
    """One value per row as a one-element list; a null value becomes a null, empty list (an absent
    feature), laid out as the tf.Example decoder lays it out: tensor adapters read the offsets alone."""
    values = values.cast(item_type)
    present = values.is_valid().to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(present, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), values.drop_null(), mask=pa.array(~present))


class _ToTFMAInputs(beam.DoFn):
    """A Parquet table in, Arrow record batches of tf.Example columns plus the serialized examples out."""

    def __init__(self, columns: dict[str, str], label: str, vocabulary: tuple[str, ...], arrow_schema: pa.Schema,
                 raw_column: str, batch_rows: int):
        self._columns = columns  # name -> NUMERIC or CATEGORICAL
        self._label = label
        self._vocabulary = vocabulary
        self._arrow_schema = arrow_schema
        self._raw_column = raw_column
        self._batch_rows = batch_rows
        self._rows = 0

    def process(self, table: pa.Table) -> Iterator[pa.RecordBatch]:
        from tfx_bsl.coders import example_coder

        index = pc.index_in(pc.cast(table.column(self._label), pa.string()),
                            value_set=pa.array(self._vocabulary, pa.string()))
        table = table.append_column(LABEL_INDEX_KEY, index).filter(pc.is_valid(index))
        for start in range(0, table.num_rows, self._batch_rows):
            part = table.slice(start, self._batch_rows).combine_chunks()
            arrays = []
            for name in self._arrow_schema.names:
                if name == self._raw_column:
                    continue
                item = self._arrow_schema.field(name).type.value_type
                values = part.column(name).chunk(0) if part.column(name).num_chunks else pa.array([], item)
                if name != LABEL_INDEX_KEY and self._columns[name] != NUMERIC:
                    values = values.cast(pa.string())
                arrays.append(_list_array(values, item))
            features = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(
                [field for field in self._arrow_schema if field.name != self._raw_column]))
            serialized = pa.array(example_coder.RecordBatchToExamples(features), pa.large_binary())
            raw = pa.LargeListArray.from_arrays(pa.array(np.arange(len(serialized) + 1, dtype=np.int64)), serialized)
            yield pa.RecordBatch.from_arrays(arrays + [raw], schema=self._arrow_schema)
            before, self._rows = self._rows, self._rows + part.num_rows
            if self._rows // _PROGRESS_EVERY_ROWS > before // _PROGRESS_EVERY_ROWS:
                log.info("evaluate: %d rows fed to TFMA", self._rows)


def _tfx_io(columns: dict[str, str], label: str):
    """The tfx_bsl reader these tf.Examples would be decoded with: its Arrow schema and tensor
    representations are the layout our batches use, so TFMA reads them as it reads TFRecords."""
    import tensorflow_model_analysis as tfma
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio

    metadata = schema_pb2.Schema()
    for name, kind in columns.items():
        metadata.feature.add(name=name, type=schema_pb2.FLOAT if kind == NUMERIC else schema_pb2.BYTES)
    metadata.feature.add(name=LABEL_INDEX_KEY, type=schema_pb2.INT)
    return tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["tunepipe", "evaluate"],
                                     schema=metadata, raw_record_column_name=tfma.ARROW_INPUT_COLUMN)


# --- the EvalConfig ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    metric: str
    kind: str  # "value" or "change"
    source: str  # "config" or "default"
    lower: float | None = None
    upper: float | None = None
    direction: str | None = None  # change: higher_is_better / lower_is_better
    absolute: float | None = None
    relative: float | None = None
    above: float | None = None  # value: strictly above this (TFMA's bound is the next float up)
    reason: str | None = None  # why a default has the value it has

    def describe(self) -> str:
        if self.kind == "value":
            parts = []
            if self.above is not None:
                parts.append(f"> {self.above:.6g}")
            elif self.lower is not None:
                parts.append(f">= {self.lower:.6g}")
            if self.upper is not None:
                parts.append(f"<= {self.upper:.6g}")
            return " and ".join(parts)
        comparison = ">=" if self.direction == "higher_is_better" else "<="
        parts = []
        if self.absolute is not None:
            parts.append(f"change {comparison} {self.absolute:+.6g} vs baseline")
        if self.relative is not None:
            parts.append(f"relative change {comparison} {self.relative:+.6g} vs baseline")
        return " and ".join(parts)

    def to_json(self) -> dict[str, Any]:
        fields = {key: value for key, value in self.__dict__.items() if value is not None}
        return {**fields, "threshold": self.describe()}


def thresholds(config: EvaluationConfig, majority_share: float, has_baseline: bool
               ) -> tuple[list[Threshold], list[Threshold], list[str]]:
    """The thresholds to apply, those skipped, and notes saying which defaults were used and why."""
    applied: list[Threshold] = []
    skipped: list[Threshold] = []
    notes: list[str] = []
    if config.value_thresholds:
        applied += [Threshold(metric, "value", "config", lower=bounds.get("lower"), upper=bounds.get("upper"))
                    for metric, bounds in config.value_thresholds.items()]
    else:
        # Strictly above: a model that always answers the commonest class scores exactly the share.
        reason = "the share of the most frequent class: what always answering it scores"
        applied.append(Threshold("accuracy", "value", "default", lower=math.nextafter(majority_share, math.inf),
                                 above=majority_share, reason=reason))
        notes.append(f"no value thresholds configured: default accuracy > {majority_share:.4f}, {reason}")
    if config.change_thresholds:
        change = [Threshold(metric, "change", "config",
                            direction=str(spec.get("direction") or EvaluationConfig.metric_directions()[metric]),
                            absolute=_float_or_none(spec.get("absolute")),
                            relative=_float_or_none(spec.get("relative")))
                  for metric, spec in config.change_thresholds.items()]
    else:
        change = [Threshold("accuracy", "change", "default", direction="higher_is_better",
                            absolute=-DEFAULT_MAX_ACCURACY_DROP,
                            reason=f"accuracy must not drop by more than {DEFAULT_MAX_ACCURACY_DROP} vs the baseline")]
    if has_baseline:
        applied += change
        if not config.change_thresholds:
            notes.append(f"no change thresholds configured: default accuracy may drop by at most "
                         f"{DEFAULT_MAX_ACCURACY_DROP} vs the baseline")
    else:
        skipped += [Threshold(**{**t.__dict__, "reason": "no baseline model (first run): change thresholds skipped"})
                    for t in change]
        notes.append("no baseline model: change thresholds skipped, value thresholds alone decide")
    return applied, skipped, notes


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def eval_config(vocabulary: tuple[str, ...], slices: tuple[str, ...], applied: list[Threshold],
                has_baseline: bool, thresholds_on_slices: bool = False):
    """TFMA's EvalConfig: model specs, metrics with their thresholds, and slices."""
    from tensorflow_model_analysis.proto import config_pb2

    def model_spec(name: str, is_baseline: bool):
        return config_pb2.ModelSpec(name=name, signature_name=SERVING_SIGNATURE, label_key=LABEL_INDEX_KEY,
                                    prediction_key=PREDICTION_KEY, is_baseline=is_baseline)

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
        metric_config = config_pb2.MetricConfig(class_name=_METRICS[name][0],
                                                config=json.dumps({"name": name, **settings}))
        for threshold in applied:
            if threshold.metric != name or name in _PER_CLASS:  # per-class ones: see _per_class_failures
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
                                        for name in _PER_CLASS],
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


# --- reading TFMA's output ------------------------------------------------------------------------

def _slice_name(slice_key: tuple) -> str:
    if not slice_key:
        return OVERALL
    return ", ".join(f"{column}={_plain(value)}" for column, value in slice_key)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _number(value: float) -> float | None:
    """A metric as JSON can hold it: NaN (e.g. precision of a class never predicted) becomes null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _read_metrics(tfma_dir: str, vocabulary: tuple[str, ...]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """slice key -> {"candidate"|"baseline"|"change": {metric: value or {class: value}}}."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    sliced: dict[tuple, dict[str, dict[str, Any]]] = {}
    for for_slice in tfma.load_metrics(tfma_dir):
        slice_key = slicer_lib.deserialize_slice_key(for_slice.slice_key)
        by_model = sliced.setdefault(slice_key, {})
        for entry in for_slice.metric_keys_and_values:
            key = entry.key
            if key.name not in _METRICS or not entry.value.HasField("double_value"):
                continue
            role = "change" if key.is_diff else (BASELINE if key.model_name == BASELINE else CANDIDATE)
            value = _number(entry.value.double_value.value)
            values = by_model.setdefault(role, {})
            if key.name in _PER_CLASS:
                class_id = key.sub_key.class_id.value if key.sub_key.HasField("class_id") else None
                if class_id is None:
                    continue
                values.setdefault(key.name, {})[vocabulary[class_id]] = value
            else:
                values[key.name] = int(value) if key.name == "example_count" and value is not None else value
    return sliced


def _ordered(values: dict[str, Any]) -> dict[str, Any]:
    order = list(_OVERALL_ORDER) + list(_PER_CLASS)
    per_class_order = {name: index for index, name in enumerate(order)}
    return {name: values[name] for name in sorted(values, key=lambda name: per_class_order.get(name, 99))}


def _confusion_matrices(tfma_dir: str, vocabulary: tuple[str, ...]) -> dict[tuple, list[list[int]]]:
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


def _blank_undefined_auc(sliced: dict[tuple, dict[str, dict[str, Any]]], matrices: dict[tuple, list[list[int]]],
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


def _failure(threshold: Threshold | None, metric: str, class_name: str | None, slice_key: tuple, kind: str,
             value: float | None, by_model: dict[str, dict[str, Any]], message: str = "") -> dict[str, Any]:
    def lookup(role: str) -> float | None:
        found = by_model.get(role, {}).get(metric)
        return found.get(class_name) if isinstance(found, dict) else found

    candidate, baseline = lookup(CANDIDATE), lookup(BASELINE)
    record: dict[str, Any] = {
        "metric": metric, "class": class_name, "slice": _slice_name(slice_key), "kind": kind,
        "threshold": threshold.describe() if threshold else "",
        "value": value, "candidate_value": candidate, "baseline_value": baseline,
        "by_how_much": _shortfall(threshold, value, candidate, baseline) if threshold else None,
    }
    if message.strip():
        record["message"] = " ".join(message.split())
    return record


def _tfma_failures(tfma_dir: str, applied: list[Threshold], sliced: dict[tuple, dict[str, dict[str, Any]]],
                   vocabulary: tuple[str, ...]) -> tuple[bool, list[dict[str, Any]]]:
    """TFMA's verdict on the thresholds it checked, each failure with the threshold and by how much."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    validation = tfma.load_validation_result(tfma_dir)
    failures = []
    for for_slice in validation.metric_validations_per_slice:
        slice_key = slicer_lib.deserialize_slice_key(for_slice.slice_key)
        for failure in for_slice.failures:
            key = failure.metric_key
            kind = "change" if failure.metric_threshold.HasField("change_threshold") else "value"
            threshold = next((t for t in applied if t.metric == key.name and t.kind == kind), None)
            class_name = (vocabulary[key.sub_key.class_id.value] if key.sub_key.HasField("class_id")
                          and key.sub_key.class_id.value < len(vocabulary) else None)
            value = _number(failure.metric_value.double_value.value) if failure.HasField("metric_value") else None
            failures.append(_failure(threshold, key.name, class_name, slice_key, kind, value,
                                     sliced.get(slice_key, {}), failure.message))
    return validation.validation_ok, failures


def _per_class_failures(applied: list[Threshold], sliced: dict[tuple, dict[str, dict[str, Any]]],
                        slices: tuple[str, ...], on_slices: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-class thresholds, checked here on TFMA's numbers (TFMA 0.52 keys a threshold without the
    metric's own top_k, so it cannot find the top-1 precision and recall it computed). A value that is
    undefined (a class absent from a slice, or never predicted) is not checked, and a note says so."""
    failures, undefined = [], []
    in_scope = [key for key in sliced if not key or (on_slices and len(key) == 1 and key[0][0] in slices)]
    for threshold in (t for t in applied if t.metric in _PER_CLASS):
        role = CANDIDATE if threshold.kind == "value" else "change"
        for slice_key in sorted(in_scope, key=lambda key: [(c, str(v)) for c, v in key]):
            by_model = sliced[slice_key]
            for class_name, value in by_model.get(role, {}).get(threshold.metric, {}).items():
                if value is None:
                    undefined.append(f"{threshold.metric} of class {class_name} on {_slice_name(slice_key)}")
                    continue
                if _shortfall(threshold, value, by_model.get(CANDIDATE, {}).get(threshold.metric, {}).get(class_name),
                              by_model.get(BASELINE, {}).get(threshold.metric, {}).get(class_name)) is not None:
                    failures.append(_failure(threshold, threshold.metric, class_name, slice_key, threshold.kind,
                                             value, by_model))
    notes = [f"undefined, so not held to thresholds: {', '.join(dict.fromkeys(undefined))}"] if undefined else []
    return failures, notes


def _shortfall(threshold: Threshold, value: float | None, candidate: float | None,
               baseline: float | None) -> float | None:
    """How far the metric is on the wrong side of the threshold (a positive number), or None if unknown."""
    if value is None:
        return None
    misses = []
    if threshold.kind == "value":
        if threshold.lower is not None and value < threshold.lower:
            misses.append(threshold.lower - value)
        if threshold.upper is not None and value > threshold.upper:
            misses.append(value - threshold.upper)
    else:
        higher = threshold.direction == "higher_is_better"
        if threshold.absolute is not None:
            misses.append((threshold.absolute - value) if higher else (value - threshold.absolute))
        if threshold.relative is not None and baseline:
            ratio = value / baseline
            misses.append((threshold.relative - ratio) if higher else (ratio - threshold.relative))
    missed = [miss for miss in misses if miss > 0]
    return float(max(missed)) if missed else None


# --- the step -------------------------------------------------------------------------------------

def run(examples: str | os.PathLike[str], model: str | os.PathLike[str], out: str | os.PathLike[str],
        config: EvaluationConfig, beam_config: BeamConfig, baseline: str | os.PathLike[str] | None = None
        ) -> EvaluateResult:
    """Evaluate `model` (and `baseline`, the model in production, if any) on the held-out split of
    `examples` with TFMA and write the `evaluation` artifact, with the blessing, at `out`."""
    out = Path(out)
    artifacts.read_manifest(examples, ingest.KIND)
    schema = Schema.read(examples)
    candidate = _candidate(model)
    baseline_model = _baseline(baseline) if baseline is not None else None
    _check_slices(config, schema, examples)
    split = held_out_split(examples)
    files = ingest.split_files(examples, split)
    if not files:
        raise DataError(f"{examples}: the {split} split has no data files")
    vocabulary = candidate.label_vocabulary
    notes: list[str] = []
    if baseline_model is not None and _incomparable(baseline_model, vocabulary):
        notes.append(f"the baseline {baseline_model.path} scores other classes "
                     f"({', '.join(baseline_model.label_vocabulary)}) than the candidate "
                     f"({', '.join(vocabulary)}): it cannot be compared, so it is left out")
        log.warning("evaluate: %s", notes[-1])
        baseline_model = None

    label = schema.label.name
    counts = _label_counts(files, label, vocabulary)
    if counts.known == 0:
        raise DataError(f"{examples}: the {split} split has no rows with a label the model knows "
                        f"({', '.join(vocabulary)})")
    if counts.unknown:
        notes.append(f"{counts.unknown} row(s) of the {split} split have a label the model was not trained on; "
                     f"they are left out")
        log.warning("evaluate: %s", notes[-1])
    applied, skipped, threshold_notes = thresholds(config, counts.majority_share, baseline_model is not None)
    notes += threshold_notes
    tfma_config = eval_config(vocabulary, config.slices, applied, baseline_model is not None,
                              config.thresholds_on_slices)

    # Features for the model, slice columns for slicing, the raw label for slicing by class.
    kinds = schema.kinds()
    columns = {name: kinds[name] for name in
               dict.fromkeys([column.name for column in schema.features] + list(config.slices) + [label])}
    log.info("evaluate: TFMA over the %s split (%d rows) for %s%s on %s", split, counts.known, candidate.path,
             f" against the baseline {baseline_model.path}" if baseline_model else " (no baseline)",
             beam_config.runner)
    started = time.monotonic()
    with artifacts.building(out) as partial:
        tfma_dir = str(partial / TFMA_DIR)
        _run_tfma(files, columns, label, vocabulary, candidate, baseline_model, tfma_config, tfma_dir, beam_config)
        sliced = _read_metrics(tfma_dir, vocabulary)
        matrices = _confusion_matrices(tfma_dir, vocabulary)
        _blank_undefined_auc(sliced, matrices, vocabulary)
        validation_ok, failures = _tfma_failures(tfma_dir, applied, sliced, vocabulary)
        per_class_failures, per_class_notes = _per_class_failures(applied, sliced, config.slices,
                                                                  config.thresholds_on_slices)
        failures += per_class_failures
        notes += per_class_notes
        overall = sliced.get((), {})
        candidate_metrics = _ordered(overall.get(CANDIDATE, {}))
        baseline_metrics = _ordered(overall[BASELINE]) if BASELINE in overall else None
        example_count = int(candidate_metrics.get("example_count") or 0)
        blessed = bool(validation_ok) and not failures

        blessing = {
            "blessed": blessed,
            "failures": failures,
            "candidate": candidate.path,
            "baseline": baseline_model.path if baseline_model else None,
            "split": split,
            "example_count": example_count,
            "thresholds": [threshold.to_json() for threshold in applied],
            "skipped_thresholds": [threshold.to_json() for threshold in skipped],
            "defaulted": any(threshold.source == "default" for threshold in applied + skipped),
            "notes": notes,
        }
        metrics_document = {
            "split": split,
            "example_count": example_count,
            "rows_left_out": counts.unknown,
            "label_vocabulary": list(vocabulary),
            "class_counts": counts.per_class,
            "overall": {CANDIDATE: candidate_metrics, BASELINE: baseline_metrics,
                        "change": _ordered(overall["change"]) if "change" in overall else None},
            "slices": _per_slice(sliced, config.slices),
        }
        matrix = {"categories": list(vocabulary),
                  "matrix": matrices.get((), [[0] * len(vocabulary) for _ in vocabulary])}
        _write_json(partial / BLESSING, blessing)
        _write_json(partial / METRICS, metrics_document)
        _write_json(partial / CONFUSION_MATRIX, matrix)
        (partial / REPORT).write_text(report(blessing, metrics_document, matrix))
        manifest = artifacts.write_manifest(partial, KIND, "evaluate", blessed=blessed, split=split,
                                            example_count=example_count, candidate=candidate.path,
                                            baseline=blessing["baseline"], examples=str(examples))
    result = EvaluateResult(str(out), blessed, split, example_count, candidate_metrics, blessing["baseline"],
                            baseline_metrics, failures, blessing["thresholds"], blessing["skipped_thresholds"],
                            blessing["defaulted"], notes, manifest["digest"])
    log.info("evaluate: %d examples in %.0fs; %s", example_count, time.monotonic() - started,
             "blessed" if blessed else "NOT blessed: " + "; ".join(_failure_text(f) for f in failures))
    return result


def _run_tfma(files: list[str], columns: dict[str, str], label: str, vocabulary: tuple[str, ...], candidate: _Model,
              baseline: _Model | None, tfma_config, tfma_dir: str, beam_config: BeamConfig) -> None:
    import tensorflow_model_analysis as tfma
    from tfx_bsl.public import tfxio

    reader = _tfx_io(columns, label)
    shared_models = [tfma.default_eval_shared_model(eval_saved_model_path=candidate.path, model_name=CANDIDATE,
                                                    eval_config=tfma_config)]
    if baseline is not None:
        shared_models.append(tfma.default_eval_shared_model(eval_saved_model_path=baseline.path, model_name=BASELINE,
                                                            eval_config=tfma_config))
    adapter = tfxio.TensorAdapterConfig(reader.ArrowSchema(), reader.TensorRepresentations())
    to_inputs = _ToTFMAInputs(columns, label, vocabulary, reader.ArrowSchema(), tfma.ARROW_INPUT_COLUMN, BATCH_ROWS)

    def build(root: beam.Pipeline) -> None:
        _ = (root
             | "ReadHeldOut" >> beam.Create(files)
             | "ReadParquet" >> beam.io.ReadAllFromParquetBatched(columns=list(columns))
             | "ToTFMAInputs" >> beam.ParDo(to_inputs)
             | "TFMA" >> tfma.ExtractEvaluateAndWriteResults(
                 eval_shared_model=shared_models if baseline is not None else shared_models[0],
                 eval_config=tfma_config, output_path=tfma_dir, tensor_adapter_config=adapter))

    beam_run.run(beam_config, build)


def _per_slice(sliced: dict[tuple, dict[str, dict[str, Any]]], slices: tuple[str, ...]) -> dict[str, Any]:
    """column -> value -> {candidate, baseline, change}, values in a stable order."""
    document: dict[str, dict[str, Any]] = {column: {} for column in slices}
    for slice_key in sorted((key for key in sliced if key), key=lambda key: [(c, str(v)) for c, v in key]):
        if len(slice_key) != 1:
            continue
        column, value = slice_key[0]
        by_model = sliced[slice_key]
        document.setdefault(column, {})[str(_plain(value))] = {
            CANDIDATE: _ordered(by_model.get(CANDIDATE, {})),
            BASELINE: _ordered(by_model[BASELINE]) if BASELINE in by_model else None,
            "change": _ordered(by_model["change"]) if "change" in by_model else None,
        }
    return document


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")


# --- what a person reads ----------------------------------------------------------------------------

def _failure_text(failure: dict[str, Any]) -> str:
    metric = failure["metric"] + (f" of class {failure['class']}" if failure.get("class") else "")
    where = "" if failure["slice"] == OVERALL else f" on {failure['slice']}"
    got = "" if failure.get("value") is None else f" (got {failure['value']:+.4f})" if failure["kind"] == "change" \
        else f" (got {failure['value']:.4f})"
    by = "" if failure.get("by_how_much") is None else f", missed by {failure['by_how_much']:.4f}"
    return f"{metric} {failure['threshold']}{where}{got}{by}"


def _format(value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], numbers: bool = True) -> list[str]:
    align = " ---: |" if numbers else " --- |"
    return (["| " + " | ".join(header) + " |", "| --- |" + align * (len(header) - 1)]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def report(blessing: dict[str, Any], metrics: dict[str, Any], matrix: dict[str, Any]) -> str:
    """The Markdown report: verdict, thresholds, candidate vs baseline, per class, per slice, confusion matrix."""
    overall = metrics["overall"]
    candidate, baseline, change = overall[CANDIDATE], overall[BASELINE], overall["change"] or {}
    compared = baseline is not None
    lines = [f"# Evaluation: {'BLESSED' if blessing['blessed'] else 'NOT BLESSED'}", "",
             f"{metrics['example_count']} examples of the `{metrics['split']}` split. Candidate "
             f"`{blessing['candidate']}`; baseline "
             + (f"`{blessing['baseline']}`." if blessing["baseline"] else "none (first run)."), ""]
    if blessing["failures"]:
        lines += ["## Failed thresholds", ""] + [f"- {_failure_text(f)}" for f in blessing["failures"]] + [""]
    lines += ["## Thresholds", ""]
    lines += _table(["metric", "threshold", "source", "applied"],
                    [[t["metric"], t["threshold"], t["source"], "yes"] for t in blessing["thresholds"]]
                    + [[t["metric"], t["threshold"], t["source"], f"no: {t['reason']}"]
                       for t in blessing["skipped_thresholds"]], numbers=False)
    if blessing["notes"]:
        lines += [f"- {note}" for note in blessing["notes"]] + [""]

    lines += ["## Overall", ""]
    lines += _table(["metric", "candidate"] + (["baseline", "change"] if compared else []),
                    [[name, _format(candidate.get(name))]
                     + ([_format(baseline.get(name)), _format(change.get(name), signed=True)] if compared else [])
                     for name in _OVERALL_ORDER if name in candidate])
    lines += [f"## Per class ({'candidate / baseline' if compared else 'candidate'})", ""]
    lines += _table(["class", "examples", *_PER_CLASS],
                    [[name, str(metrics["class_counts"].get(name, 0))]
                     + [_format(candidate.get(metric, {}).get(name))
                        + (" / " + _format(baseline.get(metric, {}).get(name)) if compared else "")
                        for metric in _PER_CLASS]
                     for name in metrics["label_vocabulary"]])
    for column, values in metrics["slices"].items():
        lines += [f"## By `{column}`", ""]
        rows = []
        for value, by_model in values.items():
            mine, theirs, diff = by_model[CANDIDATE], by_model[BASELINE] or {}, by_model["change"] or {}
            rows.append([value, _format(mine.get("example_count")), _format(mine.get("accuracy"))]
                        + ([_format(theirs.get("accuracy")), _format(diff.get("accuracy"), signed=True)]
                           if compared else [])
                        + [_format(mine.get("loss")), _format(mine.get("macro_auc"))])
        if not rows:
            lines += [f"No example has a `{column}` value.", ""]
            continue
        lines += _table([column, "examples", "accuracy"] + (["baseline accuracy", "change"] if compared else [])
                        + ["loss", "macro_auc"], rows)
    lines += ["## Confusion matrix (candidate; rows actual, columns predicted)", ""]
    lines += _table(["actual \\ predicted", *matrix["categories"]],
                    [[name, *(str(count) for count in row)]
                     for name, row in zip(matrix["categories"], matrix["matrix"])])
    return "\n".join(lines)


def summary_lines(result: EvaluateResult) -> list[str]:
    """A few short lines for the terminal."""
    metrics, base = result.metrics, result.baseline_metrics
    line = (f"evaluated {result.example_count} examples ({result.split} split): "
            f"accuracy {_format(metrics.get('accuracy'))}")
    if base is not None and metrics.get("accuracy") is not None and base.get("accuracy") is not None:
        line += f" vs baseline {base['accuracy']:.4f} ({metrics['accuracy'] - base['accuracy']:+.4f})"
    line += f", macro AUC {_format(metrics.get('macro_auc'))}"
    lines = [line]
    applied = ", ".join(f"{t['metric']} {t['threshold']}{' (default)' if t['source'] == 'default' else ''}"
                        for t in result.thresholds)
    lines.append(f"thresholds: {applied or 'none'}")
    if result.skipped_thresholds:
        lines.append(f"skipped: {len(result.skipped_thresholds)} change threshold(s), no baseline model")
    if result.blessed:
        lines.append("BLESSED: every threshold holds")
    else:
        lines.append("NOT BLESSED: " + "; ".join(_failure_text(failure) for failure in result.failures[:3])
                     + (f" (+{len(result.failures) - 3} more)" if len(result.failures) > 3 else ""))
    lines.append(f"report: {Path(result.path, REPORT)}")
    return lines
