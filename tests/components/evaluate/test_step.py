"""The evaluate step: TFMA's numbers against an independent computation over the exported model's
serving signature, the blessing for a better and a worse candidate, defaults and skipped change
thresholds on a first run, slices, the same evaluation from TFMA's own per-example metrics and from
the batched ones (TFMA's per-example top-k precision and recall corrected as the batched ones are:
`components.evaluate.batched_combiners`), progress, and the errors a user can cause.

Two small penguin models are trained once: a good one (10 epochs) and a weak one (1 epoch at a low
learning rate). Each evaluation runs once (TFMA on Beam takes ~5-10 s per run here).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import calibration_histogram

from components import artifacts
from components.beam_run import BeamConfig
from components.examples import split_files
from components.errors import ConfigError, DataError, TunepipeError
from components.evaluate import blessing as policy, progress, report as reporting, step as evaluate, tfma_runner
from components.evaluate.config import EvaluationConfig
from components.schema import NUMERIC, Schema
from components.serving import LABEL_VOCABULARY
from components.train import step as train
from components.train.config import TrainingConfig
from pipeline import config

MAX_DROP = 0.01


@dataclass(frozen=True)
class Models:
    good: Path
    weak: Path


@pytest.fixture(scope="module")
def models(penguin_inputs, tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("evaluate-models")
    train.run(penguin_inputs.examples, penguin_inputs.transform, root / "good", TrainingConfig(epochs=10))
    train.run(penguin_inputs.examples, penguin_inputs.transform, root / "weak", TrainingConfig(epochs=1),
              hyperparameters={"learning_rate": 0.0003})
    return Models(root / "good", root / "weak")


@dataclass(frozen=True)
class Reference:
    """The eval split scored without TFMA: the SavedModel's serving signature on hand-built tf.Examples."""

    labels: np.ndarray  # class index per row
    slice_values: dict[str, np.ndarray]  # slice column -> its value per row as metrics.json names it
    predicted: dict[str, np.ndarray]  # model name -> predicted class index per row
    probabilities: dict[str, np.ndarray]  # model name -> (rows, classes)

    def accuracy(self, name: str, rows: np.ndarray | None = None) -> float:
        rows = np.ones(len(self.labels), bool) if rows is None else rows
        return float(np.mean(self.predicted[name][rows] == self.labels[rows]))

    def in_slice(self, column: str, value: str) -> np.ndarray:
        return self.slice_values[column] == value


def _serialized(rows: list[dict], schema: Schema) -> list[bytes]:
    examples = []
    for row in rows:
        feature = {}
        for column in schema.features:
            value = row[column.name]
            if value is None:
                continue  # a missing value is a missing feature
            feature[column.name] = (tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
                                    if column.kind == NUMERIC else
                                    tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()])))
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return examples


@pytest.fixture(scope="module")
def reference(penguin_inputs, models) -> Reference:
    schema = Schema.read(penguin_inputs.examples)
    rows = pq.read_table(split_files(penguin_inputs.examples, "eval")).to_pylist()
    vocabulary = (models.good / LABEL_VOCABULARY).read_text().split()
    serialized = tf.constant(_serialized(rows, schema))
    predicted, probabilities = {}, {}
    for name in ("good", "weak"):
        serve = tf.saved_model.load(str(getattr(models, name))).signatures["serving_default"]
        probabilities[name] = serve(examples=serialized)["probabilities"].numpy().astype(np.float64)
        predicted[name] = np.argmax(probabilities[name], axis=1)
    labels = np.array([vocabulary.index(row[schema.label.name]) for row in rows])
    slice_values = {"island": np.array([row["island"] for row in rows]),
                    "sex": np.array([row["sex"] or "" for row in rows]),  # missing: in no slice
                    "year": np.array([str(int(row["year"])) for row in rows])}
    reference = Reference(labels, slice_values, predicted, probabilities)
    assert reference.accuracy("weak") < reference.accuracy("good") - MAX_DROP, "the weak model is not worse"
    return reference


@pytest.fixture(scope="module")
def good_vs_weak(penguin_inputs, models, tmp_path_factory) -> evaluate.EvaluateResult:
    """No thresholds configured: the defaults decide."""
    out = tmp_path_factory.mktemp("evaluate") / "good-vs-weak"
    return evaluate.run(penguin_inputs.examples, models.good, out, EvaluationConfig(slices=("island",)), BeamConfig(),
                        baseline=models.weak)


