"""The typed pipeline configuration: one frozen section per concern, loaded from one YAML file.

Every section is validated when the file is loaded. An unknown key, a wrong type or a value outside
the allowed set is a `ConfigError` that names the key and what is allowed, so a typo never reaches a
step that has been running for an hour.

Relative paths written in a config file are resolved against the file's folder (as kustomize and
docker compose do); paths given on the command line or left to their defaults, against the working
directory.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

ScalarOption = str | int | float | bool

DEFAULT_NULL_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Section):
    """How rows are split. Ratios are fractions of the rows that sum to 1."""

    train: float = Field(0.8, gt=0, le=1)
    eval: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.0, ge=0, lt=1)
    # Columns whose values decide a row's split; None hashes the whole row.
    hash_key: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> SplitConfig:
        total = self.train + self.eval + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + eval + test must be 1, got {total:g}")
        return self


class FeaturesConfig(_Section):
    """Which columns are features and of what kind. By default every column but the label,
    typed from the data (numbers are numeric, anything else categorical)."""

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    types: dict[str, Literal["numeric", "categorical"]] = {}


class DataConfig(_Section):
    """The source table and how to read and split it: everything the ingest step depends on.

    `source` may name spans with a placeholder, `data/spans/{SPAN}/*.csv` or
    `events/{YYYY}-{MM}-{DD}/*.parquet` (see components.spans): a run reads the newest
    `span_window` spans."""

    source: str
    label: str
    span_window: int = Field(1, ge=1)
    format: Literal["auto", "csv", "parquet"] = "auto"
    problem_type: Literal["classification"] = "classification"
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig = SplitConfig()
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES
    # Rows that cannot be parsed go to a rejects file; past this share of the rows, ingest fails.
    max_reject_fraction: float = Field(0.01, ge=0, le=1)

    @field_validator("source")
    @classmethod
    def _placeholders_are_known(cls, value: str) -> str:
        from components.spans import SpanPattern

        SpanPattern(value)  # a ValueError names the placeholder at fault
        return value

    @model_validator(mode="after")
    def _label_is_not_a_feature(self) -> DataConfig:
        named = set(self.features.include or ()) | set(self.features.types)
        if self.label in named:
            raise ValueError(f"the label {self.label!r} cannot also be listed as a feature")
        return self

    @model_validator(mode="after")
    def _window_needs_spans(self) -> DataConfig:
        from components.spans import SpanPattern

        if self.span_window > 1 and not SpanPattern(self.source).has_spans:
            raise ValueError(f"span_window {self.span_window} needs a span placeholder in the source "
                             f"({{SPAN}} or {{YYYY}}-{{MM}}-{{DD}}); {self.source!r} has none")
        return self


class BeamConfig(_Section):
    """Where the Beam steps run. `options` are Beam pipeline options by their flag name,
    e.g. {project: my-project, region: europe-west1, temp_location: gs://bucket/tmp}."""

    runner: str = "DirectRunner"
    options: dict[str, ScalarOption | list[str]] = {}

    def pipeline_args(self) -> list[str]:
        # Beam 2.77's DirectRunner first tries Prism, a Go binary it downloads at run time (impossible
        # offline and in an image that must fetch nothing), then falls back to the FnApiRunner.
        # Going to the FnApiRunner directly runs the same engine without the download attempt.
        runner = "FnApiRunner" if self.runner == "DirectRunner" else self.runner
        args = [f"--runner={runner}"]
        for name, value in self.options.items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                if isinstance(item, bool):
                    if item:
                        args.append(f"--{name}")
                else:
                    args.append(f"--{name}={item}")
        return args


class PreprocessConfig(_Section):
    """The full-pass analyzers over the train split and the encodings built from them."""

    # Categorical values kept per feature, most frequent first; the rest map to out-of-vocabulary.
    vocabulary_top_k: int = Field(1000, ge=1)
    num_oov_indices: int = Field(1, ge=1)
    # A categorical feature with more values than this is embedded instead of one-hot encoded.
    embedding_threshold: int = Field(64, ge=1)
    embedding_dim: int = Field(8, ge=1)
    # What a missing numeric value becomes before normalization.
    numeric_fill: Literal["mean", "zero"] = "mean"


# Optimizers and activations the model module knows how to build; the search space may only name these.
OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")
ACTIVATIONS = ("relu", "gelu", "elu", "selu", "swish", "tanh")


class HyperparameterSpec(_Section):
    """One hyperparameter as Keras Tuner declares it.

    `int` and `float` search `min`..`max` (both included) with an optional `step` and `linear` or
    `log` sampling; `choice` picks one of `values`; `boolean` is true or false; `fixed` is always
    `value`. `default` is the value training uses when tuning is off. In YAML a plain value is
    shorthand for a fixed one, and a list for a choice: `dropout: 0.2`, `optimizer: [adam, sgd]`.
    """

    type: Literal["int", "float", "choice", "boolean", "fixed"]
    min: int | float | None = None
    max: int | float | None = None
    step: int | float | None = Field(None, gt=0)
    sampling: Literal["linear", "log"] | None = None
    values: tuple[ScalarOption, ...] | None = None
    value: ScalarOption | None = None
    default: ScalarOption | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, (list, tuple)):
            return {"type": "choice", "values": raw}
        if isinstance(raw, (str, int, float, bool)):
            return {"type": "fixed", "value": raw}
        return raw

    @model_validator(mode="after")
    def _keys_fit_the_type(self) -> HyperparameterSpec:
        applicable = {
            "int": {"min", "max", "step", "sampling", "default"},
            "float": {"min", "max", "step", "sampling", "default"},
            "choice": {"values", "default"},
            "boolean": {"default"},
            "fixed": {"value"},
        }[self.type]
        stray = sorted(self.model_fields_set - applicable - {"type"})
        if stray:
            raise ValueError(f"type {self.type} does not take {', '.join(stray)} "
                             f"(it takes: {', '.join(sorted(applicable))})")
        if self.type in ("int", "float"):
            if self.min is None or self.max is None:
                raise ValueError(f"type {self.type} needs min and max")
            if self.min >= self.max:
                raise ValueError(f"min ({self.min:g}) must be below max ({self.max:g}); "
                                 f"use a fixed value for a single value")
            if self.sampling == "log" and self.min <= 0:
                raise ValueError("log sampling needs min > 0")
            if self.type == "int":
                for key in ("min", "max", "step", "default"):
                    number = getattr(self, key)
                    if number is not None and (isinstance(number, bool) or not float(number).is_integer()):
                        raise ValueError(f"{key} of an int hyperparameter must be a whole number (got {number!r})")
            if self.default is not None and (isinstance(self.default, (bool, str))
                                             or not self.min <= self.default <= self.max):
                raise ValueError(f"default {self.default!r} is not between min {self.min:g} and max {self.max:g}")
        elif self.type == "choice":
            if not self.values:
                raise ValueError("type choice needs a non-empty list of values")
            if len(set(self.values)) != len(self.values):
                raise ValueError("values of a choice must be distinct")
            kinds = {"bool" if isinstance(v, bool) else "str" if isinstance(v, str) else "number" for v in self.values}
            if len(kinds) > 1:
                raise ValueError("values of a choice must all be numbers, all strings or all booleans")
            if self.default is not None and self.default not in self.values:
                raise ValueError(f"default {self.default!r} is not one of the values")
        elif self.type == "boolean":
            if self.default is not None and not isinstance(self.default, bool):
                raise ValueError(f"default of a boolean must be true or false (got {self.default!r})")
        elif self.value is None:
            raise ValueError("type fixed needs a value")
        return self

    def candidates(self) -> tuple[Any, ...]:
        """The values this hyperparameter can take, or its bounds for a range."""
        if self.type in ("int", "float"):
            return (self.min, self.max) + ((self.default,) if self.default is not None else ())
        if self.type == "choice":
            return self.values
        if self.type == "boolean":
            return (True, False)
        return (self.value,)


