"""What tunepipe hands to a cluster and how it authenticates there, checked where a test can tell
(docs/kubeflow.md, "Security", says what the review found and what these tests hold):

- the compiled pipeline package carries no secret or token of the machine that compiled it, and no
  path of it (a path parameter of this machine is left without a default; a password in the
  tracking URI is a config error);
- the KFP bearer token reaches the server in the Authorization header and nothing else: no output,
  log record (at DEBUG) or error message of upload, submit or schedule contains it;
- every container of every rendered manifest runs as a non-root uid, unprivileged, with seccomp, a
  read-only root filesystem, bounded writable volumes and resource limits; no pod shares the host;
- the NetworkPolicies let only the namespace (and KFP's API server, to MLflow) reach MLflow and TF
  Serving, and only MLflow reach its database.

The manifests are rendered by the real kustomize, as in tests/test_manifests.py (their schema
validation covers the NetworkPolicies too); the KFP calls go to the local server of
tests/kfp_api_server.py through the real kfp.Client.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest_kfp import (PIPELINE_NAME, closed_port_url, kfp_env, kfp_server,  # noqa: F401
                                pipeline_package, write_kubeconfig)
from tests.kfp_api_server import API
from tests.test_dockerfile import dockerfile
from tests.test_manifests import (BUILDS, MANIFESTS, OVERLAYS, find, image_name, key_of, render_all,
                                  rendered, the)

ROOT = Path(__file__).resolve().parent.parent
PENGUINS_CONFIG = ROOT / "data" / "penguins" / "pipeline.yaml"

# Where credentials live in a developer's environment: none of them may end up in a compiled package.
CREDENTIAL_ENV = ("KFP_BEARER_TOKEN", "MY_KFP_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD",
                  "AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_KEY", "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET")

# Text that looks like a credential, whatever its value.
CREDENTIAL_PATTERNS = {
    "a bearer token": r"(?i)\bbearer\s+[\w.~+/=-]{8,}",
    "a private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "an AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "a JSON web token": r"\beyJ[\w-]{10,}\.[\w-]{10,}\.",
    "a GitHub token": r"\b(ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}",
    "a user and password in a URL": r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@",
    "a password, secret or token value": r"(?i)[\w-]*(password|passwd|secret|token|api[_-]?key)[\w-]*['\"]?\s*[:=]\s*"
                                         r"['\"]?[^\s'\",}{\]]{6,}",
}

# Containers that may write to their image's filesystem, and why. None do: each one that must write
# gets an emptyDir (or its data volume) at exactly that path.
WRITABLE_ROOT: dict[str, str] = {}


def build_name(build: Path) -> str:
    """base or overlays/NAME, for the builds of manifests/ and of a copy of it."""
    start = max(index for index, part in enumerate(build.parts) if part == "manifests") + 1
    return "/".join(build.parts[start:])


def secret_value() -> str:
    return f"tunepipe-test-secret-{uuid.uuid4().hex}"


def credentials_in(text: str) -> list[str]:
    return [f"{what}: {match.group(0)!r}" for what, pattern in CREDENTIAL_PATTERNS.items()
            for match in re.finditer(pattern, text)]


def test_the_credential_patterns_find_credentials():
    """So that an empty result of `credentials_in` means something."""
    leaky = ("Authorization: Bearer abcdefgh12345678\n"
             "MLFLOW_TRACKING_URI: https://alice:s3cr3t@mlflow.example.com\n"
             "aws_key: AKIAABCDEFGHIJKLMNOP\n"
             "db_password: hunter2hunter2\n"
             "-----BEGIN RSA PRIVATE KEY-----\n")
    found = " ".join(credentials_in(leaky))
    for what in ("a bearer token", "an AWS access key id", "a user and password in a URL",
                 "a password, secret or token value", "a private key"):
        assert what in found
    assert credentials_in("hypermodel_source: ''\ncode_version: 0.1.0+5649668f91a6\n") == []


# -- the compiled pipeline package --------------------------------------------------------------------

def compile_package(config_file: Path, out: Path, *extra: str) -> str:
    result = CliRunner().invoke(main, ["compile", "--config", str(config_file), "-o", str(out), *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out.read_text()


@pytest.fixture
def developer_machine(tmp_path, monkeypatch) -> dict[str, str]:
    """A home directory with the project in it as the working directory, and a token in every
    variable that commonly holds one: what `tunepipe compile` sees on a developer's laptop."""
    home = tmp_path / "home" / "alice"
    project = home / "project"
    project.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    secrets = {name: secret_value() for name in CREDENTIAL_ENV}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(home / ".config" / "gcloud" / "key.json"))
    return secrets


