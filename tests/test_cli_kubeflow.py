"""`tunepipe upload / submit / schedule` as a user meets them, against a local KFP API server.

The commands run through click's CliRunner on the real `tunepipe` group, drive the real kfp.Client,
and the tests assert on what the server received, and on one clear line when something is wrong.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest_kfp import (PIPELINE_NAME, closed_port_url, kfp_env, kfp_server,  # noqa: F401
                                pipeline_package, write_kubeconfig)
from tests.kfp_api_server import API

pytestmark = pytest.mark.usefixtures("kfp_env")


def tunepipe(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tunepipe: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def only(requests):
    assert len(requests) == 1, requests
    return requests[0]


@pytest.fixture
def uploaded(kfp_server, pipeline_package):
    """The server after one `tunepipe upload` of the test pipeline."""
    result = tunepipe("upload", "--host", kfp_server.url, str(pipeline_package))
    assert result.exit_code == 0, result.output
    return kfp_server


def test_the_kubeflow_commands_are_in_the_tunepipe_group():
    assert {"upload", "submit", "schedule"} <= set(main.commands)


def test_importing_the_commands_does_not_import_kfp():
    code = "import sys, pipeline.cli_kubeflow; print([m for m in ('kfp', 'kfp_server_api') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- upload ------------------------------------------------------------------------------------------

def test_upload_defaults_to_pipeline_yaml_and_its_pipeline_name(kfp_server, pipeline_package, tmp_path, monkeypatch):
    shutil.copy(pipeline_package, tmp_path / "pipeline.yaml")
    monkeypatch.chdir(tmp_path)

    first = tunepipe("upload", "--host", kfp_server.url)
    second = tunepipe("upload", "--host", kfp_server.url, "--version", "v2")

    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    created = only(kfp_server.requests_to("POST", f"{API}/pipelines/upload"))
    assert created.query["name"] == PIPELINE_NAME
    assert created.files["uploadfile"].content == pipeline_package.read_bytes()
    added = only(kfp_server.requests_to("POST", f"{API}/pipelines/upload_version"))
    pipeline_id = next(iter(kfp_server.pipelines))
    assert added.query == {"name": "v2", "pipelineid": pipeline_id}

    assert first.stdout.splitlines()[0].startswith(f"created pipeline '{PIPELINE_NAME}' (id {pipeline_id})")
    assert second.stdout.splitlines()[0].startswith(f"added to pipeline '{PIPELINE_NAME}' (id {pipeline_id}): "
                                                    "version 'v2'")
    assert second.stdout.splitlines()[1].startswith(f"UI: {kfp_server.url}/#/pipelines/details/{pipeline_id}/version/")
    assert len(second.stdout.splitlines()) == 2


def test_upload_name_option_overrides_the_package_name(kfp_server, pipeline_package):
    result = tunepipe("upload", "--host", kfp_server.url, "--name", "penguins", str(pipeline_package))
    assert result.exit_code == 0, result.output
    assert only(kfp_server.requests_to("POST", f"{API}/pipelines/upload")).query["name"] == "penguins"


def test_upload_of_a_missing_package_is_one_line_and_no_request(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = tunepipe("upload", "--host", kfp_server.url)
    assert_one_line_error(result, "pipeline package pipeline.yaml does not exist: compile one with `tunepipe compile`")
    assert kfp_server.requests == []


def test_upload_of_a_file_that_is_not_a_compiled_pipeline_is_one_line(kfp_server, tmp_path):
    package = tmp_path / "pipeline.yaml"
    package.write_text("just: a mapping\n")
    result = tunepipe("upload", "--host", kfp_server.url, str(package))
    assert_one_line_error(result, f"pipeline package {package} has no pipelineInfo.name")
    assert kfp_server.requests == []


def test_upload_without_a_host_says_how_to_give_one(pipeline_package):
    result = tunepipe("upload", str(pipeline_package))
    assert_one_line_error(result, "give --host URL (the KFP API endpoint) or set KF_PIPELINES_ENDPOINT")


def test_the_host_can_come_from_kfps_own_env_var(kfp_server, pipeline_package, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_server.url)
    result = tunepipe("upload", str(pipeline_package))
    assert result.exit_code == 0, result.output
    assert kfp_server.requests_to("POST", f"{API}/pipelines/upload")


# -- submit ------------------------------------------------------------------------------------------

def test_submit_parses_params_and_runs_the_newest_version_in_a_new_experiment(uploaded):
    result = tunepipe("submit", "--host", uploaded.url, "--name", PIPELINE_NAME, "--experiment", "nightly",
                      "--param", "repeats=3", "--param", "greeting=hi there", "--param", "tags=[1, 2]",
                      "--param", 'quoted="7"', "--param", "expr=a=b", "--run-name", "try-1")

    assert result.exit_code == 0, result.output
    assert only(uploaded.requests_to("POST", f"{API}/experiments")).body["display_name"] == "nightly"
    sent = only(uploaded.requests_to("POST", f"{API}/runs")).body
    assert sent["runtime_config"]["parameters"] == {"repeats": 3, "greeting": "hi there", "tags": [1, 2],
                                                    "quoted": "7", "expr": "a=b"}
    assert sent["display_name"] == "try-1"
    newest = max(uploaded.versions.values(), key=lambda version: version["created_at"])
    assert sent["pipeline_version_reference"]["pipeline_version_id"] == newest["pipeline_version_id"]
    run_id = next(iter(uploaded.runs))
    assert result.stdout.splitlines() == [
        f"started run 'try-1' (id {run_id}) of pipeline '{PIPELINE_NAME}' version '{PIPELINE_NAME}' "
        "in experiment 'nightly'",
        f"UI: {uploaded.url}/#/runs/details/{run_id}"]


@pytest.mark.parametrize("param, message", [
    ("repeats", "--param 'repeats' is not NAME=VALUE"),
    ("=3", "--param '=3' is not NAME=VALUE"),
])
def test_a_malformed_param_is_one_line_naming_it_and_no_request(kfp_server, param, message):
    result = tunepipe("submit", "--host", kfp_server.url, "--name", PIPELINE_NAME, "--param", param)
    assert_one_line_error(result, message)
    assert kfp_server.requests == []


def test_a_param_given_twice_is_an_error(kfp_server):
    result = tunepipe("submit", "--host", kfp_server.url, "--name", PIPELINE_NAME,
                      "--param", "repeats=1", "--param", "repeats=2")
    assert_one_line_error(result, "--param 'repeats' is given twice")
    assert kfp_server.requests == []


def test_retrain_sets_the_retraining_parameters_of_a_scheduled_run(uploaded):
    result = tunepipe("schedule", "--host", uploaded.url, "--name", PIPELINE_NAME, "--cron", "0 3 * * *",
                      "--retrain", "--param", "repeats=2")

    assert result.exit_code == 0, result.output
    sent = only(uploaded.requests_to("POST", f"{API}/recurringruns")).body
    assert sent["runtime_config"]["parameters"] == {"repeats": 2, "reuse_hyperparameters": True, "warm_start": True}


def test_retrain_contradicted_by_a_param_is_an_error(kfp_server):
    result = tunepipe("submit", "--host", kfp_server.url, "--name", PIPELINE_NAME, "--retrain",
                      "--param", "warm_start=false")
    assert_one_line_error(result, "--retrain sets warm_start=true; --param says otherwise")
    assert kfp_server.requests == []


def test_submitting_a_pipeline_never_uploaded_is_one_line(kfp_server):
    result = tunepipe("submit", "--host", kfp_server.url, "--name", "nope")
    assert_one_line_error(result, f"no pipeline named 'nope' on KFP at {kfp_server.url}: upload it first")
    assert kfp_server.runs == {}


# -- schedule ----------------------------------------------------------------------------------------

def test_schedule_sends_kfp_cron_max_concurrency_and_no_catchup_by_default(uploaded):
    result = tunepipe("schedule", "--host", uploaded.url, "--name", PIPELINE_NAME, "--cron", "0 3 * * *",
                      "--param", "repeats=2", "--max-concurrency", "2")

    assert result.exit_code == 0, result.output
    sent = only(uploaded.requests_to("POST", f"{API}/recurringruns")).body
    assert sent["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(sent["max_concurrency"]) == 2
    assert sent["no_catchup"] is True
    assert sent["display_name"] == f"{PIPELINE_NAME}-schedule"
    assert sent["runtime_config"]["parameters"] == {"repeats": 2}
    assert only(uploaded.requests_to("POST", f"{API}/experiments")).body["display_name"] == "Default"
    recurring_run_id = next(iter(uploaded.recurring_runs))
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"scheduled '{PIPELINE_NAME}-schedule' (id {recurring_run_id}): ")
    assert "cron '0 0 3 * * *'" in lines[0] and "no catch-up" in lines[0]
    assert lines[1] == f"UI: {uploaded.url}/#/recurringrun/details/{recurring_run_id}"


def test_catchup_flag_is_sent(uploaded):
    result = tunepipe("schedule", "--host", uploaded.url, "--name", PIPELINE_NAME, "--cron", "0 0 3 * * *",
                      "--catchup")
    assert result.exit_code == 0, result.output
    assert only(uploaded.requests_to("POST", f"{API}/recurringruns")).body["no_catchup"] is False


def test_scheduling_the_same_job_again_replaces_it_on_the_newest_version(uploaded, pipeline_package):
    schedule = ["schedule", "--host", uploaded.url, "--name", PIPELINE_NAME, "--job-name", "retrain"]
    assert tunepipe(*schedule, "--cron", "0 3 * * *").exit_code == 0
    old_id = next(iter(uploaded.recurring_runs))
    assert tunepipe("upload", "--host", uploaded.url, "--version", "v2", str(pipeline_package)).exit_code == 0
    newest = next(version for version in uploaded.versions.values() if version["display_name"] == "v2")

    result = tunepipe(*schedule, "--cron", "0 4 * * *")

    assert result.exit_code == 0, result.output
    only(uploaded.requests_to("DELETE", f"{API}/recurringruns/{old_id}"))
    created = uploaded.requests_to("POST", f"{API}/recurringruns")[-1].body
    assert created["pipeline_version_reference"]["pipeline_version_id"] == newest["pipeline_version_id"]
    assert created["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * *"
    assert old_id not in uploaded.recurring_runs and len(uploaded.recurring_runs) == 1
    assert f"replacing {old_id}" in result.stdout


def test_schedule_list_and_delete(uploaded):
    for job, cron in (("retrain", "0 3 * * *"), ("weekly", "0 5 * * 0")):
        assert tunepipe("schedule", "--host", uploaded.url, "--name", PIPELINE_NAME, "--job-name", job,
                        "--cron", cron).exit_code == 0
    ids = {run["display_name"]: run["recurring_run_id"] for run in uploaded.recurring_runs.values()}

    listed = tunepipe("schedule", "--host", uploaded.url, "--list")
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "CRON", "STATE", "ID"]
    assert sorted(row.split()[0] for row in rows) == ["retrain", "weekly"]
    retrain_row = next(row for row in rows if row.startswith("retrain"))
    assert "0 0 3 * * *" in retrain_row and "enabled" in retrain_row and retrain_row.endswith(ids["retrain"])

    deleted = tunepipe("schedule", "--host", uploaded.url, "--delete", "retrain")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.strip() == f"deleted recurring run 'retrain' (id {ids['retrain']})"
    only(uploaded.requests_to("DELETE", f"{API}/recurringruns/{ids['retrain']}"))
    assert [run["display_name"] for run in uploaded.recurring_runs.values()] == ["weekly"]

    again = tunepipe("schedule", "--host", uploaded.url, "--delete", "retrain")
    assert_one_line_error(again, "no recurring run named 'retrain' on KFP at")


def test_schedule_list_with_nothing_scheduled(kfp_server):
    result = tunepipe("schedule", "--host", kfp_server.url, "--list")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"no recurring runs in KFP at {kfp_server.url}"


def test_schedule_list_of_one_experiment(uploaded):
    for job, experiment in (("retrain", "nightly"), ("weekly", "weekly")):
        assert tunepipe("schedule", "--host", uploaded.url, "--name", PIPELINE_NAME, "--job-name", job,
                        "--cron", "0 3 * * *", "--experiment", experiment).exit_code == 0
    result = tunepipe("schedule", "--host", uploaded.url, "--list", "--experiment", "weekly")
    assert result.exit_code == 0, result.output
    assert [row.split()[0] for row in result.stdout.splitlines()[1:]] == ["weekly"]


@pytest.mark.parametrize("cron, message", [
    ("0 25 * * *", "cron expression '0 25 * * *': the hour field '25' is out of range (0-23)"),
    ("daily", "cron expression 'daily' has 1 field(s): give 5"),
    ("0 3 * * MON-FOO", "the day-of-week field 'MON-FOO' is not a valid day-of-week"),
])
def test_a_bad_cron_fails_before_any_request(kfp_server, cron, message):
    result = tunepipe("schedule", "--host", kfp_server.url, "--name", PIPELINE_NAME, "--cron", cron)
    assert_one_line_error(result, message)
    assert kfp_server.requests == []


@pytest.mark.parametrize("args, message", [
    (["--list", "--delete", "retrain"], "give only one of --list and --delete JOB"),
    (["--list", "--name", PIPELINE_NAME], "--list takes no --name or --cron"),
    (["--name", PIPELINE_NAME], "give --name PIPELINE and --cron EXPR to schedule, or --list, or --delete JOB"),
    ([], "give --name PIPELINE and --cron EXPR to schedule"),
])
def test_schedule_options_that_do_not_fit_are_one_line(kfp_server, args, message):
    result = tunepipe("schedule", "--host", kfp_server.url, *args)
    assert_one_line_error(result, message)
    assert kfp_server.requests == []


# -- errors and credentials --------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["upload", "{package}"],
    ["submit", "--name", PIPELINE_NAME],
    ["schedule", "--name", PIPELINE_NAME, "--cron", "0 3 * * *"],
    ["schedule", "--list"],
    ["schedule", "--delete", "retrain"],
])
def test_an_unreachable_host_is_one_line(closed_port_url, pipeline_package, command):
    args = [arg.format(package=pipeline_package) for arg in command]
    result = tunepipe(*args[:1], "--host", closed_port_url, *args[1:])
    assert_one_line_error(result, f"cannot reach KFP at {closed_port_url} while connecting: connection refused")


@pytest.mark.parametrize("status, fragment", [
    (401, "answered HTTP 401 Unauthorized while connecting: it wants a bearer token"),
    (403, "answered HTTP 403 Forbidden while uploading pipeline 'hello-pipeline': the identity of this token"),
    (404, "answered HTTP 404 Not Found while uploading pipeline 'hello-pipeline': not found; is"),
])
def test_http_errors_are_one_line(kfp_server, pipeline_package, status, fragment):
    if status == 401:
        kfp_server.require_token("sekrit")
    else:
        kfp_server.fail_with(status, f"{API}/pipelines")
    result = tunepipe("upload", "--host", kfp_server.url, str(pipeline_package))
    assert_one_line_error(result, f"KFP at {kfp_server.url} {fragment}")
    assert kfp_server.pipelines == {}


def test_http_errors_are_one_line_for_submit_and_schedule_too(uploaded):
    uploaded.fail_with(403, f"{API}/runs")
    uploaded.fail_with(404, f"{API}/recurringruns")
    submitted = tunepipe("submit", "--host", uploaded.url, "--name", PIPELINE_NAME)
    assert_one_line_error(submitted, "answered HTTP 403 Forbidden while starting a run of pipeline 'hello-pipeline'")
    scheduled = tunepipe("schedule", "--host", uploaded.url, "--name", PIPELINE_NAME, "--cron", "0 3 * * *")
    assert_one_line_error(scheduled, "answered HTTP 404 Not Found while scheduling 'hello-pipeline-schedule'")


def test_token_env_option_sends_that_variables_token(kfp_server, pipeline_package, monkeypatch):
    monkeypatch.setenv("MY_KFP_TOKEN", "from-option")
    kfp_server.require_token("from-option")
    result = tunepipe("upload", "--host", kfp_server.url, "--token-env", "MY_KFP_TOKEN", str(pipeline_package))
    assert result.exit_code == 0, result.output
    assert {request.headers["authorization"] for request in kfp_server.requests} == {"Bearer from-option"}


def test_a_token_env_that_is_not_set_is_one_line(kfp_server, pipeline_package):
    result = tunepipe("upload", "--host", kfp_server.url, "--token-env", "MY_KFP_TOKEN", str(pipeline_package))
    assert_one_line_error(result, "--token-env MY_KFP_TOKEN: the environment variable MY_KFP_TOKEN is not set")
    assert kfp_server.requests == []


def test_a_refused_token_env_token_is_named_in_the_error(kfp_server, pipeline_package, monkeypatch):
    monkeypatch.setenv("MY_KFP_TOKEN", "stale")
    kfp_server.require_token("fresh")
    result = tunepipe("upload", "--host", kfp_server.url, "--token-env", "MY_KFP_TOKEN", str(pipeline_package))
    assert_one_line_error(result, "the bearer token (from $MY_KFP_TOKEN) was not accepted")


def test_the_default_token_env_var_reaches_the_server(kfp_server, pipeline_package, monkeypatch):
    monkeypatch.setenv("KFP_BEARER_TOKEN", "from-env")
    kfp_server.require_token("from-env")
    result = tunepipe("upload", "--host", kfp_server.url, str(pipeline_package))
    assert result.exit_code == 0, result.output
    assert {request.headers["authorization"] for request in kfp_server.requests} == {"Bearer from-env"}


def test_the_kubeconfig_token_reaches_the_server(kfp_server, pipeline_package, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", "from-kubeconfig")))
    kfp_server.require_token("from-kubeconfig")
    result = tunepipe("upload", "--host", kfp_server.url, str(pipeline_package))
    assert result.exit_code == 0, result.output
    assert {request.headers["authorization"] for request in kfp_server.requests} == {"Bearer from-kubeconfig"}
