"""pipeline.kfp_client driving the real kfp.Client against a local server that speaks KFP's v2beta1 API.

Every test asserts on the requests the server recorded: what a real KFP backend would have received.
"""
from __future__ import annotations

import json

import pytest

from pipeline import kfp_client
from pipeline.kfp_cron import to_kfp_cron
from components.errors import TunepipeError
from tests.conftest_kfp import (PIPELINE_NAME, closed_port_url, kfp_env, kfp_server,  # noqa: F401
                                pipeline_package, silent_server_url, write_kubeconfig)
from tests.kfp_api_server import API, KfpApiServer

pytestmark = pytest.mark.usefixtures("kfp_env")


@pytest.fixture
def client(kfp_server):
    return kfp_client.connect(kfp_server.url)


def only(requests):
    assert len(requests) == 1, requests
    return requests[0]


# -- upload ------------------------------------------------------------------------------------------

def test_first_upload_creates_the_pipeline_and_a_second_adds_a_version_to_it(kfp_server, client, pipeline_package):
    first = kfp_client.upload(client, pipeline_package, PIPELINE_NAME, description="penguins")
    second = kfp_client.upload(client, pipeline_package, PIPELINE_NAME, version="v2")

    created = only(kfp_server.requests_to("POST", f"{API}/pipelines/upload"))
    assert created.query == {"name": PIPELINE_NAME, "description": "penguins"}
    assert created.files["uploadfile"].content == pipeline_package.read_bytes()
    added = only(kfp_server.requests_to("POST", f"{API}/pipelines/upload_version"))
    assert added.query == {"name": "v2", "pipelineid": first.pipeline_id}
    assert added.files["uploadfile"].content == pipeline_package.read_bytes()

    assert first.new_pipeline and not second.new_pipeline
    assert second.pipeline_id == first.pipeline_id
    assert (first.version_name, second.version_name) == (PIPELINE_NAME, "v2")
    assert len(kfp_server.pipelines) == 1
    assert {version["pipeline_version_id"] for version in kfp_server.versions.values()} == {
        first.version_id, second.version_id}
    assert second.ui_url == f"{kfp_server.url}/#/pipelines/details/{first.pipeline_id}/version/{second.version_id}"


def test_default_version_names_are_readable_and_unique(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    names = [kfp_client.upload(client, pipeline_package, PIPELINE_NAME).version_name for _ in range(3)]
    assert len(set(names)) == 3
    assert all(name.startswith(f"{PIPELINE_NAME}-20") for name in names)
    sent = kfp_server.requests_to("POST", f"{API}/pipelines/upload_version")
    assert [request.query["name"] for request in sent] == names


def test_the_pipeline_is_looked_up_by_its_display_name(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    lookup = kfp_server.requests_to("GET", f"{API}/pipelines")[0]
    assert json.loads(lookup.query["filter"]) == {
        "predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": PIPELINE_NAME}]}


def test_uploading_a_missing_package_says_so_without_a_request(kfp_server, client, tmp_path):
    kfp_server.forget_requests()
    with pytest.raises(TunepipeError, match=r"pipeline package .*missing.yaml does not exist"):
        kfp_client.upload(client, tmp_path / "missing.yaml", PIPELINE_NAME)
    assert kfp_server.requests == []


def test_a_repeated_version_name_is_one_clear_error(client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME, version="v2")
    with pytest.raises(TunepipeError, match=r"HTTP 409 Conflict while uploading pipeline 'hello-pipeline': "
                                            r"it already exists"):
        kfp_client.upload(client, pipeline_package, PIPELINE_NAME, version="v2")


# -- submit ------------------------------------------------------------------------------------------