@pytest.fixture(scope="module")
def served_good(models, tmp_path_factory) -> Path:
    """The good model as push leaves it in the serving directory: the SavedModel alone, no manifest."""
    served = tmp_path_factory.mktemp("serving") / "penguins" / "1"
    shutil.copytree(models.good, served, ignore=shutil.ignore_patterns(artifacts.MANIFEST, "*.keras", "*.txt",
                                                                         "*.json", "*.csv"))
    return served


@pytest.fixture(scope="module")
def weak_vs_good(penguin_inputs, models, served_good, tmp_path_factory) -> evaluate.EvaluateResult:
    """Against the served good model: a change threshold on accuracy, held on every island too, and a
    per-class recall bound."""
    out = tmp_path_factory.mktemp("evaluate") / "weak-vs-good"
    evaluation = EvaluationConfig(slices=("island",), thresholds_on_slices=True,
                                  value_thresholds={"accuracy": {"lower": 0.0}, "recall": {"lower": 0.5}},
                                  change_thresholds={"accuracy": {"direction": "higher_is_better",
                                                                  "absolute": -MAX_DROP}})
    return evaluate.run(penguin_inputs.examples, models.weak, out, evaluation, BeamConfig(), baseline=served_good)


@pytest.fixture(scope="module")
def first_run(penguin_inputs, models, tmp_path_factory) -> evaluate.EvaluateResult:
    """No baseline and no thresholds; `year` is a passthrough column (not a model input)."""
    out = tmp_path_factory.mktemp("evaluate") / "first-run"
    return evaluate.run(penguin_inputs.examples, models.good, out, EvaluationConfig(slices=("island", "year")),
                        BeamConfig())


# The weak candidate against the served good model, with thresholds on every slice and slices by a
# feature with missing values (sex) and by a passthrough column (year).
EVERY_SLICE = EvaluationConfig(slices=("island", "sex", "year"), thresholds_on_slices=True,
                               value_thresholds={"accuracy": {"lower": 0.0}, "recall": {"lower": 0.5}},
                               change_thresholds={"accuracy": {"direction": "higher_is_better",
                                                               "absolute": -MAX_DROP}})


@pytest.fixture(scope="module")
def every_slice(penguin_inputs, models, served_good, tmp_path_factory) -> tuple[evaluate.EvaluateResult, list[int]]:
    """Batched, as the step runs, with the progress reported after every batch."""
    out = tmp_path_factory.mktemp("evaluate") / "every-slice"
    calls: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress, "EVERY_ROWS", 1)
        result = evaluate.run(penguin_inputs.examples, models.weak, out, EVERY_SLICE, BeamConfig(),
                              baseline=served_good, progress=calls.append)
    return result, calls


def _every_bucket_of_one(extract_output):
    """TFMA's calibration histogram listing every bucket of a one-bucket (top-k) histogram, empty ones
    too, as the batched one does: TFMA 0.52 reads that histogram by position, so the buckets missing
    from its sparse list give wrong top-k precision and recall (`components.evaluate.batched_combiners`)."""
    def extract(self, accumulator):
        output = extract_output(self, accumulator)
        if self._num_buckets != 1:
            return output
        (key, histogram), = output.items()
        listed = {bucket.bucket_id: bucket for bucket in histogram}
        return {key: [listed.get(index, calibration_histogram.Bucket(index, 0.0, 0.0, 0.0)) for index in range(3)]}
    return extract


@pytest.fixture(scope="module")
def every_slice_per_example(penguin_inputs, models, served_good, tmp_path_factory) -> evaluate.EvaluateResult:
    """The same evaluation by TFMA's own per-example metrics and extractors, its top-k histograms
    listed whole (Beam runs in this process)."""
    out = tmp_path_factory.mktemp("evaluate") / "every-slice-per-example"
    combiner = calibration_histogram._CalibrationHistogramCombiner
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(combiner, "extract_output", _every_bucket_of_one(combiner.extract_output))
        return evaluate.run(penguin_inputs.examples, models.weak, out, EVERY_SLICE, BeamConfig(),
                            baseline=served_good, per_example=True)


def read(result: evaluate.EvaluateResult, name: str):
    path = Path(result.path, name)
    return json.loads(path.read_text()) if name.endswith(".json") else path.read_text()


# --- TFMA's numbers ---------------------------------------------------------------------------------

