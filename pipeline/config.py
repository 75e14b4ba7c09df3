"""The typed pipeline configuration, loaded from one YAML file: `PipelineConfig` composed of the
sections the steps own (each beside its step, e.g. `components.tune.config.TunerConfig`) plus the
Kubeflow and output settings of the orchestration layer.

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
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from components.beam_run import BeamConfig
from components.errors import ConfigError
from components.evaluate.config import EvaluationConfig
from components.ingest.config import DataConfig
from components.preprocess.config import PreprocessConfig
from components.section import Section
from components.train.config import TrainingConfig
from components.tune.config import TunerConfig
from pipeline.kubeflow_config import KubeflowConfig

DEFAULT_NAME = "tunepipe"


class PipelineConfig(Section):
    """The whole pipeline, as loaded from one YAML file."""

    # The pipeline's and the MLflow experiment's name; the model's too unless model_name says.
    # Default: named after the data (`name_of_source`), so two tables never share a name by accident.
    name: str = Field(DEFAULT_NAME, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
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

    @model_validator(mode="before")
    @classmethod
    def _named_after_the_data(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "name" not in raw and isinstance(raw.get("data"), dict) \
                and isinstance(raw["data"].get("source"), str):
            return {**raw, "name": name_of_source(raw["data"]["source"])}
        return raw

    @field_validator("tracking_uri")
    @classmethod
    def _no_password_in_the_uri(cls, value: str | None) -> str | None:
        # It would reach every step's environment, the compiled package and the logs.
        if value and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("must not hold a user or password: set MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead")
        return value

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


def name_of_source(source: str) -> str:
    """A pipeline name from the data: the file's stem (`cars.csv` -> `cars`), or for a glob or a span
    pattern the folder the pattern starts below (`events/{YYYY}-{MM}-{DD}/*.parquet` -> `events`),
    as lowercase letters, digits and dashes."""
    parts = [part for part in source.split("://", 1)[-1].replace("\\", "/").split("/") if part]
    fixed = next((index for index, part in enumerate(parts) if any(char in part for char in "*?[{")), None)
    if fixed is None:
        candidate = parts[-1].split(".")[0] if parts else ""
    else:
        candidate = parts[fixed - 1] if fixed > 0 else ""
    name = re.sub(r"[^a-z0-9]+", "-", candidate.lower()).strip("-")
    return name or DEFAULT_NAME


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
            # A tracking URI may hold a password: it is never repeated.
            suffix = "" if isinstance(shown, dict) or loc[-1:] == ("tracking_uri",) else f" (got {shown!r})"
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
    if isinstance(resolved.get("tuner"), dict) and isinstance(resolved["tuner"].get("hypermodel"), str):
        resolved["tuner"] = {**resolved["tuner"], "hypermodel": resolve(resolved["tuner"]["hypermodel"])}
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
    """Validate a plain mapping into a PipelineConfig; `origin` names it in error messages.

    The hypermodel module is checked here, where the config is read: a step gets its text as a
    parameter (`pipeline.dag`), and the file need not exist where the step runs."""
    loaded = section(PipelineConfig, raw, origin)
    if loaded.tuner.hypermodel:
        from components.model.hypermodel import HypermodelSource

        try:
            HypermodelSource.read(loaded.tuner.hypermodel)
        except ConfigError as error:
            raise ConfigError(f"{origin}: {error}") from None
    return loaded


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