def _spec_rule(name: str, spec: HyperparameterSpec) -> str | None:
    """Why `spec` cannot be the model's hyperparameter `name`, or None when it can."""
    values = spec.candidates()
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if name in ("num_layers", "units"):
        if spec.type in ("float", "boolean") or not numbers or any(not float(v).is_integer() for v in values):
            return "must be whole numbers (type int, or a choice/fixed of integers)"
        low = 0 if name == "num_layers" else 1
        if min(values) < low:
            return f"must be at least {low}"
    elif name in ("dropout", "learning_rate"):
        if spec.type == "boolean" or not numbers:
            return "must be numbers (type float, or a choice/fixed of numbers)"
        if name == "dropout" and not all(0 <= v < 1 for v in values):
            return "must be in [0, 1)"
        if name == "learning_rate" and not all(v > 0 for v in values):
            return "must be above 0"
    elif name in ("optimizer", "activation"):
        allowed = OPTIMIZERS if name == "optimizer" else ACTIVATIONS
        if spec.type not in ("choice", "fixed") or any(v not in allowed for v in values):
            return f"must be a choice or fixed value from: {', '.join(allowed)}"
    elif name == "batch_norm":
        if spec.type not in ("boolean", "fixed") or not isinstance(values[0], bool):
            return "must be type boolean or a fixed true/false"
    return None


