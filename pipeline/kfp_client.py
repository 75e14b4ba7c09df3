"""The glue between tunepipe and a Kubeflow Pipelines v2 backend, through the real `kfp.Client`.

This module owns:
- connecting: the host, the namespace, and the bearer token (an explicit value, else
  $KFP_BEARER_TOKEN, else the user token of the kubeconfig's current context, else none);
- uploading a compiled package as a new pipeline, or as a new version of the pipeline of that name;
- starting a run of the latest (or a named) version in an experiment, created if missing;
- recurring runs identified by their display name: create (replacing one of the same name), list,
  delete, in the cron dialect KFP speaks (`pipeline.kfp_cron`), checked before any call;
- the error boundary: an unreachable host, HTTP 401/403/404 and the other failures of kfp.Client,
  kfp_server_api and urllib3 become one `TunepipeError` line saying what failed and where.

Only the commands that talk to Kubeflow import this module, so importing kfp here is fine.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import kfp
import kfp_server_api
import urllib3
import yaml

from components.errors import TunepipeError
from pipeline.kfp_cron import to_kfp_cron

TOKEN_ENV = "KFP_BEARER_TOKEN"
# (connect, read) seconds for every request. kfp.Client sends requests without a timeout, so a
# host that drops packets would otherwise hang the command for minutes.
REQUEST_TIMEOUT = (10.0, 120.0)
DEFAULT_EXPERIMENT = "Default"  # the experiment KFP itself files runs under when none is named

_PAGE_SIZE = 100


@dataclass(frozen=True)
class Upload:
    """A pipeline version now on the server, and whether its pipeline was created for it."""

    pipeline_name: str
    pipeline_id: str
    version_name: str
    version_id: str
    new_pipeline: bool
    ui_url: str


@dataclass(frozen=True)
class Run:
    """A run just started on the server."""

    run_id: str
    run_name: str
    pipeline_name: str
    version_name: str
    version_id: str
    experiment: str
    experiment_id: str
    ui_url: str


@dataclass(frozen=True)
class Schedule:
    """A recurring run on the server; `replaced` lists the ids of the ones it took over from."""

    recurring_run_id: str
    job_name: str
    cron: str
    enabled: bool
    max_concurrency: int
    catchup: bool
    experiment_id: str
    version_id: str
    ui_url: str
    replaced: tuple[str, ...] = ()


class _Client(kfp.Client):
    """`kfp.Client` with one bounded health check and a timeout on every request.

    kfp.Client's constructor asks /healthz up to five times, five seconds apart, whatever the
    answer: a wrong URL or a rejected token would take half a minute to report. A command line wants
    the first answer, so the health check here is a single request.
    """

    def __init__(self, host: str, namespace: str | None, token: str | None, token_source: str | None,
                 timeout: tuple[float, float]):
        self.token_source = token_source
        self.healthz: Any = None
        self._timeout = timeout
        with warnings.catch_warnings():
            # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": said to every
            # user on every call, and KFP 2.x is what tunepipe targets anyway.
            warnings.simplefilter("ignore", FutureWarning)
            if namespace:
                super().__init__(host=host, namespace=namespace, existing_token=token)
            else:
                super().__init__(host=host, existing_token=token)
        if namespace:
            # kfp.Client takes namespace="kubeflow" to mean "not given"; keep the one asked for.
            self._context_setting["namespace"] = namespace
        _bound_request_time(self._healthz_api.api_client.rest_client, timeout)

    def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
        self.healthz = self._healthz_api.healthz_service_get_healthz(_request_timeout=self._timeout)
        return self.healthz


def _bound_request_time(rest_client: Any, timeout: tuple[float, float]) -> None:
    """Give every request of `rest_client` a timeout unless the caller chose one.

    Set on kfp_server_api's REST client because kfp.Client's methods take no timeout, and the one
    below passes `timeout=None` on, which urllib3 reads as "wait forever" over any pool default.
    """
    send = rest_client.request

    def send_with_timeout(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return send(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest_client.request = send_with_timeout


def connect(host: str, namespace: str | None = None, token: str | None = None, *,
            token_source: str = "given explicitly", timeout: tuple[float, float] = REQUEST_TIMEOUT) -> kfp.Client:
    """A `kfp.Client` for the KFP API at `host`, checked to answer.

    Owns the choice of credentials: `token` if given, else $KFP_BEARER_TOKEN, else the user token of
    the kubeconfig's current context ($KUBECONFIG or ~/.kube/config), else no Authorization header.
    `token_source` says where an explicit token came from, for the message if it is refused.
    `namespace` is the Kubernetes namespace of a multi-user deployment; pipelines uploaded and
    experiments created through this client live there. A multi-user server with no namespace, an
    unreachable host or a rejected token raise `TunepipeError` here, before any other work.
    """
    if not host or "://" not in host:
        raise TunepipeError(f"KFP host {host!r} needs a scheme: give e.g. http://localhost:8888 "
                            "or https://kubeflow.example.com/pipeline")
    host = host.rstrip("/")
    token, token_source = (token, token_source) if token else _bearer_token()
    with _kfp_errors(host, "connecting", token_source=token_source):
        client = _Client(host, namespace, token, token_source, timeout)
        # The constructor only asks /healthz when no namespace is known; ask anyway, so a wrong
        # host or token is reported now, as what it is.
        healthz = client.healthz or client.get_kfp_healthz()
    if getattr(healthz, "multi_user", False) and not client.get_user_namespace():
        raise TunepipeError(f"KFP at {host} is a multi-user deployment: "
                            "give the namespace of your profile with --namespace")
    return client


def _bearer_token() -> tuple[str | None, str | None]:
    """The token to send when none is given, and where it came from (for the message if refused)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], f"from ${TOKEN_ENV}"
    return kubeconfig_token()