def config_with_local_data(directory: Path) -> Path:
    """The penguins config reading a table in the home directory, written in `directory`."""
    table = Path.home() / "data" / "customers.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(PENGUINS_CONFIG.parent / "penguins.csv", table)
    config_file = directory / "pipeline.yaml"
    config_file.write_text(PENGUINS_CONFIG.read_text().replace("source: penguins.csv", f"source: {table}"))
    return config_file


def config_for_the_cluster(directory: Path) -> Path:
    """The penguins config as docs/kubeflow.md has it compiled for a cluster: the sample table inside
    the image, output_root and serving_dir on the manifests' volumes."""
    config_file = directory / "cluster.yaml"
    config_file.write_text(PENGUINS_CONFIG.read_text().replace(
        "source: penguins.csv", "source: /app/data/penguins/penguins.csv") + """
output_root: /tunepipe
serving_dir: /models
kubeflow:
  volumes:
    serving: {pvc: tunepipe-serving, mount_path: /models}
    work: {pvc: tunepipe-work, mount_path: /tunepipe}
""")
    return config_file


def config_with_a_hypermodel(directory: Path) -> Path:
    """The penguins config (data in the image) with the user's own model module beside the config."""
    config_file = config_for_the_cluster(directory)
    (directory / "my_model.py").write_text("def build(hp, inputs):\n    return inputs.encoded\n")
    config_file.write_text(config_file.read_text().replace("preprocess:", "tuner:\n  hypermodel: my_model.py:build\n"
                                                                          "preprocess:", 1))
    return config_file


CONFIGS = {"bundled config": lambda directory: PENGUINS_CONFIG, "local data path": config_with_local_data,
           "own hypermodel": config_with_a_hypermodel,
           "cluster config": config_for_the_cluster}


def paths_of_this_machine(package: str, tmp_path: Path) -> list[str]:
    machine_paths = {"the repository": str(ROOT), "the home directory": str(Path.home()),
                     "the working directory": str(Path.cwd()), "the temporary directory": tempfile.gettempdir(),
                     "the test's directory": str(tmp_path)}
    return [f"{what} ({path})" for what, path in machine_paths.items() if f"{path.rstrip('/')}/" in package]


@pytest.mark.parametrize("variant", CONFIGS)
def test_the_compiled_package_carries_no_secret(developer_machine, tmp_path, variant):
    config_file = CONFIGS[variant](Path.cwd())
    package = compile_package(config_file, tmp_path / "pipeline.yaml", "--image", "registry.example.com/tp:1")

    for name, value in developer_machine.items():
        assert value not in package, f"the value of ${name} is in the compiled package"
    assert "gcloud" not in package and "GOOGLE_APPLICATION_CREDENTIALS" not in package
    assert credentials_in(package) == []


def test_a_package_compiled_for_the_cluster_names_no_path_of_this_machine(developer_machine, tmp_path):
    """What docs/kubeflow.md has users do today keeps the machine out of the package."""
    package = compile_package(config_for_the_cluster(Path.cwd()), tmp_path / "pipeline.yaml")
    assert paths_of_this_machine(package, tmp_path) == []