def test_tfma_accuracy_equals_the_serving_signature_scored_with_numpy(good_vs_weak, weak_vs_good, reference,
                                                                    penguin_inputs):
    rows = pq.ParquetFile(split_files(penguin_inputs.examples, "eval")[0]).metadata.num_rows
    metrics = read(good_vs_weak, evaluate.METRICS)
    assert metrics["split"] == "eval"
    assert metrics["example_count"] == good_vs_weak.example_count == rows == len(reference.labels)
    assert metrics["overall"]["candidate"]["example_count"] == rows
    assert metrics["overall"]["candidate"]["accuracy"] == pytest.approx(reference.accuracy("good"), abs=1e-6)
    assert metrics["overall"]["baseline"]["accuracy"] == pytest.approx(reference.accuracy("weak"), abs=1e-6)
    assert weak_vs_good.metrics["accuracy"] == pytest.approx(reference.accuracy("weak"), abs=1e-6)
    assert weak_vs_good.baseline_metrics["accuracy"] == pytest.approx(reference.accuracy("good"), abs=1e-6)


def test_per_class_metrics_and_the_confusion_matrix_follow_the_top_prediction(weak_vs_good, reference):
    predicted, labels = reference.predicted["weak"], reference.labels
    classes = len(weak_vs_good.metrics["recall"])
    expected = np.zeros((classes, classes), int)
    np.add.at(expected, (labels, predicted), 1)
    matrix = read(weak_vs_good, evaluate.CONFUSION_MATRIX)
    assert matrix["categories"] == list(weak_vs_good.metrics["recall"])
    assert matrix["matrix"] == expected.tolist()
    for index, name in enumerate(matrix["categories"]):
        assert weak_vs_good.metrics["recall"][name] == pytest.approx(expected[index, index] / expected[index].sum())
        if expected[:, index].sum():
            assert weak_vs_good.metrics["precision"][name] == pytest.approx(
                expected[index, index] / expected[:, index].sum())
        else:
            assert weak_vs_good.metrics["precision"][name] is None  # never predicted: undefined, not 0


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Exact one-vs-rest ROC AUC: the share of (positive, negative) pairs ranked right, ties half."""
    above = (scores[positive][:, None] > scores[~positive][None, :]).sum()
    ties = (scores[positive][:, None] == scores[~positive][None, :]).sum()
    return float((above + ties / 2) / (positive.sum() * (~positive).sum()))


def test_tfma_loss_calibration_and_auc_equal_numpy_over_the_serving_signature(good_vs_weak, reference):
    for role, name in (("candidate", "good"), ("baseline", "weak")):
        found = read(good_vs_weak, evaluate.METRICS)["overall"][role]
        probabilities, labels = reference.probabilities[name], reference.labels
        classes = found["calibration"]
        picked = probabilities[np.arange(len(labels)), labels]
        assert found["loss"] == pytest.approx(float(np.mean(-np.log(np.clip(picked, 1e-7, 1)))), rel=1e-4)
        aucs = []
        for index, class_name in enumerate(classes):
            positive = labels == index
            assert found["calibration"][class_name] == pytest.approx(
                probabilities[:, index].sum() / positive.sum(), rel=1e-5)
            aucs.append(_auc(probabilities[:, index], positive))
            # TFMA's AUC is read from 10,000-bucket histograms: exact up to pairs within one bucket.
            assert found["auc"][class_name] == pytest.approx(aucs[-1], abs=2e-3)
        assert found["macro_auc"] == pytest.approx(float(np.mean(aucs)), abs=2e-3)


# The relative difference a different order of summation in float32 leaves (Keras sums the loss in
# float32, and the predictions are float32): CI saw a slice's calibration differ by 1.1e-6 relative
# (0.03742869 against 0.03742873), another value by 2.7e-6 (-0.00793556 against -0.00793554).
FLOAT32_SUMS = 1e-5


def _assert_same_document(batched, per_example, where: str = "") -> None:
    """Equal, floats to FLOAT32_SUMS."""
    if isinstance(per_example, dict):
        assert set(batched) == set(per_example), where
        for key in per_example:
            _assert_same_document(batched[key], per_example[key], f"{where}.{key}")
    elif isinstance(per_example, list):
        assert len(batched) == len(per_example), where
        for index, (mine, theirs) in enumerate(zip(batched, per_example)):
            _assert_same_document(mine, theirs, f"{where}[{index}]")
    elif isinstance(per_example, float) and not isinstance(batched, bool):
        assert isinstance(batched, float) and math.isclose(batched, per_example, rel_tol=FLOAT32_SUMS,
                                                           abs_tol=1e-9), where
    else:
        assert batched == per_example, where


def test_batched_and_per_example_tfma_write_the_same_evaluation(every_slice, every_slice_per_example):
    batched, _ = every_slice
    per_example = every_slice_per_example
    assert batched.blessed == per_example.blessed is False
    for name in (evaluate.BLESSING, evaluate.METRICS, evaluate.CONFUSION_MATRIX):
        _assert_same_document(read(batched, name), read(per_example, name), name)
    assert read(batched, reporting.REPORT) == read(per_example, reporting.REPORT)
    slices = read(batched, evaluate.METRICS)["slices"]
    assert set(slices) == {"island", "sex", "year"} and len(slices["sex"]) == 2  # no slice for a missing sex

    def tfma_output(result):
        tfma_dir = str(Path(result.path, tfma_runner.TFMA_DIR))
        metrics = {(m.slice_key.SerializeToString(), entry.key.SerializeToString()): entry.value
                   for m in tfma.load_metrics(tfma_dir) for entry in m.metric_keys_and_values}
        plots = {(p.slice_key.SerializeToString(), entry.key.SerializeToString()): entry.value
                 for p in tfma.load_plots(tfma_dir) for entry in p.plot_keys_and_values}
        return metrics, plots, tfma.load_validation_result(tfma_dir)

    (metrics, plots, validation), (their_metrics, their_plots, their_validation) = map(tfma_output,
                                                                                     (batched, per_example))
    assert set(metrics) == set(their_metrics) and plots == their_plots
    for key, value in their_metrics.items():
        if value.HasField("double_value"):
            assert math.isclose(metrics[key].double_value.value, value.double_value.value, rel_tol=FLOAT32_SUMS,
                                abs_tol=1e-9) or (math.isnan(value.double_value.value)
                                                  and math.isnan(metrics[key].double_value.value))
        else:
            assert metrics[key] == value
    assert validation.validation_ok == their_validation.validation_ok is False
    failures = {(f.slice_key.SerializeToString(), tuple(sorted(x.metric_key.SerializeToString() for x in f.failures)))
                for f in validation.metric_validations_per_slice}
    assert failures == {(f.slice_key.SerializeToString(),
                         tuple(sorted(x.metric_key.SerializeToString() for x in f.failures)))
                        for f in their_validation.metric_validations_per_slice}


def test_per_class_precision_and_recall_in_every_slice_follow_the_top_prediction(every_slice, reference):
    # Also where a class is never predicted in a slice: recall 0 and no precision, where TFMA 0.52's
    # own per-example path reads its sparse top-k histogram by position and says 1.0 and a share.
    metrics = read(every_slice[0], evaluate.METRICS)
    vocabulary = metrics["label_vocabulary"]
    assert {"island", "sex", "year"} == set(metrics["slices"]) and all(metrics["slices"].values())
    for column, by_value in metrics["slices"].items():
        for value, by_role in by_value.items():
            rows = reference.in_slice(column, value)
            assert by_role["candidate"]["example_count"] == rows.sum(), (column, value)
            for role, name in (("candidate", "weak"), ("baseline", "good")):
                predicted, labels = reference.predicted[name][rows], reference.labels[rows]
                for index, class_name in enumerate(vocabulary):
                    where = (column, value, role, class_name)
                    if (labels == index).any():
                        assert by_role[role]["recall"][class_name] == pytest.approx(
                            np.mean(predicted[labels == index] == index), abs=1e-6), where
                    else:
                        assert by_role[role]["recall"][class_name] is None, where  # no example: undefined
                    if (predicted == index).any():
                        assert by_role[role]["precision"][class_name] == pytest.approx(
                            np.mean(labels[predicted == index] == index), abs=1e-6), where
                    else:
                        assert by_role[role]["precision"][class_name] is None, where


def test_progress_counts_rows_as_tfma_takes_them_and_ends_at_the_rows_evaluated(every_slice):
    result, calls = every_slice
    assert len(calls) >= 2  # one batch per (island, sex, year) group
    assert calls == sorted(set(calls))  # increasing
    assert calls[-1] == result.example_count


# --- the blessing -----------------------------------------------------------------------------------

def test_a_better_candidate_is_blessed_under_the_default_thresholds(good_vs_weak, models, reference):
    blessing = read(good_vs_weak, evaluate.BLESSING)
    assert blessing["blessed"] is True and good_vs_weak.blessed
    assert blessing["failures"] == []
    assert blessing["baseline"] == str(models.weak)
    assert blessing["defaulted"] is True
    applied = {(t["kind"], t["metric"]): t for t in blessing["thresholds"]}
    assert applied[("change", "accuracy")]["absolute"] == -policy.DEFAULT_MAX_ACCURACY_DROP
    assert {t["source"] for t in blessing["thresholds"]} == {"default"}
    majority = np.bincount(reference.labels).max() / len(reference.labels)
    assert applied[("value", "accuracy")]["above"] == pytest.approx(majority)
    assert artifacts.read_manifest(good_vs_weak.path, artifacts.EVALUATION)["blessed"] is True
    assert "# Evaluation: BLESSED" in read(good_vs_weak, reporting.REPORT)


def test_a_worse_candidate_fails_the_change_threshold_and_the_blessing_says_by_how_much(weak_vs_good, reference,
                                                                                         served_good):
    blessing = read(weak_vs_good, evaluate.BLESSING)
    assert blessing["blessed"] is False and not weak_vs_good.blessed
    assert blessing["baseline"] == str(served_good) and not (served_good / artifacts.MANIFEST).exists()
    assert blessing["defaulted"] is False
    change = [f for f in blessing["failures"] if f["kind"] == "change"]
    overall = next(f for f in change if f["slice"] == "overall")
    drop = reference.accuracy("weak") - reference.accuracy("good")
    assert overall["metric"] == "accuracy"
    assert overall["threshold"] == "change >= -0.01 vs baseline"
    assert overall["value"] == pytest.approx(drop, abs=1e-6)
    assert overall["by_how_much"] == pytest.approx(-MAX_DROP - drop, abs=1e-6)
    # Held on every island too: exactly the islands where the weak model is worse by more than 0.01.
    worse = {f"island={island}" for island in np.unique(reference.slice_values["island"])
             if reference.accuracy("weak", reference.in_slice("island", island))
             - reference.accuracy("good", reference.in_slice("island", island)) < -MAX_DROP}
    assert {f["slice"] for f in change} - {"overall"} == worse
    report = read(weak_vs_good, reporting.REPORT)
    assert "# Evaluation: NOT BLESSED" in report
    assert f"missed by {overall['by_how_much']:.4f}" in report


def test_per_class_thresholds_name_the_class(weak_vs_good):
    recall = weak_vs_good.metrics["recall"]
    failed = {f["class"] for f in weak_vs_good.failures if f["metric"] == "recall" and f["slice"] == "overall"}
    assert failed == {name for name, value in recall.items() if value < 0.5}
    assert failed  # the weak model misses at least one class
    for failure in (f for f in weak_vs_good.failures if f["metric"] == "recall" and f["slice"] == "overall"):
        assert failure["by_how_much"] == pytest.approx(0.5 - recall[failure["class"]])
    assert not any(f["metric"] == "accuracy" and f["kind"] == "value" for f in weak_vs_good.failures)


def test_without_a_baseline_change_thresholds_are_skipped_and_the_default_is_reported(first_run, reference):
    blessing = read(first_run, evaluate.BLESSING)
    assert blessing["baseline"] is None
    assert blessing["blessed"] is True
    assert [t["kind"] for t in blessing["thresholds"]] == ["value"]
    assert blessing["thresholds"][0]["source"] == "default"
    assert blessing["defaulted"] is True
    assert [(t["kind"], t["metric"]) for t in blessing["skipped_thresholds"]] == [("change", "accuracy")]
    assert "no baseline" in blessing["skipped_thresholds"][0]["reason"]
    assert any("change thresholds skipped" in note for note in blessing["notes"])
    majority = np.bincount(reference.labels).max() / len(reference.labels)
    assert any(f"default accuracy > {majority:.4f}" in note for note in blessing["notes"])
    metrics = read(first_run, evaluate.METRICS)
    assert metrics["overall"]["baseline"] is None and metrics["overall"]["change"] is None
    report = read(first_run, reporting.REPORT)
    assert "baseline none (first run)" in report and "no: no baseline model" in report
    lines = reporting.summary_lines(first_run)
    assert 3 <= len(lines) <= 6
    assert any("skipped" in line for line in lines) and any("BLESSED" in line for line in lines)


# --- slices -----------------------------------------------------------------------------------------

def test_per_island_metrics_are_in_metrics_json_and_the_report(weak_vs_good, reference):
    metrics = read(weak_vs_good, evaluate.METRICS)
    report = read(weak_vs_good, reporting.REPORT)
    islands = metrics["slices"]["island"]
    assert set(islands) == set(np.unique(reference.slice_values["island"]))
    assert "## By `island`" in report
    for island, by_model in islands.items():
        rows = reference.in_slice("island", island)
        assert by_model["candidate"]["example_count"] == rows.sum()
        assert by_model["candidate"]["accuracy"] == pytest.approx(reference.accuracy("weak", rows), abs=1e-6)
        assert by_model["baseline"]["accuracy"] == pytest.approx(reference.accuracy("good", rows), abs=1e-6)
        assert any(line.startswith(f"| {island} | {rows.sum()} | {by_model['candidate']['accuracy']:.4f} |")
                   for line in report.splitlines())


def test_a_passthrough_column_can_be_a_slice(first_run, penguin_inputs):
    years = pq.read_table(split_files(penguin_inputs.examples, "eval"), columns=["year"]).column("year")
    counts = {str(int(year)): int(count) for year, count in zip(*np.unique(years.to_numpy(), return_counts=True))}
    slices = read(first_run, evaluate.METRICS)["slices"]["year"]
    assert {year: by_model["candidate"]["example_count"] for year, by_model in slices.items()} == counts


def test_the_artifact_holds_exactly_the_documented_files(good_vs_weak):
    names = {path.name for path in Path(good_vs_weak.path).iterdir()}
    assert names == {tfma_runner.TFMA_DIR, evaluate.BLESSING, evaluate.METRICS, evaluate.CONFUSION_MATRIX,
                     reporting.REPORT, artifacts.MANIFEST}
    assert any(path.name.startswith("metrics") for path in Path(good_vs_weak.path, tfma_runner.TFMA_DIR).iterdir())
    assert any(path.name.startswith("validations") for path in Path(good_vs_weak.path, tfma_runner.TFMA_DIR).iterdir())


# --- what a user can get wrong ----------------------------------------------------------------------

def test_a_directory_that_is_not_a_model_is_one_line_error(penguin_inputs, models, tmp_path):
    out = tmp_path / "evaluation"
    with pytest.raises(DataError, match="expected 'model'") as raised:
        evaluate.run(penguin_inputs.examples, penguin_inputs.transform, out, EvaluationConfig(), BeamConfig())
    assert "\n" not in str(raised.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunepipeError, match="neither a model artifact nor a SavedModel") as raised:
        evaluate.run(penguin_inputs.examples, models.good, out, EvaluationConfig(), BeamConfig(),
                     baseline=tmp_path / "empty")
    assert "\n" not in str(raised.value)
    assert not out.exists()


def test_an_unknown_slice_column_is_one_line_error(penguin_inputs, models, tmp_path):
    with pytest.raises(ConfigError, match=r"evaluation.slices: 'colour' is not a column .*island") as raised:
        evaluate.run(penguin_inputs.examples, models.good, tmp_path / "evaluation",
                     EvaluationConfig(slices=("island", "colour")), BeamConfig())
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("evaluation, message", [
    ({"value_thresholds": {"acuracy": {"lower": 0.9}}}, "unknown metric 'acuracy' (did you mean 'accuracy'?"),
    ({"value_thresholds": {"accuracy": {"min": 0.9}}}, "unknown key min (allowed: lower, upper)"),
    ({"value_thresholds": {"accuracy": {"lower": 0.9, "upper": 0.5}}}, "lower (0.9) is above upper (0.5)"),
    ({"change_thresholds": {"accuracy": {"direction": "up", "absolute": -0.01}}}, "direction must be one of"),
    ({"change_thresholds": {"accuracy": {"direction": "higher_is_better"}}}, "give absolute, relative or both"),
    ({"change_thresholds": {"calibration": {"absolute": 0.1}}}, "calibration: has no natural direction"),
])
def test_threshold_config_mistakes_name_the_key(evaluation, message):
    with pytest.raises(ConfigError) as raised:
        config.from_dict({"data": {"source": "x.csv", "label": "species"}, "evaluation": evaluation})
    assert message in str(raised.value)
    assert "evaluation." in str(raised.value)
