"""The typed pipeline configuration: one frozen section per concern, loaded from one YAML file.

Every section is validated when the file is loaded. An unknown key, a wrong type or a value outside
the allowed set is a `ConfigError` that names the key and what is allowed, so a typo never reaches a
step that has been running for an hour.

Relative paths written in a config file are resolved against the file's folder (as kustomize and
docker compose do); paths given on the command line or left to their defaults, against the working
directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

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
    """The source table and how to read and split it: everything the ingest step depends on."""

    source: str
    label: str
    format: Literal["auto", "csv", "parquet"] = "auto"
    problem_type: Literal["classification"] = "classification"
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig = SplitConfig()
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES
    # Rows that cannot be parsed go to a rejects file; past this share of the rows, ingest fails.
    max_reject_fraction: float = Field(0.01, ge=0, le=1)

    @model_validator(mode="after")
    def _label_is_not_a_feature(self) -> DataConfig:
        named = set(self.features.include or ()) | set(self.features.types)
        if self.label in named:
            raise ValueError(f"the label {self.label!r} cannot also be listed as a feature")
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


class TunerConfig(_Section):
    """The hyperparameter search (Keras Tuner). Owned by the tune step."""

    enabled: bool = True
    algorithm: Literal["hyperband", "random", "bayesian"] = "hyperband"
    max_epochs: int = Field(20, ge=1)
    factor: int = Field(3, ge=2)
    hyperband_iterations: int = Field(1, ge=1)
    max_trials: int = Field(20, ge=1)
    seed: int = 42
    objective: str = "val_accuracy"
    direction: Literal["max", "min"] = "max"


class TrainingConfig(_Section):
    """Training the final model with the best hyperparameters. Owned by the train step."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    early_stopping_patience: int = Field(10, ge=1)


class PipelineConfig(_Section):
    """The whole pipeline, as loaded from one YAML file."""

    name: str = Field("tunepipe", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    beam: BeamConfig = BeamConfig()
    tuner: TunerConfig = TunerConfig()
    training: TrainingConfig = TrainingConfig()
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

    @property
    def resolved_model_name(self) -> str:
        return self.model_name or self.name

    @property
    def resolved_serving_dir(self) -> str:
        return self.serving_dir or os.path.join(self.output_root, "serving")


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


def _describe(error: ValidationError, origin: str) -> str:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(PipelineConfig, loc))
            problems.append(f"{_format_location(loc)}: unknown key (allowed: {allowed})")
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
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, origin)) from None


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