@pytest.mark.parametrize("variant", ["bundled config", "local data path"])
def test_any_compiled_package_names_no_path_of_this_machine(developer_machine, tmp_path, variant):
    package = compile_package(CONFIGS[variant](Path.cwd()), tmp_path / "pipeline.yaml")
    assert paths_of_this_machine(package, tmp_path) == []
    # ... the paths become parameters a run must be given.
    inputs = yaml.safe_load(package)["root"]["inputDefinitions"]["parameters"]
    for name in ("source", "work_root", "serving_dir"):
        assert "defaultValue" not in inputs[name] and not inputs[name].get("isOptional", False)
    assert inputs["label"]["defaultValue"] == "species"


def test_a_hypermodel_module_travels_as_text_and_is_named_by_its_file(developer_machine, tmp_path):
    package = compile_package(config_with_a_hypermodel(Path.cwd()), tmp_path / "pipeline.yaml")
    assert paths_of_this_machine(package, tmp_path) == []
    defaults = next(yaml.safe_load_all(package))["root"]["inputDefinitions"]["parameters"]
    assert defaults["tuner"]["defaultValue"]["hypermodel"] == "my_model.py:build"
    assert "def build(hp, inputs)" in defaults["hypermodel_source"]["defaultValue"]


def test_a_password_in_the_tracking_uri_never_reaches_the_package(developer_machine, tmp_path):
    config_file = config_for_the_cluster(Path.cwd())
    password = secret_value()
    config_file.write_text(config_file.read_text() + f"tracking_uri: https://alice:{password}@mlflow.example.com\n")
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", str(config_file), "-o", str(out)])
    assert result.exit_code != 0 and not out.exists()
    assert "tracking_uri" in result.output and "MLFLOW_TRACKING_PASSWORD" in result.output
    assert password not in result.output


# -- the KFP bearer token -----------------------------------------------------------------------------

@pytest.fixture
def every_log_record(caplog):
    """Log records of every logger at DEBUG. kfp_server_api sets its own and urllib3's loggers to
    WARNING whenever a client is made; they are pinned at DEBUG so that what they would say is seen."""
    caplog.set_level(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("kfp_server_api", "urllib3", "kfp")]
    levels = [logger.level for logger in loggers]
    with pytest.MonkeyPatch.context() as pinned:
        for logger in loggers:
            logger.setLevel(logging.DEBUG)
            pinned.setattr(logger, "setLevel", lambda level: None)
        yield caplog
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def everything_said(result, caplog, capfd) -> str:
    """What a user or a log collector could see: the command's output, anything written to the
    process's file descriptors, and every log record with its arguments and traceback."""
    descriptors = capfd.readouterr()
    records = [f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records]
    return "\n".join([result.stdout, result.stderr, descriptors.out, descriptors.err, caplog.text, *records])