class SearchSpaceConfig(_Section):
    """The hyperparameters of the model in components/model.py and the ranges the tuner searches.

    `units` is declared once per hidden layer (units_0, units_1, ...), each searched over the same range.
    Keys left out keep these defaults: a small dense network for tabular data.
    """

    num_layers: HyperparameterSpec = HyperparameterSpec(type="int", min=1, max=3, default=2)
    units: HyperparameterSpec = HyperparameterSpec(type="int", min=8, max=128, sampling="log", default=32)
    dropout: HyperparameterSpec = HyperparameterSpec(type="float", min=0.0, max=0.4, step=0.1, default=0.1)
    learning_rate: HyperparameterSpec = HyperparameterSpec(type="float", min=1e-4, max=1e-1, sampling="log",
                                                           default=1e-2)
    optimizer: HyperparameterSpec = HyperparameterSpec(type="choice", values=("adam", "rmsprop", "sgd"),
                                                       default="adam")
    activation: HyperparameterSpec = HyperparameterSpec(type="fixed", value="relu")
    batch_norm: HyperparameterSpec = HyperparameterSpec(type="fixed", value=False)

    @field_validator("*", mode="wrap")
    @classmethod
    def _fits_the_model(cls, raw: Any, handler: Any, info: Any) -> HyperparameterSpec:
        spec = handler(raw)
        problem = _spec_rule(info.field_name, spec)
        if problem:
            raise ValueError(f"values of {info.field_name} {problem}")
        return spec


class TunerConfig(_Section):
    """The hyperparameter search (Keras Tuner). Owned by the tune step.

    Hyperband runs trials of 1..`max_epochs` epochs in brackets shrinking by `factor`; random and
    bayesian run `max_trials` trials of up to `max_epochs` epochs. Every trial stops early after
    `early_stopping_patience` epochs without improving the objective.
    """

    enabled: bool = True
    algorithm: Literal["hyperband", "random", "bayesian"] = "hyperband"
    # Defaults sized for a small table on two CPU cores: Hyperband runs 10 trials (5 of 3 epochs, 2 of
    # them continued to 8, 3 of 8), about 50 epochs; measured in bench/tuning/RESULTS.md.
    max_epochs: int = Field(8, ge=1)
    factor: int = Field(3, ge=2)
    hyperband_iterations: int = Field(1, ge=1)
    max_trials: int = Field(10, ge=1)
    # Bayesian: random trials before the Gaussian process proposes; None is a third of max_trials (at
    # least 3). Keras Tuner's own default, 3 per hyperparameter, would leave a small budget all random.
    bayesian_initial_trials: int | None = Field(None, ge=1)
    seed: int = 42
    objective: Literal["val_accuracy", "val_loss", "accuracy", "loss"] = "val_accuracy"
    # None: maximize accuracies, minimize losses.
    direction: Literal["max", "min"] | None = None
    batch_size: int = Field(32, ge=1)
    early_stopping_patience: int = Field(3, ge=1)
    # The search stops (and fails) after this many failed trials in a row.
    max_consecutive_failed_trials: int = Field(3, ge=1)
    # When a run reuses hyperparameters (`tunepipe retrain`), it searches again anyway once the last
    # search over the same search space is older than this many days; null: reuse whatever its age.
    retune_after_days: float | None = Field(7, gt=0)
    search_space: SearchSpaceConfig = SearchSpaceConfig()

    @model_validator(mode="after")
    def _direction_fits_objective(self) -> TunerConfig:
        if self.direction is not None and self.direction != self.objective_direction(self.objective):
            raise ValueError(f"direction {self.direction} contradicts the objective {self.objective}, which is "
                             f"{'maximized' if self.objective_direction(self.objective) == 'max' else 'minimized'}")
        return self

    @staticmethod
    def objective_direction(objective: str) -> str:
        return "min" if objective.endswith("loss") else "max"

    @property
    def resolved_direction(self) -> str:
        return self.direction or self.objective_direction(self.objective)