def kubeconfig_token() -> tuple[str | None, str | None]:
    """The user token of the kubeconfig's current context, and the file it came from.

    Follows kubectl's merge rule for a $KUBECONFIG list: the first file to set a value wins. A user
    that authenticates another way (exec plugin, client certificate) has no token: (None, None).
    """
    paths = [Path(entry) for entry in os.environ.get("KUBECONFIG", "").split(os.pathsep) if entry]
    paths = paths or [Path.home() / ".kube" / "config"]
    current_context = None
    contexts: dict[str, dict] = {}
    users: dict[str, tuple[dict, Path]] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TunepipeError(f"cannot read the kubeconfig {path}: {reason}") from None
        if not isinstance(document, dict):
            raise TunepipeError(f"the kubeconfig {path} is not a YAML mapping")
        current_context = current_context or document.get("current-context")
        for entry in document.get("contexts") or []:
            if isinstance(entry, dict) and isinstance(entry.get("context"), dict):
                contexts.setdefault(entry.get("name"), entry["context"])
        for entry in document.get("users") or []:
            if isinstance(entry, dict) and isinstance(entry.get("user"), dict):
                users.setdefault(entry.get("name"), (entry["user"], path))
    context = contexts.get(current_context) if current_context else None
    user, path = users.get(context.get("user"), ({}, None)) if context else ({}, None)
    if user.get("token"):
        return str(user["token"]), f"from the kubeconfig {path}, context {current_context}"
    if user.get("tokenFile"):
        token_file = Path(user["tokenFile"]).expanduser()
        try:
            return token_file.read_text().strip(), f"from {token_file}, kubeconfig context {current_context}"
        except OSError as error:
            raise TunepipeError(f"cannot read the token file {token_file} named by the kubeconfig {path}: "
                                f"{error.strerror}") from None
    return None, None


def upload(client: kfp.Client, package_path: str | Path, name: str, version: str | None = None,
           description: str | None = None) -> Upload:
    """Put a compiled pipeline package on the server under the pipeline name `name`.

    Owns the create-or-version decision: the pipeline of that display name gets a new version named
    `version` (default `<name>-<UTC timestamp>`); if there is none, the pipeline is created, and KFP
    names its first version after the pipeline.
    """
    package = Path(package_path)
    if not package.is_file():
        raise TunepipeError(f"pipeline package {package} does not exist: compile one with `tunepipe compile`")
    host = _host(client)
    with _kfp_errors(host, f"uploading pipeline {name!r}", token_source=_token_source(client)):
        pipeline_id = _find_pipeline(client, name)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(str(package), pipeline_name=name, description=description,
                                              namespace=_namespace(client))
            pipeline_id = pipeline.pipeline_id
            first_version = _latest_version(client, pipeline_id, name)
            version_id, version_name, created = first_version.pipeline_version_id, first_version.display_name, True
        else:
            version_name = version or f"{name}-{_timestamp()}"
            new_version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                                         pipeline_id=pipeline_id, description=description)
            version_id, created = new_version.pipeline_version_id, False
    return Upload(pipeline_name=name, pipeline_id=pipeline_id, version_name=version_name, version_id=version_id,
                  new_pipeline=created, ui_url=f"{host}/#/pipelines/details/{pipeline_id}/version/{version_id}")