def tunepipe(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def kubeflow_commands(host: str, package: Path) -> list[list[str]]:
    return [["upload", "--host", host, str(package)],
            ["submit", "--host", host, "--name", PIPELINE_NAME, "--experiment", "nightly"],
            ["schedule", "--host", host, "--name", PIPELINE_NAME, "--cron", "0 3 * * *"],
            ["schedule", "--host", host, "--list"],
            ["schedule", "--host", host, "--delete", f"{PIPELINE_NAME}-schedule"]]


@pytest.mark.usefixtures("kfp_env")
@pytest.mark.parametrize("source", ["$KFP_BEARER_TOKEN", "--token-env", "kubeconfig"])
def test_the_token_reaches_the_server_and_no_output(kfp_server, pipeline_package,  # noqa: F811 (fixtures)
                                                    every_log_record, capfd, monkeypatch, tmp_path, source):
    token = secret_value()
    extra: list[str] = []
    if source == "$KFP_BEARER_TOKEN":
        monkeypatch.setenv("KFP_BEARER_TOKEN", token)
    elif source == "--token-env":
        monkeypatch.setenv("MY_KFP_TOKEN", token)
        extra = ["--token-env", "MY_KFP_TOKEN"]
    else:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", token)))
    kfp_server.require_token(token)

    for command in kubeflow_commands(kfp_server.url, pipeline_package):
        result = tunepipe(*command, *extra)
        assert result.exit_code == 0, result.output
        assert token not in everything_said(result, every_log_record, capfd), f"`tunepipe {command[0]}` shows it"
        # The DEBUG records were there to be searched: urllib3 logs every request it sends.
        assert any(record.name.startswith("urllib3") and record.levelno == logging.DEBUG
                   for record in every_log_record.records)
        every_log_record.clear()

    assert {request.headers.get("authorization") for request in kfp_server.requests} == {f"Bearer {token}"}
    assert kfp_server.runs and not kfp_server.recurring_runs, "submit ran and schedule --delete deleted"
    for written in tmp_path.rglob("*"):  # kfp's context file (namespace) and anything else left behind
        if written.is_file() and written.name != "kubeconfig":
            assert token not in written.read_text(errors="replace"), f"{written} holds the token"


@pytest.mark.usefixtures("kfp_env")
@pytest.mark.parametrize("failure", ["unreachable host", "token refused", "forbidden", "server error"])
def test_no_error_message_shows_the_token(kfp_server, closed_port_url, pipeline_package,  # noqa: F811 (fixtures)
                                          every_log_record, capfd, monkeypatch, failure):
    token = secret_value()
    monkeypatch.setenv("KFP_BEARER_TOKEN", token)
    host = kfp_server.url
    if failure == "unreachable host":
        host = closed_port_url
    elif failure == "token refused":
        kfp_server.require_token(secret_value())
    else:
        for resource in ("pipelines", "experiments", "runs", "recurringruns"):
            kfp_server.fail_with({"forbidden": 403, "server error": 500}[failure], f"{API}/{resource}")

    for command in kubeflow_commands(host, pipeline_package):
        result = tunepipe(*command)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("tunepipe: error: ") and "Traceback" not in result.output
        assert token not in everything_said(result, every_log_record, capfd), f"`tunepipe {command[0]}` shows it"
        every_log_record.clear()
    if failure == "token refused":
        # Where the token came from is said, so the user knows which one to renew; the token is not.
        assert "the bearer token (from $KFP_BEARER_TOKEN) was not accepted" in result.stderr
    if failure != "unreachable host":
        assert {request.headers.get("authorization") for request in kfp_server.requests} == {f"Bearer {token}"}


# -- the pods of the manifests ------------------------------------------------------------------------

def pod_templates(document: dict) -> list[tuple[dict, dict]]:
    """(labels, pod spec) of every pod the object makes, found by its shape rather than its kind: a
    Pod, or any `template` holding a pod spec (Deployment, StatefulSet, Job, a CronJob's jobTemplate,
    a kind added later), so no workload escapes the checks below."""
    if document["kind"] == "Pod":
        return [(document["metadata"].get("labels", {}), document["spec"])]
    found: list[tuple[dict, dict]] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            template = node.get("template")
            if isinstance(template, dict) and isinstance(template.get("spec"), dict) \
                    and "containers" in template["spec"]:
                found.append((template.get("metadata", {}).get("labels", {}), template["spec"]))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document.get("spec", {}))
    return found