class TrainingConfig(_Section):
    """Training the final model with the best hyperparameters. Owned by the train step."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    early_stopping_patience: int = Field(10, ge=1)
    # Early stopping watches this metric on the eval split and restores the weights of its best epoch.
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    seed: int = 42


class EvaluationConfig(_Section):
    """Model evaluation with TFMA and the thresholds that decide the blessing. Owned by the evaluate step.

    Thresholds are keyed by metric: accuracy, loss, macro_auc (one-vs-rest AUC averaged over the
    classes), example_count, and the per-class precision, recall, auc and calibration (a threshold on
    those holds for every class). A value threshold bounds the candidate's metric (`lower`, `upper`);
    a change threshold bounds candidate minus baseline (`absolute`) or that difference over the
    baseline (`relative`), in the metric's `direction` (the usual one when left out):
    {accuracy: {absolute: -0.01}} means "not worse than the baseline by more than 0.01". Without a
    baseline (the first run) change thresholds are skipped. Left empty, each kind has a default,
    documented in components/evaluate.py and reported in the blessing.
    """

    # Feature (or passthrough) columns to slice by, besides the overall slice.
    slices: tuple[str, ...] = ()
    # e.g. {accuracy: {lower: 0.9}}; see components/evaluate.py for the defaults applied when empty.
    value_thresholds: dict[str, dict[str, float]] = {}
    # e.g. {accuracy: {direction: higher_is_better, absolute: -0.01}}: not worse than the baseline by more.
    change_thresholds: dict[str, dict[str, float | str]] = {}
    # Thresholds hold on the overall slice; with this, on every slice of `slices` as well.
    thresholds_on_slices: bool = False

    @staticmethod
    def metric_directions() -> dict[str, str | None]:
        """The metrics thresholds can name, and which way is better (None: no natural direction)."""
        return {"accuracy": "higher_is_better", "loss": "lower_is_better", "macro_auc": "higher_is_better",
                "example_count": "higher_is_better", "precision": "higher_is_better", "recall": "higher_is_better",
                "auc": "higher_is_better", "calibration": None}

    @field_validator("slices")
    @classmethod
    def _distinct_slices(cls, slices: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(slices)) != len(slices):
            raise ValueError("each column may be listed once")
        return slices

    @field_validator("value_thresholds")
    @classmethod
    def _value_thresholds(cls, thresholds: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for metric, bounds in thresholds.items():
            cls._known_metric(metric)
            stray = sorted(set(bounds) - {"lower", "upper"})
            if stray:
                raise ValueError(f"{metric}: unknown key {', '.join(stray)} (allowed: lower, upper)")
            if not bounds:
                raise ValueError(f"{metric}: give lower, upper or both")
            if "lower" in bounds and "upper" in bounds and bounds["lower"] > bounds["upper"]:
                raise ValueError(f"{metric}: lower ({bounds['lower']:g}) is above upper ({bounds['upper']:g})")
        return thresholds

    @field_validator("change_thresholds")
    @classmethod
    def _change_thresholds(cls, thresholds: dict[str, dict[str, float | str]]) -> dict[str, dict[str, float | str]]:
        directions = ("higher_is_better", "lower_is_better")
        for metric, spec in thresholds.items():
            cls._known_metric(metric)
            stray = sorted(set(spec) - {"direction", "absolute", "relative"})
            if stray:
                raise ValueError(f"{metric}: unknown key {', '.join(stray)} (allowed: direction, absolute, relative)")
            if "absolute" not in spec and "relative" not in spec:
                raise ValueError(f"{metric}: give absolute, relative or both")
            for key in ("absolute", "relative"):
                if key in spec and (isinstance(spec[key], (str, bool)) or not -float("inf") < spec[key] < float("inf")):
                    raise ValueError(f"{metric}: {key} must be a number (got {spec[key]!r})")
            direction = spec.get("direction")
            if direction is not None and direction not in directions:
                raise ValueError(f"{metric}: direction must be one of {', '.join(directions)} (got {direction!r})")
            if direction is None and cls.metric_directions()[metric] is None:
                raise ValueError(f"{metric}: has no natural direction; set direction ({', '.join(directions)})")
        return thresholds

    @classmethod
    def _known_metric(cls, metric: str) -> None:
        if metric not in cls.metric_directions():
            close = difflib.get_close_matches(metric, list(cls.metric_directions()), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown metric {metric!r} ({hint}allowed: {', '.join(cls.metric_directions())})")


# The pipeline's steps, in the order they run; pipeline/dag.py wires them.
STEPS = ("resolve-source", "ingest", "preprocess", "tune", "train", "resolve-baseline", "evaluate", "push")


class StepResources(_Section):
    """Kubernetes resource requests and limits of one step's pod (quantities as Kubernetes writes them)."""

    cpu_request: str | None = Field(None, pattern=r"^\d+(\.\d+)?m?$")
    cpu_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?m?$")
    memory_request: str | None = Field(None, pattern=r"^\d+(\.\d+)?([KMGTPE]i?)?$")
    memory_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?([KMGTPE]i?)?$")