def test_submit_creates_the_experiment_and_runs_the_newest_version(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    newest = kfp_client.upload(client, pipeline_package, PIPELINE_NAME, version="v2")

    run = kfp_client.submit(client, PIPELINE_NAME, "nightly", {"greeting": "hi", "repeats": 3}, run_name="try-1")

    experiment = only(kfp_server.requests_to("POST", f"{API}/experiments")).body
    assert experiment["display_name"] == "nightly"
    sent = only(kfp_server.requests_to("POST", f"{API}/runs")).body
    assert sent["display_name"] == "try-1"
    assert sent["experiment_id"] == run.experiment_id == next(iter(kfp_server.experiments))
    assert sent["pipeline_version_reference"] == {"pipeline_id": newest.pipeline_id,
                                                  "pipeline_version_id": newest.version_id}
    assert sent["runtime_config"]["parameters"] == {"greeting": "hi", "repeats": 3}
    assert "pipeline_spec" not in sent  # the run references the uploaded version, not a copy of it
    assert run.run_id in kfp_server.runs
    assert (run.version_name, run.version_id) == ("v2", newest.version_id)
    assert run.ui_url == f"{kfp_server.url}/#/runs/details/{run.run_id}"


def test_a_second_submit_reuses_the_experiment(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    first = kfp_client.submit(client, PIPELINE_NAME, "nightly", {})
    second = kfp_client.submit(client, PIPELINE_NAME, "nightly", {})
    assert len(kfp_server.requests_to("POST", f"{API}/experiments")) == 1
    assert first.experiment_id == second.experiment_id
    assert first.run_name != second.run_name and first.run_name.startswith(f"{PIPELINE_NAME}-")


def test_submit_can_run_a_named_older_version(kfp_server, client, pipeline_package):
    oldest = kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME, version="v2")
    kfp_client.submit(client, PIPELINE_NAME, "nightly", {}, version=PIPELINE_NAME)
    sent = only(kfp_server.requests_to("POST", f"{API}/runs")).body
    assert sent["pipeline_version_reference"]["pipeline_version_id"] == oldest.version_id


def test_submitting_an_unknown_pipeline_or_version_is_one_clear_error(kfp_server, client, pipeline_package):
    with pytest.raises(TunepipeError, match=r"no pipeline named 'nope' on KFP at http://127.0.0.1:\d+: "
                                            r"upload it first with `tunepipe upload`"):
        kfp_client.submit(client, "nope", "nightly", {})
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    with pytest.raises(TunepipeError, match=r"pipeline 'hello-pipeline' .* has no version named 'v9'"):
        kfp_client.submit(client, PIPELINE_NAME, "nightly", {}, version="v9")
    assert kfp_server.runs == {}


# -- schedule ----------------------------------------------------------------------------------------

def test_schedule_sends_a_six_field_cron_max_concurrency_and_no_catchup(kfp_server, client, pipeline_package):
    uploaded = kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    scheduled = kfp_client.schedule(client, PIPELINE_NAME, "retrain", "30 3 * * 1-5", "nightly", {"repeats": 2},
                                    max_concurrency=2)

    sent = only(kfp_server.requests_to("POST", f"{API}/recurringruns")).body
    assert sent["display_name"] == "retrain"
    assert sent["trigger"] == {"cron_schedule": {"cron": "0 30 3 * * 1-5"}}
    assert int(sent["max_concurrency"]) == 2
    assert sent["no_catchup"] is True
    assert sent["mode"] == "ENABLE"
    assert sent["pipeline_version_reference"] == {"pipeline_id": uploaded.pipeline_id,
                                                  "pipeline_version_id": uploaded.version_id}
    assert sent["runtime_config"]["parameters"] == {"repeats": 2}
    assert sent["experiment_id"] == scheduled.experiment_id
    assert only(kfp_server.requests_to("POST", f"{API}/experiments")).body["display_name"] == "nightly"
    assert scheduled.cron == "0 30 3 * * 1-5" and scheduled.replaced == ()
    assert list(kfp_server.recurring_runs) == [scheduled.recurring_run_id]


def test_catchup_is_sent_when_asked_for(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    kfp_client.schedule(client, PIPELINE_NAME, "retrain", "0 0 3 * * *", "nightly", {}, catchup=True)
    sent = only(kfp_server.requests_to("POST", f"{API}/recurringruns")).body
    assert sent["no_catchup"] is False
    assert sent["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # six fields go through unchanged


def test_scheduling_a_job_name_again_replaces_it_on_the_newest_version(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    old = kfp_client.schedule(client, PIPELINE_NAME, "retrain", "0 3 * * *", "nightly", {})
    newest = kfp_client.upload(client, pipeline_package, PIPELINE_NAME, version="v2")
    kfp_server.forget_requests()

    new = kfp_client.schedule(client, PIPELINE_NAME, "retrain", "0 4 * * *", "nightly", {})

    lookup = [request for request in kfp_server.requests_to("GET", f"{API}/recurringruns")
              if "filter" in request.query]
    assert json.loads(lookup[0].query["filter"])["predicates"][0]["stringValue"] == "retrain"
    only(kfp_server.requests_to("DELETE", f"{API}/recurringruns/{old.recurring_run_id}"))
    created = only(kfp_server.requests_to("POST", f"{API}/recurringruns")).body
    assert created["pipeline_version_reference"]["pipeline_version_id"] == newest.version_id
    assert created["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * *"
    assert new.replaced == (old.recurring_run_id,)
    assert list(kfp_server.recurring_runs) == [new.recurring_run_id]


def test_list_and_delete_schedules(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    nightly = kfp_client.schedule(client, PIPELINE_NAME, "retrain", "0 3 * * *", "nightly", {})
    weekly = kfp_client.schedule(client, PIPELINE_NAME, "weekly", "0 5 * * 0", "weekly", {}, catchup=True)

    listed = {found.job_name: found for found in kfp_client.list_schedules(client)}
    assert set(listed) == {"retrain", "weekly"}
    assert listed["retrain"].cron == "0 0 3 * * *" and not listed["retrain"].catchup
    assert listed["weekly"].catchup and listed["weekly"].enabled
    assert [found.job_name for found in kfp_client.list_schedules(client, experiment="weekly")] == ["weekly"]
    assert kfp_server.requests_to("GET", f"{API}/recurringruns")[-1].query["experiment_id"] == weekly.experiment_id
    with pytest.raises(TunepipeError, match=r"no experiment named 'monthly' on KFP at "):
        kfp_client.list_schedules(client, experiment="monthly")

    assert kfp_client.delete_schedule(client, "retrain") == (nightly.recurring_run_id,)
    only(kfp_server.requests_to("DELETE", f"{API}/recurringruns/{nightly.recurring_run_id}"))
    assert list(kfp_server.recurring_runs) == [weekly.recurring_run_id]
    with pytest.raises(TunepipeError, match=r"no recurring run named 'retrain' on KFP at "):
        kfp_client.delete_schedule(client, "retrain")


def test_listing_pages_through_every_recurring_run(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    template = kfp_client.schedule(client, PIPELINE_NAME, "job-0", "0 3 * * *", "nightly", {})
    recorded = kfp_server.recurring_runs[template.recurring_run_id]
    for number in range(1, 105):  # more than one page of 100, written straight into the server's store
        kfp_server.recurring_runs[f"id-{number}"] = {**recorded, "recurring_run_id": f"id-{number}",
                                                     "display_name": f"job-{number}"}
    assert {found.job_name for found in kfp_client.list_schedules(client)} == {f"job-{n}" for n in range(105)}
    assert [request.query.get("page_token") for request in kfp_server.requests_to("GET", f"{API}/recurringruns")
            if "filter" not in request.query] == [None, "100"]


def test_a_bad_cron_fails_before_any_request(kfp_server, client, pipeline_package):
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    kfp_server.forget_requests()
    with pytest.raises(TunepipeError, match=r"cron expression '0 25 \* \* \*': the hour field '25' is out of range"):
        kfp_client.schedule(client, PIPELINE_NAME, "retrain", "0 25 * * *", "nightly", {})
    assert kfp_server.requests == []


@pytest.mark.parametrize("expression, kfp_cron", [
    ("0 3 * * *", "0 0 3 * * *"),
    ("*/15 * * * *", "0 */15 * * * *"),
    ("0 3 * * MON-FRI", "0 0 3 * * MON-FRI"),
    ("  0   3 1 */2 *  ", "0 0 3 1 */2 *"),
    ("30 0 3 * * *", "30 0 3 * * *"),
    ("0 0 3 ? * MON-FRI", "0 0 3 ? * MON-FRI"),
])
def test_to_kfp_cron_puts_seconds_first(expression, kfp_cron):
    assert to_kfp_cron(expression) == kfp_cron


@pytest.mark.parametrize("expression, message", [
    ("0 25 * * *", "the hour field '25' is out of range (0-23)"),
    ("61 3 * * *", "the minute field '61' is out of range (0-59)"),
    ("0 3 * 13 *", "the month field '13' is out of range"),
    ("0 3 * * MON-FOO", "the day-of-week field 'MON-FOO' is not a valid day-of-week"),
    ("60 0 3 * * *", "the second field '60' is out of range (0-59)"),
    ("every day", "has 2 field(s): give 5 (minute hour day-of-month month day-of-week) or 6 with seconds first"),
    ("0 0 3 * * * 2030", "has 7 field(s)"),
    ("", "has 0 field(s)"),
])
def test_to_kfp_cron_names_the_expression_and_what_is_wrong(expression, message):
    with pytest.raises(TunepipeError) as raised:
        to_kfp_cron(expression)
    assert str(raised.value).startswith(f"cron expression {expression!r}")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


# -- errors at the boundary --------------------------------------------------------------------------

def test_a_closed_port_is_one_line_naming_the_host(closed_port_url):
    with pytest.raises(TunepipeError) as raised:
        kfp_client.connect(closed_port_url)
    assert str(raised.value) == f"cannot reach KFP at {closed_port_url} while connecting: connection refused"


def test_a_closed_port_is_reported_at_connect_even_with_a_namespace(closed_port_url):
    # With a namespace kfp.Client's constructor skips its own health check: connect must not.
    with pytest.raises(TunepipeError, match="cannot reach KFP at .* connection refused"):
        kfp_client.connect(closed_port_url, namespace="team")


def test_a_host_that_never_answers_times_out_in_one_line(silent_server_url):
    with pytest.raises(TunepipeError) as raised:
        kfp_client.connect(silent_server_url, timeout=(0.2, 0.2))
    assert str(raised.value) == (f"cannot reach KFP at {silent_server_url} while connecting: "
                                 "no answer within the timeout")


def test_a_host_without_a_scheme_is_refused_before_any_call():
    with pytest.raises(TunepipeError, match=r"KFP host 'localhost:8888' needs a scheme"):
        kfp_client.connect("localhost:8888")


def test_401_without_a_token_says_how_to_give_one(kfp_server):
    kfp_server.require_token("sekrit")
    with pytest.raises(TunepipeError) as raised:
        kfp_client.connect(kfp_server.url)
    assert str(raised.value).startswith(f"KFP at {kfp_server.url} answered HTTP 401 Unauthorized while connecting: "
                                        "it wants a bearer token: give --token-env VAR, set $KFP_BEARER_TOKEN")
    assert len(kfp_server.requests) == 1  # one health check, not kfp's five tries five seconds apart


def test_401_with_a_token_says_where_the_token_came_from(kfp_server, monkeypatch):
    kfp_server.require_token("sekrit")
    monkeypatch.setenv("KFP_BEARER_TOKEN", "stale")
    with pytest.raises(TunepipeError, match=r"HTTP 401 Unauthorized while connecting: the bearer token "
                                            r"\(from \$KFP_BEARER_TOKEN\) was not accepted"):
        kfp_client.connect(kfp_server.url)


@pytest.mark.parametrize("status, path, doing, hint", [
    (403, "/", "connecting", "the identity of this token may not do that"),
    (404, "/", "connecting", "not found; is {url} the KFP API endpoint?"),
    (403, f"{API}/pipelines", "uploading pipeline 'hello-pipeline'", "the identity of this token may not do that"),
    (404, f"{API}/pipelines", "uploading pipeline 'hello-pipeline'", "not found; is {url} the KFP API endpoint?"),
])
def test_403_and_404_are_one_line_saying_what_and_where(kfp_server, pipeline_package, status, path, doing, hint):
    reason = {403: "Forbidden", 404: "Not Found"}[status]
    with pytest.raises(TunepipeError) as raised:
        kfp_server.fail_with(status, path)
        kfp_client.upload(kfp_client.connect(kfp_server.url), pipeline_package, PIPELINE_NAME)
    message = str(raised.value)
    assert message.startswith(f"KFP at {kfp_server.url} answered HTTP {status} {reason} while {doing}: "
                              f"{hint.format(url=kfp_server.url)}")
    assert "\n" not in message


def test_a_multi_user_server_needs_a_namespace_which_then_scopes_every_call(kfp_env, pipeline_package):
    with KfpApiServer(multi_user=True) as server:
        with pytest.raises(TunepipeError, match="is a multi-user deployment: give the namespace of your profile"):
            kfp_client.connect(server.url)
        client = kfp_client.connect(server.url, namespace="team-a")
        kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
        kfp_client.submit(client, PIPELINE_NAME, "nightly", {})
        assert only(server.requests_to("POST", f"{API}/pipelines/upload")).query["namespace"] == "team-a"
        assert server.requests_to("GET", f"{API}/pipelines")[0].query["namespace"] == "team-a"
        assert only(server.requests_to("POST", f"{API}/experiments")).body["namespace"] == "team-a"


# -- credentials -------------------------------------------------------------------------------------

def authorizations(server):
    return {request.headers.get("authorization") for request in server.requests}


def test_no_token_anywhere_sends_no_authorization(kfp_server, pipeline_package):
    kfp_client.upload(kfp_client.connect(kfp_server.url), pipeline_package, PIPELINE_NAME)
    assert authorizations(kfp_server) == {None}


def test_the_token_env_var_reaches_every_request(kfp_server, pipeline_package, monkeypatch):
    monkeypatch.setenv("KFP_BEARER_TOKEN", "from-env")
    kfp_server.require_token("from-env")
    client = kfp_client.connect(kfp_server.url)
    kfp_client.upload(client, pipeline_package, PIPELINE_NAME)
    kfp_client.submit(client, PIPELINE_NAME, "nightly", {})
    assert authorizations(kfp_server) == {"Bearer from-env"}
    assert kfp_server.runs


def test_the_kubeconfig_current_context_token_is_used(kfp_server, pipeline_package, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", "from-kubeconfig")))
    kfp_client.upload(kfp_client.connect(kfp_server.url), pipeline_package, PIPELINE_NAME)
    assert authorizations(kfp_server) == {"Bearer from-kubeconfig"}


def test_an_explicit_token_beats_the_env_var_which_beats_the_kubeconfig(kfp_server, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", "from-kubeconfig")))
    monkeypatch.setenv("KFP_BEARER_TOKEN", "from-env")
    kfp_client.connect(kfp_server.url)
    assert authorizations(kfp_server) == {"Bearer from-env"}
    kfp_server.forget_requests()
    kfp_client.connect(kfp_server.url, token="explicit")
    assert authorizations(kfp_server) == {"Bearer explicit"}


def test_a_kubeconfig_list_takes_the_first_current_context(kfp_server, monkeypatch, tmp_path):
    first = tmp_path / "first"
    first.write_text("current-context: kubeflow\n")
    second = write_kubeconfig(tmp_path / "second", "merged-token")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}:{first}:{second}")
    kfp_client.connect(kfp_server.url)
    assert authorizations(kfp_server) == {"Bearer merged-token"}


def test_a_broken_kubeconfig_is_one_clear_error(kfp_server, monkeypatch, tmp_path):
    broken = tmp_path / "kubeconfig"
    broken.write_text("users: [\n")
    monkeypatch.setenv("KUBECONFIG", str(broken))
    with pytest.raises(TunepipeError, match=rf"cannot read the kubeconfig {broken}: "):
        kfp_client.connect(kfp_server.url)
    assert kfp_server.requests == []