def containers_of(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"] + pod.get("ephemeralContainers", [])


def effective(pod: dict, container: dict, setting: str):
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    return container.get("securityContext", {}).get(setting, pod.get("securityContext", {}).get(setting))


def pods_of(build: Path) -> list[tuple[dict, dict, dict]]:
    """(object, labels, pod spec) of every pod the build makes."""
    pods = [(document, labels, pod) for document in rendered(build) for labels, pod in pod_templates(document)]
    names = {document["metadata"]["name"] for document, _, _ in pods}
    assert {"mlflow", "mlflow-postgres", "tf-serving", "tunepipe-retrain"} <= names, "a workload is not found"
    return pods


def image_user() -> tuple[int, str]:
    """The uid the tunepipe image runs as (its last USER) and its HOME."""
    steps = dockerfile()
    user = [arguments for keyword, arguments in steps if keyword == "USER"][-1].split(":")[0]
    homes = [match.group(1) for keyword, arguments in steps if keyword == "ENV"
             for match in [re.search(r"\bHOME=(\S+)", arguments)] if match]
    assert user.isdigit() and homes, "the Dockerfile sets a numeric USER and a HOME"
    return int(user), homes[-1]


def runs_the_tunepipe_image(container: dict) -> bool:
    return image_name(container["image"]).rsplit("/", 1)[-1] == "tunepipe"


@pytest.mark.parametrize("build", BUILDS, ids=build_name)
def test_every_container_runs_unprivileged_on_a_read_only_root(build):
    for document, _, pod in pods_of(build):
        for container in containers_of(pod):
            what = f"{build_name(build)}: {key_of(document)} container {container['name']}"
            context = container.get("securityContext", {})
            assert effective(pod, container, "runAsNonRoot") is True, f"{what}: runAsNonRoot is not true"
            uid, gid = effective(pod, container, "runAsUser"), effective(pod, container, "runAsGroup")
            assert isinstance(uid, int) and uid > 0, f"{what}: no non-root runAsUser (got {uid!r})"
            assert isinstance(gid, int) and gid > 0, f"{what}: no non-root runAsGroup (got {gid!r})"
            seccomp = effective(pod, container, "seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", f"{what}: seccompProfile is not RuntimeDefault"
            assert context.get("allowPrivilegeEscalation") is False, f"{what}: allowPrivilegeEscalation is not false"
            assert context.get("privileged") is not True, f"{what}: privileged"
            capabilities = context.get("capabilities", {})
            assert capabilities.get("drop") == ["ALL"] and not capabilities.get("add"), \
                f"{what}: capabilities are not drop [ALL] with nothing added"
            if container["name"] not in WRITABLE_ROOT:
                assert context.get("readOnlyRootFilesystem") is True, f"{what}: readOnlyRootFilesystem is not true"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{what}: no cpu and memory {kind}"


@pytest.mark.parametrize("build", BUILDS, ids=build_name)
def test_no_pod_shares_the_host_or_holds_a_kubernetes_api_token(build):
    for document, _, pod in pods_of(build):
        what = f"{build_name(build)}: {key_of(document)}"
        for namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(namespace), f"{what}: {namespace}"
        for volume in pod.get("volumes", []):
            assert "hostPath" not in volume, f"{what}: mounts the host path {volume['hostPath'].get('path')}"
            for source in volume.get("projected", {}).get("sources", []):
                token = source.get("serviceAccountToken")
                # A projected token is for one audience (KFP), not the Kubernetes API, and short-lived.
                assert token is None or (token.get("audience") and token.get("expirationSeconds", 3600) <= 3600), \
                    f"{what}: volume {volume['name']} projects a token for the Kubernetes API or a long-lived one"
        for container in containers_of(pod):
            assert not any("hostPort" in port for port in container.get("ports", [])), f"{what}: a hostPort"
        # None of these pods calls the Kubernetes API: no token for it is mounted.
        assert pod.get("automountServiceAccountToken") is False, f"{what}: automountServiceAccountToken is not false"


@pytest.mark.parametrize("build", BUILDS, ids=build_name)
def test_what_the_containers_write_goes_to_bounded_volumes(build):
    uid, home = image_user()
    for document, _, pod in pods_of(build):
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for name, volume in volumes.items():
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{key_of(document)}: emptyDir {name} has no sizeLimit"
        for container in containers_of(pod):
            if not runs_the_tunepipe_image(container):
                continue
            what = f"{build_name(build)}: {key_of(document)} container {container['name']}"
            # The image's user, so that the HOME and code ownership the Dockerfile sets up hold in the pod.
            assert effective(pod, container, "runAsUser") == uid, f"{what}: not the image's uid {uid}"
            writable = {mount["mountPath"] for mount in container.get("volumeMounts", [])
                        if not mount.get("readOnly") and "emptyDir" in volumes.get(mount["name"], {})}
            assert {"/tmp", home} <= writable, f"{what}: needs emptyDirs at /tmp and {home} (read-only root)"


@pytest.mark.parametrize("build", BUILDS, ids=build_name)
def test_the_cronjob_hands_its_kfp_token_over_in_the_environment_only(build):
    """The token goes from the projected file into $KFP_BEARER_TOKEN: never an argument (the process
    list shows those) and never traced by the shell into the Job's log."""
    (container,) = [container for document in find(rendered(build), "CronJob")
                    for _, pod in pod_templates(document) for container in containers_of(pod)]
    *shell, script = container["command"] + container.get("args", [])
    assert shell[0] == "sh" and not any(word.startswith("-") and "x" in word for word in shell), shell
    assert not re.search(r"^\s*set\s+(-\w*x|-o\s+xtrace)", script, flags=re.M), "the script traces its commands"
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("#"))
    assert 'KFP_BEARER_TOKEN="$(cat /var/run/secrets/kubeflow/pipelines/token)"' in code
    submit = code[code.index("exec tunepipe submit"):]
    assert "TOKEN" not in submit and "/var/run/secrets" not in submit, "the token is an argument of tunepipe submit"


# -- the NetworkPolicies ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Peer:
    """A pod that opens a connection: its namespace and labels."""

    namespace: str
    labels: dict = field(default_factory=dict)


# The pod of a KFP step (any labels KFP gives it), and KFP's API server, which opens MLflow runs.
STEP_LABELS = {"pipelines.kubeflow.org/v2_component": "true", "workflows.argoproj.io/workflow": "penguins-x7k2p"}
KFP_API_SERVER = Peer("kubeflow", {"app": "ml-pipeline"})
ANOTHER_NAMESPACE = "team-b"
BASE_NAMESPACE = "tunepipe-base"  # the base has none; any name not used below


def selects(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes label selector; an empty one selects everything."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if {"In": labels.get(key) not in values, "NotIn": key in labels and labels[key] in values,
                "Exists": key not in labels, "DoesNotExist": key in labels}[operator]:
            return False
    return True


def peer_matches(peer: dict, policy_namespace: str, source: Peer) -> bool:
    assert "ipBlock" not in peer, "an ipBlock peer: this check models pod and namespace selectors only"
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source.namespace})
    else:
        in_namespace = source.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector"), source.labels)