def submit(client: kfp.Client, pipeline_name: str, experiment: str = DEFAULT_EXPERIMENT,
           params: dict[str, Any] | None = None, run_name: str | None = None, version: str | None = None) -> Run:
    """Start one run of the uploaded pipeline `pipeline_name` with `params`.

    Runs the newest version unless `version` names one; files the run under `experiment`, which is
    created if missing.
    """
    host = _host(client)
    with _kfp_errors(host, f"starting a run of pipeline {pipeline_name!r}", token_source=_token_source(client)):
        pipeline_id = _require_pipeline(client, pipeline_name)
        pipeline_version = (_named_version(client, pipeline_id, pipeline_name, version) if version
                            else _latest_version(client, pipeline_id, pipeline_name))
        experiment_id = _experiment_id(client, experiment)
        run_name = run_name or f"{pipeline_name}-{_timestamp()}"
        run = client.run_pipeline(experiment_id=experiment_id, job_name=run_name, params=dict(params or {}),
                                  pipeline_id=pipeline_id, version_id=pipeline_version.pipeline_version_id)
    return Run(run_id=run.run_id, run_name=run_name, pipeline_name=pipeline_name,
               version_name=pipeline_version.display_name, version_id=pipeline_version.pipeline_version_id,
               experiment=experiment, experiment_id=experiment_id, ui_url=f"{host}/#/runs/details/{run.run_id}")


def schedule(client: kfp.Client, pipeline_name: str, job_name: str, cron: str,
             experiment: str = DEFAULT_EXPERIMENT, params: dict[str, Any] | None = None,
             max_concurrency: int = 1, catchup: bool = False) -> Schedule:
    """Run the newest version of `pipeline_name` on `cron`, as the recurring run named `job_name`.

    KFP cannot change a recurring run in place, so one already named `job_name` is replaced: the new
    one is created first and the old ones are deleted after, so a failed create leaves the old
    schedule running. `catchup=False` skips the runs missed while the schedule was paused or behind.
    """
    kfp_cron = to_kfp_cron(cron)
    if max_concurrency < 1:
        raise TunepipeError(f"max concurrency must be at least 1, not {max_concurrency}")
    host = _host(client)
    with _kfp_errors(host, f"scheduling {job_name!r}", token_source=_token_source(client)):
        pipeline_id = _require_pipeline(client, pipeline_name)
        newest = _latest_version(client, pipeline_id, pipeline_name)
        experiment_id = _experiment_id(client, experiment)
        previous = [recurring.recurring_run_id for recurring in _recurring_runs_named(client, job_name)]
        created = client.create_recurring_run(
            experiment_id=experiment_id, job_name=job_name, cron_expression=kfp_cron,
            max_concurrency=max_concurrency, no_catchup=not catchup, params=dict(params or {}),
            pipeline_id=pipeline_id, version_id=newest.pipeline_version_id, enabled=True)
        for recurring_run_id in previous:
            client.delete_recurring_run(recurring_run_id)
    return Schedule(recurring_run_id=created.recurring_run_id, job_name=job_name, cron=kfp_cron, enabled=True,
                    max_concurrency=max_concurrency, catchup=catchup, experiment_id=experiment_id,
                    version_id=newest.pipeline_version_id, ui_url=_recurring_run_url(host, created.recurring_run_id),
                    replaced=tuple(previous))