class VolumeMount(_Section):
    """A PersistentVolumeClaim of the run's namespace and where the steps that use it see it."""

    pvc: str
    mount_path: str

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        # Said here: the loader's unknown-key message cannot list the keys of an optional section.
        if isinstance(raw, dict):
            allowed = sorted(cls.model_fields)
            for key in sorted(set(raw) - set(allowed), key=str):
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown key {key!r} ({hint}allowed: {', '.join(allowed)})")
        return raw

    @field_validator("pvc")
    @classmethod
    def _is_a_claim_name(cls, name: str) -> str:
        import re

        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
            raise ValueError("must be the name of a PersistentVolumeClaim: lowercase letters, digits, '-' and '.', "
                             "starting and ending with a letter or digit")
        return name

    @field_validator("mount_path")
    @classmethod
    def _is_a_free_absolute_path(cls, path: str) -> str:
        import posixpath

        if not posixpath.isabs(path):
            raise ValueError("must be an absolute path in the container, e.g. /models")
        normalized = posixpath.normpath(path)
        # A volume there would hide the project in the image (/app) or the artifacts KFP's launcher
        # hands the step (/gcs, /minio, /s3, /oci).
        reserved = ("/app", "/gcs", "/minio", "/s3", "/oci")
        if normalized == "/" or any(cls.holds(folder, normalized) for folder in reserved):
            raise ValueError(f"cannot be / or inside {', '.join(reserved)}, where the image and KFP's launcher "
                             f"keep the step's code and artifacts")
        return normalized

    @staticmethod
    def holds(mount_path: str, path: str) -> bool:
        """Whether the absolute `path` is on a volume mounted at `mount_path`."""
        return path == mount_path or path.startswith(mount_path.rstrip("/") + "/")


class VolumesConfig(_Section):
    """PVCs mounted into the steps on Kubeflow; kfp.local mounts nothing and uses the paths as they are.

    `serving` holds the serving directory: push writes it, resolve-baseline looks in it, and train (a
    warm start) and evaluate (the baseline) read the production model found there. `work` holds
    `<output_root>/work`, where tune keeps Keras Tuner's state so that a retried search resumes."""

    serving: VolumeMount | None = None
    work: VolumeMount | None = None


class KubeflowConfig(_Section):
    """How the steps run on Kubeflow Pipelines (kfp.local ignores resources and volumes)."""

    # By step name; the key `default` applies to every step that has no entry of its own.
    resources: dict[str, StepResources] = {}
    # Retries by step name, for steps that can fail for passing reasons (a storage hiccup, an evicted pod).
    retries: dict[str, int] = {}
    retry_backoff: str = Field("30s", pattern=r"^\d+s$")
    volumes: VolumesConfig = VolumesConfig()

    @field_validator("resources", "retries")
    @classmethod
    def _known_steps(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(STEPS) - {"default"})
        if unknown:
            raise ValueError(f"unknown step {', '.join(unknown)} (steps: default, {', '.join(STEPS)})")
        if any(isinstance(count, int) and count < 0 for count in value.values()):
            raise ValueError("retries cannot be negative")
        return value

    def resources_of(self, step: str) -> StepResources | None:
        return self.resources.get(step) or self.resources.get("default")

    def paths_off_the_volumes(self, config: PipelineConfig) -> list[str]:
        """Why the serving directory or tune's work_root would miss the volume meant for it, as the
        pipeline's parameters default to them (local paths made absolute; URIs need no volume). Off
        the volume, a step on the cluster writes into its own pod, and the files go with it."""
        problems = []
        serving, work = self.volumes.serving, self.volumes.work
        if serving and "://" not in config.resolved_serving_dir:
            path = os.path.realpath(config.resolved_serving_dir)
            if not VolumeMount.holds(serving.mount_path, path):
                where = (f"serving_dir {path}" if config.serving_dir else
                         f"serving_dir is not set, so the serving directory is <output_root>/serving, {path}, which")
                problems.append(f"{where} is not under kubeflow.volumes.serving.mount_path {serving.mount_path}: "
                                f"push would write where TF Serving does not read; set serving_dir to "
                                f"{serving.mount_path} or a folder in it")
        if work and "://" not in config.output_root:
            path = os.path.realpath(os.path.join(config.output_root, "work"))
            if not VolumeMount.holds(work.mount_path, path):
                problems.append(f"output_root {os.path.realpath(config.output_root)} puts tune's work_root "
                                f"(<output_root>/work) outside kubeflow.volumes.work.mount_path {work.mount_path}, "
                                f"so a retried search could not resume; set output_root to {work.mount_path} "
                                f"or a folder in it")
        return problems