def port_matches(entry: dict, port: int, named_ports: dict[str, int]) -> bool:
    assert entry.get("protocol", "TCP") == "TCP", "only TCP is used"
    if "port" not in entry:
        return True
    first = named_ports.get(entry["port"]) if isinstance(entry["port"], str) else entry["port"]
    return first is not None and first <= port <= entry.get("endPort", first)


def admits(policies: list[dict], namespace: str, pod_labels: dict, named_ports: dict[str, int],
           source: Peer, port: int) -> bool:
    """Whether NetworkPolicy semantics let `source` connect to `port` of a pod with these labels:
    open if no Ingress policy selects the pod, else if any rule of one of them allows it."""
    applying = [policy for policy in policies if selects(policy["spec"]["podSelector"], pod_labels)
                and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress", []):
            if rule.get("from") and not any(peer_matches(peer, namespace, source) for peer in rule["from"]):
                continue
            if rule.get("ports") and not any(port_matches(entry, port, named_ports) for entry in rule["ports"]):
                continue
            return True
    return False


@dataclass(frozen=True)
class Target:
    """A pod of the manifests as a NetworkPolicy sees it."""

    name: str
    namespace: str
    labels: dict
    ports: dict[str, int]  # every container port, by name (and by its number)


def targets(build: Path) -> dict[str, Target]:
    found = {}
    for document, labels, pod in pods_of(build):
        namespace = document["metadata"].get("namespace", BASE_NAMESPACE)
        ports = {}
        for container in containers_of(pod):
            for port in container.get("ports", []):
                ports[str(port["containerPort"])] = port["containerPort"]
                if port.get("name"):
                    ports[port["name"]] = port["containerPort"]
        found[document["metadata"]["name"]] = Target(document["metadata"]["name"], namespace, labels, ports)
    return found


def reaches(build: Path, source: Peer, target: Target, port: int) -> bool:
    return admits(find(rendered(build), "NetworkPolicy"), target.namespace, target.labels, target.ports, source, port)


def service_ports(build: Path, target: Target) -> list[int]:
    """The container ports the Service of that name sends to."""
    service = the(rendered(build), "Service", target.name)
    assert selects({"matchLabels": service["spec"]["selector"]}, target.labels)
    return [target.ports[str(port.get("targetPort", port["port"]))] for port in service["spec"]["ports"]]


@pytest.mark.parametrize("build", BUILDS, ids=build_name)
def test_mlflow_and_tf_serving_answer_their_namespace_only(build):
    pods = targets(build)
    for name in ("mlflow", "tf-serving"):
        target = pods[name]
        for port in service_ports(build, target):
            what = f"{build_name(build)}: {name}:{port}"
            assert reaches(build, Peer(target.namespace, STEP_LABELS), target, port), \
                f"{what} is closed to the pipeline's steps"
            assert reaches(build, Peer(target.namespace), target, port), f"{what} is closed to its namespace"
            for outsider in (Peer(ANOTHER_NAMESPACE, STEP_LABELS), Peer(ANOTHER_NAMESPACE)):
                assert not reaches(build, outsider, target, port), f"{what} is open to another namespace"
        assert not reaches(build, Peer(target.namespace, STEP_LABELS), target, 22), \
            f"{build_name(build)}: {name} is open on a port it does not serve"


@pytest.mark.parametrize("build", BUILDS, ids=build_name)
def test_kfps_api_server_reaches_mlflow_and_nothing_else_of_its_namespace_does(build):
    mlflow = targets(build)["mlflow"]
    assert reaches(build, KFP_API_SERVER, mlflow, 5000), "KFP's API server cannot open the MLflow runs"
    if mlflow.namespace != KFP_API_SERVER.namespace:
        assert not reaches(build, Peer("kubeflow", {"app": "ml-pipeline-ui"}), mlflow, 5000), \
            "another pod of the kubeflow namespace reaches MLflow"


@pytest.mark.parametrize("build", BUILDS, ids=build_name)
def test_only_the_mlflow_server_reaches_its_database(build):
    pods = targets(build)
    database = pods["mlflow-postgres"]
    for port in service_ports(build, database):
        assert reaches(build, Peer(database.namespace, pods["mlflow"].labels), database, port)
        for other in (Peer(database.namespace, STEP_LABELS), Peer(database.namespace, pods["tf-serving"].labels),
                      KFP_API_SERVER, Peer(ANOTHER_NAMESPACE, pods["mlflow"].labels)):
            assert not reaches(build, other, database, port), f"{build_name(build)}: {other} reaches the database"


@pytest.mark.parametrize("build", BUILDS, ids=build_name)
def test_every_pod_is_closed_to_other_namespaces(build):
    """Default deny: a workload added later without a policy of its own is isolated too."""
    policies = find(rendered(build), "NetworkPolicy")
    for target in targets(build).values():
        assert any(selects(policy["spec"]["podSelector"], target.labels) for policy in policies), \
            f"{build_name(build)}: no NetworkPolicy selects the pods of {target.name}"
        for port in set(target.ports.values()) | {22, 8080}:
            assert not reaches(build, Peer(ANOTHER_NAMESPACE, target.labels), target, port), \
                f"{build_name(build)}: {target.name}:{port} is open to another namespace"


def test_the_policy_model_follows_kubernetes():
    """Unisolated pods are open; policies add up; a namespaceSelector and a podSelector in one peer
    both apply; a podSelector alone means the policy's namespace."""
    pod, ports = {"app": "db"}, {"sql": 5432}
    deny = {"spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}}
    assert admits([], "ns", pod, ports, Peer("elsewhere"), 5432)
    assert not admits([deny], "ns", pod, ports, Peer("ns"), 5432)
    from_web = {"spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "sql"}]}]}}
    assert admits([deny, from_web], "ns", pod, ports, Peer("ns", {"app": "web"}), 5432)
    assert not admits([deny, from_web], "ns", pod, ports, Peer("other", {"app": "web"}), 5432)
    assert not admits([deny, from_web], "ns", pod, ports, Peer("ns", {"app": "web"}), 5433)
    from_ops = {"spec": {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
         "podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["admin"]}]}}]}]}}
    assert admits([from_ops], "ns", pod, ports, Peer("ops", {"role": "admin"}), 1)
    assert not admits([from_ops], "ns", pod, ports, Peer("ops", {"role": "intern"}), 1)
    assert not admits([from_ops], "ns", pod, ports, Peer("ns", {"role": "admin"}), 1)


# -- the checks fail on a bad manifest ----------------------------------------------------------------

def mutated_builds(tmp_path: Path, file: str, old: str, new: str, count: int = -1) -> list[Path]:
    """The base and overlays rendered from a copy of manifests/ with one edit to `file`."""
    copied = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copied)
    edited = copied / "base" / file
    text = edited.read_text()
    assert old in text, f"{file} no longer has {old!r}: update this test"
    edited.write_text(text.replace(old, new, count))
    builds = [copied / "base", *(copied / "overlays" / overlay.name for overlay in OVERLAYS)]
    render_all(builds)
    return builds


def test_a_writable_root_filesystem_fails_the_container_check(tmp_path):
    for build in mutated_builds(tmp_path, "tf-serving.yaml", "readOnlyRootFilesystem: true",
                                "readOnlyRootFilesystem: false"):
        with pytest.raises(AssertionError, match="tf-serving.*readOnlyRootFilesystem is not true"):
            test_every_container_runs_unprivileged_on_a_read_only_root(build)


def test_a_root_container_fails_the_container_check(tmp_path):
    for build in mutated_builds(tmp_path, "mlflow-postgres.yaml", "runAsUser: 999", "runAsUser: 0"):
        with pytest.raises(AssertionError, match="mlflow-postgres.*no non-root runAsUser"):
            test_every_container_runs_unprivileged_on_a_read_only_root(build)


def test_opening_mlflow_to_every_namespace_fails_the_policy_check(tmp_path):
    # The first `podSelector: {}` peer is the mlflow policy's "any pod of this namespace".
    for build in mutated_builds(tmp_path, "network-policy.yaml", "- podSelector: {}", "- namespaceSelector: {}", 1):
        with pytest.raises(AssertionError, match="mlflow:5000 is open to another namespace"):
            test_mlflow_and_tf_serving_answer_their_namespace_only(build)


def test_a_workload_outside_the_default_deny_fails_the_policy_check(tmp_path):
    builds = mutated_builds(tmp_path, "network-policy.yaml", "app.kubernetes.io/part-of: tunepipe\n  policyTypes",
                            "app.kubernetes.io/component: nothing\n  policyTypes")
    for build in builds:
        with pytest.raises(AssertionError, match="no NetworkPolicy selects the pods of tunepipe-retrain"):
            test_every_pod_is_closed_to_other_namespaces(build)


def test_the_network_policies_are_in_every_build():
    # Schema-validated with every other object by tests/test_manifests.py.
    for build in BUILDS:
        names = {policy["metadata"]["name"] for policy in find(rendered(build), "NetworkPolicy")}
        assert names == {"tunepipe-deny-ingress", "mlflow", "tf-serving", "mlflow-postgres"}, build_name(build)