def list_schedules(client: kfp.Client, experiment: str | None = None) -> list[Schedule]:
    """The recurring runs on the server (in the client's namespace), or only those of `experiment`."""
    host = _host(client)
    with _kfp_errors(host, "listing recurring runs", token_source=_token_source(client)):
        if experiment is None:
            scope: dict[str, Any] = {"namespace": _namespace(client)}
        else:
            try:
                scope = {"experiment_id": client.get_experiment(experiment_name=experiment).experiment_id}
            except ValueError as error:
                if str(error).startswith("No experiment is found"):
                    raise TunepipeError(f"no experiment named {experiment!r} on KFP at {host}") from None
                raise
        found = _all_pages(lambda token: client.list_recurring_runs(page_token=token, page_size=_PAGE_SIZE, **scope),
                           "recurring_runs")
    return [_schedule_of(recurring, host) for recurring in found]


def delete_schedule(client: kfp.Client, job_name: str) -> tuple[str, ...]:
    """Delete the recurring run(s) named `job_name`; return their ids. None of that name is an error."""
    host = _host(client)
    with _kfp_errors(host, f"deleting recurring run {job_name!r}", token_source=_token_source(client)):
        doomed = [recurring.recurring_run_id for recurring in _recurring_runs_named(client, job_name)]
        if not doomed:
            raise TunepipeError(f"no recurring run named {job_name!r} on KFP at {host}")
        for recurring_run_id in doomed:
            client.delete_recurring_run(recurring_run_id)
    return tuple(doomed)


@contextlib.contextmanager
def _kfp_errors(host: str, doing: str, token_source: str | None = None) -> Iterator[None]:
    """Turn what kfp.Client, kfp_server_api and urllib3 raise into one `TunepipeError` line.

    Also keeps kfp.Client's own prints ("Experiment details: ...") off the user's terminal: the
    commands say what happened in their own words.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except kfp_server_api.ApiException as error:
        if not error.status:  # kfp_server_api reports a failed TLS handshake as status 0
            raise TunepipeError(f"cannot reach KFP at {host} while {doing}: {_first_line(error.reason)}") from None
        raise TunepipeError(_http_error_message(error, host, doing, token_source)) from None
    except urllib3.exceptions.HTTPError as error:
        raise TunepipeError(f"cannot reach KFP at {host} while {doing}: {_network_fault(error)}") from None
    except ValueError as error:
        # kfp.Client reports ambiguous or missing names (several experiments of one name...) so.
        raise TunepipeError(f"KFP at {host}, while {doing}: {_first_line(str(error))}") from None


def _http_error_message(error: Any, host: str, doing: str, token_source: str | None) -> str:
    status = f"HTTP {error.status} {error.reason or ''}".rstrip()
    said = _server_message(error.body)
    if error.status == 401:
        hint = (f"the bearer token ({token_source}) was not accepted (expired?)" if token_source else
                f"it wants a bearer token: give --token-env VAR, set ${TOKEN_ENV}, "
                "or use a kubeconfig context with a user token")
    elif error.status == 403:
        hint = "the identity of this token may not do that (check the namespace and its RBAC / profile)"
    elif error.status == 404:
        hint = f"not found; is {host} the KFP API endpoint?"
    elif error.status == 409:
        hint = "it already exists"
    else:
        hint = said or "the server gave no reason"
        said = ""
    message = f"KFP at {host} answered {status} while {doing}: {hint}"
    return f"{message} (server said: {said})" if said and said != error.reason else message


def _server_message(body: Any) -> str:
    """The reason inside a KFP error body: grpc-gateway's `message` or the upload server's `error_message`."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        payload = json.loads(text)
    except ValueError:
        return "" if text.lstrip().startswith("<") else _first_line(text)  # an HTML page says nothing useful
    if isinstance(payload, dict):
        for key in ("message", "error_message", "error"):
            if payload.get(key):
                return _first_line(str(payload[key]))
    return ""


def _network_fault(error: Exception) -> str:
    reason = getattr(error, "reason", None) or error  # urllib3 wraps the cause in MaxRetryError
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "the host name does not resolve"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "connection refused" if "refused" in str(reason).lower() else _first_line(str(reason).split(": ", 1)[-1])
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return "no connection within the timeout"
    if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return "no answer within the timeout"
    if isinstance(reason, urllib3.exceptions.SSLError):
        return f"TLS failed: {_first_line(str(reason))}"
    return _first_line(str(reason)) or type(reason).__name__


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= 300 else line[:297] + "..."


