"""Fixtures for the Kubeflow tests: a local KFP API server, a compiled package, a clean environment.

Imported by name from the test modules that need them (`from tests.conftest_kfp import ...`).
"""
# No `from __future__ import annotations` here: kfp reads the component annotations as types.
import socket
from pathlib import Path
from typing import Iterator

import kfp
import pytest
from kfp import compiler, dsl

from tests.kfp_api_server import KfpApiServer

PIPELINE_NAME = "hello-pipeline"

# Everything that would let the developer's own Kubeflow settings leak into a test.
_KFP_ENV = ("KFP_BEARER_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
            "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
            "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_ID",
            "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET", "MY_KFP_TOKEN")


@dsl.component(base_image="python:3.11")
def greet(greeting: str, repeats: int) -> str:
    return " ".join([greeting] * repeats)


@dsl.pipeline(name=PIPELINE_NAME, description="A trivial pipeline the KFP client tests upload.")
def hello_pipeline(greeting: str = "hello", repeats: int = 1):
    greet(greeting=greeting, repeats=repeats)


@pytest.fixture(scope="session")
def pipeline_package(tmp_path_factory) -> Path:
    """A pipeline compiled by kfp's own compiler: what `tunepipe compile` hands to `upload`."""
    package = tmp_path_factory.mktemp("package") / "pipeline.yaml"
    compiler.Compiler().compile(hello_pipeline, package_path=str(package))
    return package


@pytest.fixture
def kfp_env(monkeypatch, tmp_path) -> None:
    """No token, endpoint or kubeconfig of the developer's reaches the code under test."""
    for name in _KFP_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent-kubeconfig"))
    # kfp.Client also reads a namespace and auth headers from ~/.config/kfp/context.json.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "absent-kfp-context.json"))


@pytest.fixture
def kfp_server(kfp_env) -> Iterator[KfpApiServer]:
    with KfpApiServer() as server:
        yield server


@pytest.fixture
def closed_port_url() -> str:
    """The URL of a local port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_server_url() -> Iterator[str]:
    """The URL of a port that accepts connections and never answers: a hung server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def write_kubeconfig(path: Path, token: str) -> Path:
    """A kubeconfig whose current context's user has `token`, next to a context that has another."""
    path.write_text(f"""apiVersion: v1
kind: Config
current-context: kubeflow
clusters:
- name: cluster
  cluster: {{server: https://127.0.0.1:6443}}
contexts:
- name: other
  context: {{cluster: cluster, user: someone-else}}
- name: kubeflow
  context: {{cluster: cluster, user: pipelines-user}}
users:
- name: someone-else
  user: {{token: not-this-one}}
- name: pipelines-user
  user: {{token: {token}}}
""")
    return path