class PipelineConfig(_Section):
    """The whole pipeline, as loaded from one YAML file."""

    name: str = Field("tunepipe", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    beam: BeamConfig = BeamConfig()
    tuner: TunerConfig = TunerConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    kubeflow: KubeflowConfig = KubeflowConfig()
    output_root: str = "tunepipe-out"
    serving_dir: str | None = None
    model_name: str | None = None
    tracking_uri: str | None = None

    @field_validator("model_name")
    @classmethod
    def _model_name_is_a_path_segment(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in {".", ".."}):
            raise ValueError("must be a non-empty name without '/'")
        return value

    @model_validator(mode="after")
    def _paths_are_on_the_volumes(self) -> PipelineConfig:
        problems = self.kubeflow.paths_off_the_volumes(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def resolved_model_name(self) -> str:
        return self.model_name or self.name

    @property
    def resolved_serving_dir(self) -> str:
        return self.serving_dir or os.path.join(self.output_root, "serving")


_Model = TypeVar("_Model", bound=BaseModel)


def _format_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at `loc`, found by walking the section types along the path."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def _describe(error: ValidationError, origin: str, model: type[BaseModel] = None) -> str:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model or PipelineConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"{_format_location(loc)}: unknown key ({hint}allowed: {', '.join(allowed)})")
        elif item["type"] == "missing":
            problems.append(f"{_format_location(loc)}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            shown = item.get("input")
            suffix = "" if isinstance(shown, dict) else f" (got {shown!r})"
            problems.append(f"{_format_location(loc)}: {message}{suffix}")
    return f"{origin}: " + "; ".join(problems)


def _resolve_relative(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file's relative paths relative to the file's folder; URIs are left alone."""

    def resolve(value: Any) -> Any:
        if not isinstance(value, str) or "://" in value or os.path.isabs(value):
            return value
        return str(base / value)

    resolved = dict(raw)
    if isinstance(resolved.get("data"), dict) and "source" in resolved["data"]:
        resolved["data"] = {**resolved["data"], "source": resolve(resolved["data"]["source"])}
    for key in ("output_root", "serving_dir"):
        if key in resolved:
            resolved[key] = resolve(resolved[key])
    if isinstance(resolved.get("tracking_uri"), str) and resolved["tracking_uri"].startswith("sqlite:///"):
        path = resolved["tracking_uri"].removeprefix("sqlite:///")
        resolved["tracking_uri"] = "sqlite:///" + str(resolve(path))
    return resolved


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(raw: dict[str, Any], origin: str = "config") -> PipelineConfig:
    """Validate a plain mapping into a PipelineConfig; `origin` names it in error messages."""
    return section(PipelineConfig, raw, origin)


def section(model: type[_Model], raw: dict[str, Any], origin: str) -> _Model:
    """Validate one section (e.g. a pipeline parameter holding the data config) with the same messages."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, origin, model)) from None


def load(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load the YAML file at `path` (if any) and apply `overrides` (nested mappings, e.g. from CLI flags)."""
    raw: dict[str, Any] = {}
    origin = "command line"
    if path is not None:
        origin = str(path)
        config_path = Path(path)
        try:
            text = config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"config file {path} cannot be read: {error}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error)
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(loaded).__name__}")
        raw = _resolve_relative(loaded, config_path.resolve().parent)
    if overrides:
        raw = _merge(raw, overrides)
    return from_dict(raw, origin)