def _host(client: kfp.Client) -> str:
    # kfp.Client keeps the address it talks to only in its kfp_server_api configuration.
    return client._existing_config.host.rstrip("/")


def _token_source(client: kfp.Client) -> str | None:
    return getattr(client, "token_source", None)


def _namespace(client: kfp.Client) -> str | None:
    return client.get_user_namespace() or None


def _timestamp() -> str:
    now = datetime.now(timezone.utc)
    # Milliseconds keep two uploads in the same second apart; KFP refuses a repeated version name.
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}"


def _by_display_name(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _all_pages(fetch: Any, field: str) -> list[Any]:
    """Every item of a paged KFP list call; `fetch(page_token)` returns one page."""
    items: list[Any] = []
    token = ""
    while True:
        page = fetch(token)
        items.extend(getattr(page, field) or [])
        token = page.next_page_token
        if not token:
            return items


def _find_pipeline(client: kfp.Client, name: str) -> str | None:
    """The id of the pipeline displayed as `name` in the client's namespace, or None."""
    found = _all_pages(lambda token: client.list_pipelines(page_token=token, page_size=_PAGE_SIZE,
                                                           filter=_by_display_name(name),
                                                           namespace=_namespace(client)), "pipelines")
    if len(found) > 1:
        raise TunepipeError(f"{len(found)} pipelines are named {name!r} on KFP at {_host(client)}: "
                            "delete the extra ones or pick another --name")
    return found[0].pipeline_id if found else None


def _require_pipeline(client: kfp.Client, name: str) -> str:
    pipeline_id = _find_pipeline(client, name)
    if pipeline_id is None:
        raise TunepipeError(f"no pipeline named {name!r} on KFP at {_host(client)}: "
                            "upload it first with `tunepipe upload`")
    return pipeline_id


def _latest_version(client: kfp.Client, pipeline_id: str, pipeline_name: str) -> Any:
    page = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1, sort_by="created_at desc")
    if not page.pipeline_versions:
        raise TunepipeError(f"pipeline {pipeline_name!r} on KFP at {_host(client)} has no versions")
    return page.pipeline_versions[0]


def _named_version(client: kfp.Client, pipeline_id: str, pipeline_name: str, version: str) -> Any:
    page = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1, sort_by="created_at desc",
                                         filter=_by_display_name(version))
    if not page.pipeline_versions:
        raise TunepipeError(f"pipeline {pipeline_name!r} on KFP at {_host(client)} has no version named {version!r}")
    return page.pipeline_versions[0]


def _experiment_id(client: kfp.Client, experiment: str) -> str:
    # kfp.Client.create_experiment returns the experiment of that name if there is one.
    return client.create_experiment(name=experiment, namespace=_namespace(client)).experiment_id


def _recurring_runs_named(client: kfp.Client, job_name: str) -> list[Any]:
    return _all_pages(lambda token: client.list_recurring_runs(page_token=token, page_size=_PAGE_SIZE,
                                                               filter=_by_display_name(job_name),
                                                               namespace=_namespace(client)), "recurring_runs")


def _recurring_run_url(host: str, recurring_run_id: str) -> str:
    return f"{host}/#/recurringrun/details/{recurring_run_id}"


def _schedule_of(recurring: Any, host: str) -> Schedule:
    cron_schedule = recurring.trigger.cron_schedule if recurring.trigger else None
    periodic = recurring.trigger.periodic_schedule if recurring.trigger else None
    if cron_schedule is not None:
        when = cron_schedule.cron
    elif periodic is not None:
        when = f"every {periodic.interval_second}s"
    else:
        when = ""
    reference = recurring.pipeline_version_reference
    return Schedule(recurring_run_id=recurring.recurring_run_id, job_name=recurring.display_name, cron=when,
                    enabled=recurring.mode != "DISABLE", max_concurrency=int(recurring.max_concurrency or 1),
                    catchup=not recurring.no_catchup, experiment_id=recurring.experiment_id or "",
                    version_id=(reference.pipeline_version_id if reference else recurring.pipeline_version_id) or "",
                    ui_url=_recurring_run_url(host, recurring.recurring_run_id))
