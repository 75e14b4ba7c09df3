"""The `kubeflow` config section: how the steps run as pods on Kubeflow Pipelines (resources,
retries, the PVCs they mount), and the Kubernetes path policy that keeps the serving directory and
tune's state on those volumes. kfp.local ignores all of it."""
from __future__ import annotations

import difflib
import os
import posixpath
import re
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from components.section import Section
from pipeline.steps import BY_NAME
from pipeline.steps import NAMES as STEPS

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig


class StepResources(Section):
    """Kubernetes resource requests and limits of one step's pod (quantities as Kubernetes writes them)."""

    cpu_request: str | None = Field(None, pattern=r"^\d+(\.\d+)?m?$")
    cpu_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?m?$")
    memory_request: str | None = Field(None, pattern=r"^\d+(\.\d+)?([KMGTPE]i?)?$")
    memory_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?([KMGTPE]i?)?$")
    # A GPU (or other accelerator) for the pod: how many, and the Kubernetes resource name KFP asks
    # for (`nvidia.com/gpu` unless said).
    accelerator_limit: int | None = Field(None, ge=1)
    accelerator_type: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _a_gpu_by_default(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("accelerator_limit") is not None and raw.get("accelerator_type") is None:
            return {**raw, "accelerator_type": "nvidia.com/gpu"}
        return raw


class VolumeMount(Section):
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
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
            raise ValueError("must be the name of a PersistentVolumeClaim: lowercase letters, digits, '-' and '.', "
                             "starting and ending with a letter or digit")
        return name

    @field_validator("mount_path")
    @classmethod
    def _is_a_free_absolute_path(cls, path: str) -> str:
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


class VolumesConfig(Section):
    """PVCs mounted into the steps on Kubeflow; kfp.local mounts nothing and uses the paths as they are.

    `serving` holds the serving directory: push writes it, resolve-baseline looks in it, and train (a
    warm start) and evaluate (the baseline) read the production model found there. `work` holds
    `<output_root>/work`, where tune keeps Keras Tuner's state so that a retried search resumes."""

    serving: VolumeMount | None = None
    work: VolumeMount | None = None


class KubeflowConfig(Section):
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
        return next((self.resources[name] for name in (*_settings_of(step), "default") if name in self.resources), None)

    def retries_of(self, step: str) -> int:
        return next((self.retries[name] for name in (*_settings_of(step), "default") if name in self.retries), 0)

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


def _settings_of(step: str) -> tuple[str, ...]:
    """The names a step's resources and retries are looked up under: its own, then the step it is a
    part of (a tune worker runs as the tune step would: `kubeflow.resources.tune` is every worker's)."""
    found = BY_NAME.get(step)
    return (step, found.part_of) if found is not None and found.part_of else (step,)
