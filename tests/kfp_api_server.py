"""A local stand-in for the Kubeflow Pipelines v2beta1 REST API, for tests.

It owns three things:
- answering the endpoints `kfp.Client` 2.17.0 calls to upload a pipeline or a version of it, look
  pipelines and versions up, get-or-create an experiment, start a run and create, list and delete
  recurring runs, with the JSON shapes kfp_server_api deserializes (proto field names, RFC 3339
  times, `filter` as a JSON-encoded predicate list, `next_page_token` paging);
- keeping pipelines, versions, experiments, runs and recurring runs in memory, and refusing what
  the real server refuses (a repeated name: 409; an unknown pipeline version: 404...);
- recording every request (method, path, query, headers, JSON body or multipart fields) so that a
  test asserts on what the client actually sent.

`require_token` makes it answer 401 to requests without that bearer token, and `fail_with` makes it
answer a chosen status (403, 404...) to every request under a path, as a misconfigured or locked
down deployment would.
"""
from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import yaml

API = "/apis/v2beta1"
# google.rpc.Code of each HTTP status the way grpc-gateway maps them.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13}
_OPERATIONS = {1: "EQUALS", 2: "NOT_EQUALS", 9: "IS_SUBSTRING"}


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content: bytes


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: Any = None  # the decoded JSON body, if any
    form: dict[str, str] = field(default_factory=dict)  # multipart text fields
    files: dict[str, UploadedFile] = field(default_factory=dict)  # multipart file fields


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class KfpApiServer:
    """An in-memory KFP v2beta1 API on 127.0.0.1, on a free port. Use as a context manager."""

    def __init__(self, multi_user: bool = False):
        self.multi_user = multi_user
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._requests: list[RecordedRequest] = []
        self._failures: list[tuple[str, int]] = []
        self._required_token: str | None = None
        self._clock = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern, Callable[..., Any]]] = [
            ("GET", re.compile(rf"{API}/healthz"), self._healthz),
            ("POST", re.compile(rf"{API}/pipelines/upload"), self._upload_pipeline),
            ("POST", re.compile(rf"{API}/pipelines/upload_version"), self._upload_version),
            ("GET", re.compile(rf"{API}/pipelines"), self._list_pipelines),
            ("GET", re.compile(rf"{API}/pipelines/(?P<pipeline_id>[^/]+)"), self._get_pipeline),
            ("GET", re.compile(rf"{API}/pipelines/(?P<pipeline_id>[^/]+)/versions"), self._list_versions),
            ("GET", re.compile(rf"{API}/pipelines/(?P<pipeline_id>[^/]+)/versions/(?P<version_id>[^/]+)"),
             self._get_version),
            ("POST", re.compile(rf"{API}/experiments"), self._create_experiment),
            ("GET", re.compile(rf"{API}/experiments"), self._list_experiments),
            ("GET", re.compile(rf"{API}/experiments/(?P<experiment_id>[^/:]+)"), self._get_experiment),
            ("POST", re.compile(rf"{API}/runs"), self._create_run),
            ("GET", re.compile(rf"{API}/runs/(?P<run_id>[^/:]+)"), self._get_run),
            ("POST", re.compile(rf"{API}/recurringruns"), self._create_recurring_run),
            ("GET", re.compile(rf"{API}/recurringruns"), self._list_recurring_runs),
            ("GET", re.compile(rf"{API}/recurringruns/(?P<recurring_run_id>[^/:]+)"), self._get_recurring_run),
            ("DELETE", re.compile(rf"{API}/recurringruns/(?P<recurring_run_id>[^/:]+)"),
             self._delete_recurring_run),
        ]

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> KfpApiServer:
        handler = type("KfpApiHandler", (_Handler,), {"api": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, once per test.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="kfp-api-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = None

    def __enter__(self) -> KfpApiServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- what tests steer and read ---------------------------------------------------------------

    def require_token(self, token: str) -> None:
        """Answer 401 to any request without `Authorization: Bearer <token>`."""
        self._required_token = token

    def fail_with(self, status: int, path_prefix: str = "/") -> None:
        """Answer `status` to every request whose path starts with `path_prefix`."""
        self._failures.append((path_prefix, status))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """The recorded requests with this method and exactly this path."""
        return [request for request in self.requests if request.method == method and request.path == path]

    def forget_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- dispatch ---------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> tuple[int, Any]:
        with self._lock:
            self._requests.append(request)
            try:
                self._check_access(request)
                for method, pattern, answer in self._routes:
                    match = pattern.fullmatch(request.path)
                    if match and method == request.method:
                        return 200, answer(request, **match.groupdict())
                raise ApiError(404, "Not Found")
            except ApiError as error:
                return error.status, {"error": error.message, "code": _GRPC_CODES.get(error.status, 2),
                                      "message": error.message, "details": []}

    def _check_access(self, request: RecordedRequest) -> None:
        sent = request.headers.get("authorization")
        if self._required_token and sent != f"Bearer {self._required_token}":
            raise ApiError(401, "Unauthenticated: invalid bearer token" if sent else
                           "Unauthenticated: Request header error: there is no user identity header.")
        for prefix, status in self._failures:
            if request.path.startswith(prefix):
                raise ApiError(status, {403: "PermissionDenied: user is not authorized to access the resource",
                                        404: "Not Found"}.get(status, f"HTTP {status}"))

    def _now(self) -> str:
        # A clock that ticks one second per created resource: "newest first" is never a tie.
        self._clock += 1
        moment = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=self._clock)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- endpoints --------------------------------------------------------------------------------

    def _healthz(self, request: RecordedRequest) -> dict:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    def _upload_pipeline(self, request: RecordedRequest) -> dict:
        spec, filename = self._uploaded_spec(request)
        name = request.query.get("name") or request.query.get("display_name") or filename.rsplit(".", 1)[0]
        display_name = request.query.get("display_name") or name
        namespace = request.query.get("namespace", "")
        if any(pipeline["display_name"] == display_name and pipeline.get("namespace", "") == namespace
               for pipeline in self.pipelines.values()):
            raise ApiError(409, "Failed to create a pipeline and a pipeline version")
        pipeline = {"pipeline_id": str(uuid.uuid4()), "name": name, "display_name": display_name,
                    "description": request.query.get("description", ""), "created_at": self._now(),
                    "namespace": namespace}
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        # Like the real server: the first version carries the pipeline's own name.
        self._add_version(pipeline["pipeline_id"], name, display_name, pipeline["description"], spec)
        return pipeline

    def _upload_version(self, request: RecordedRequest) -> dict:
        spec, filename = self._uploaded_spec(request)
        pipeline_id = request.query.get("pipelineid", "")
        if pipeline_id not in self.pipelines:
            raise ApiError(400, "Failed to create a pipeline version")
        name = request.query.get("name") or request.query.get("display_name") or filename.rsplit(".", 1)[0]
        display_name = request.query.get("display_name") or name
        if any(version["pipeline_id"] == pipeline_id and version["display_name"] == display_name
               for version in self.versions.values()):
            raise ApiError(409, "Failed to create a pipeline version")
        return self._add_version(pipeline_id, name, display_name, request.query.get("description", ""), spec)

    def _uploaded_spec(self, request: RecordedRequest) -> tuple[dict, str]:
        upload = request.files.get("uploadfile")
        if upload is None:
            raise ApiError(400, "Failed to read pipeline from file")
        try:
            spec = next(yaml.safe_load_all(upload.content), None)
        except yaml.YAMLError:
            spec = None
        if not isinstance(spec, dict) or "pipelineInfo" not in spec:
            raise ApiError(400, "Failed to read a pipeline spec file")
        return spec, upload.filename

    def _add_version(self, pipeline_id: str, name: str, display_name: str, description: str, spec: dict) -> dict:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "name": name,
                   "display_name": display_name, "description": description, "created_at": self._now(),
                   "pipeline_spec": spec}
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _list_pipelines(self, request: RecordedRequest) -> dict:
        namespace = request.query.get("namespace", "")
        found = [pipeline for pipeline in self.pipelines.values() if pipeline.get("namespace", "") == namespace]
        return self._page(found, request, "pipelines")

    def _get_pipeline(self, request: RecordedRequest, pipeline_id: str) -> dict:
        return self._existing(self.pipelines, pipeline_id, "pipeline")

    def _list_versions(self, request: RecordedRequest, pipeline_id: str) -> dict:
        self._existing(self.pipelines, pipeline_id, "pipeline")
        found = [version for version in self.versions.values() if version["pipeline_id"] == pipeline_id]
        return self._page(found, request, "pipeline_versions")

    def _get_version(self, request: RecordedRequest, pipeline_id: str, version_id: str) -> dict:
        version = self._existing(self.versions, version_id, "pipeline version")
        if version["pipeline_id"] != pipeline_id:
            raise ApiError(404, f"pipeline version {version_id} is not a version of pipeline {pipeline_id}")
        return version

    def _create_experiment(self, request: RecordedRequest) -> dict:
        body = request.body or {}
        if not body.get("display_name"):
            raise ApiError(400, "Experiment display name is required")
        namespace = body.get("namespace") or ""
        if any(experiment["display_name"] == body["display_name"] and experiment["namespace"] == namespace
               for experiment in self.experiments.values()):
            raise ApiError(409, f"experiment {body['display_name']} already exists")
        experiment = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                      "description": body.get("description") or "", "namespace": namespace,
                      "created_at": self._now(), "storage_state": "AVAILABLE"}
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _list_experiments(self, request: RecordedRequest) -> dict:
        namespace = request.query.get("namespace", "")
        found = [experiment for experiment in self.experiments.values() if experiment["namespace"] == namespace]
        return self._page(found, request, "experiments")

    def _get_experiment(self, request: RecordedRequest, experiment_id: str) -> dict:
        return self._existing(self.experiments, experiment_id, "experiment")

    def _create_run(self, request: RecordedRequest) -> dict:
        body = request.body or {}
        self._check_run_request(body)
        run = {**body, "run_id": str(uuid.uuid4()), "created_at": self._now(), "state": "PENDING",
               "storage_state": "AVAILABLE"}
        self.runs[run["run_id"]] = run
        return run

    def _get_run(self, request: RecordedRequest, run_id: str) -> dict:
        return self._existing(self.runs, run_id, "run")

    def _create_recurring_run(self, request: RecordedRequest) -> dict:
        body = request.body or {}
        self._check_run_request(body)
        if not (body.get("trigger") or {}).get("cron_schedule") and not (body.get("trigger") or {}).get(
                "periodic_schedule"):
            raise ApiError(400, "a recurring run needs a trigger")
        experiment = self.experiments[body["experiment_id"]]
        recurring_run = {**body, "recurring_run_id": str(uuid.uuid4()), "created_at": self._now(),
                         "namespace": experiment["namespace"],
                         "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"}
        recurring_run["updated_at"] = recurring_run["created_at"]
        self.recurring_runs[recurring_run["recurring_run_id"]] = recurring_run
        return recurring_run

    def _list_recurring_runs(self, request: RecordedRequest) -> dict:
        found = list(self.recurring_runs.values())
        if "experiment_id" in request.query:
            found = [run for run in found if run["experiment_id"] == request.query["experiment_id"]]
        elif "namespace" in request.query:
            found = [run for run in found if run["namespace"] == request.query["namespace"]]
        # The proto declares this one field in camelCase, so the real server sends "recurringRuns".
        return self._page(found, request, "recurringRuns")

    def _get_recurring_run(self, request: RecordedRequest, recurring_run_id: str) -> dict:
        return self._existing(self.recurring_runs, recurring_run_id, "recurring run")

    def _delete_recurring_run(self, request: RecordedRequest, recurring_run_id: str) -> dict:
        self._existing(self.recurring_runs, recurring_run_id, "recurring run")
        del self.recurring_runs[recurring_run_id]
        return {}

    # -- shared rules -----------------------------------------------------------------------------

    def _check_run_request(self, body: dict) -> None:
        if not body.get("display_name"):
            raise ApiError(400, "display name is required")
        if body.get("experiment_id") not in self.experiments:
            raise ApiError(404, f"experiment {body.get('experiment_id')} not found")
        reference = body.get("pipeline_version_reference") or {}
        version = self.versions.get(reference.get("pipeline_version_id"))
        known = version is not None and version["pipeline_id"] == reference.get("pipeline_id")
        if not body.get("pipeline_spec") and not known:
            raise ApiError(404, f"pipeline version {reference} not found")

    @staticmethod
    def _existing(table: dict[str, dict], key: str, kind: str) -> dict:
        if key not in table:
            raise ApiError(404, f"{kind} {key} not found")
        return table[key]

    def _page(self, items: list[dict], request: RecordedRequest, field_name: str) -> dict:
        """Filter, sort and page `items` the way the KFP list endpoints do."""
        items = [item for item in items if _matches(item, request.query.get("filter"))]
        sort_by = request.query.get("sort_by", "").split()
        if sort_by:
            items.sort(key=lambda item: str(item.get(sort_by[0], "")), reverse=sort_by[-1:] == ["desc"])
        else:
            items.sort(key=lambda item: item["created_at"])
        start = int(request.query.get("page_token") or 0)
        size = int(request.query.get("page_size") or 20)
        page = items[start:start + size]
        answer: dict[str, Any] = {"total_size": len(items)}
        if page:
            answer[field_name] = page  # grpc-gateway leaves an empty list out
        if start + size < len(items):
            answer["next_page_token"] = str(start + size)
        return answer


def _matches(item: dict, filter_json: str | None) -> bool:
    """Whether `item` passes a KFP filter: a JSON list of predicates that must all hold."""
    if not filter_json:
        return True
    try:
        predicates = json.loads(filter_json).get("predicates", [])
    except (ValueError, AttributeError):
        raise ApiError(400, f"invalid filter {filter_json!r}") from None
    for predicate in predicates:
        operation = predicate.get("operation")
        operation = _OPERATIONS.get(operation, operation)
        expected = next((predicate[key] for key in ("stringValue", "string_value", "intValue", "int_value",
                                                    "longValue", "long_value") if key in predicate), None)
        actual = item.get(predicate.get("key"))
        if operation == "EQUALS":
            holds = str(actual) == str(expected)
        elif operation == "NOT_EQUALS":
            holds = str(actual) != str(expected)
        elif operation == "IS_SUBSTRING":
            holds = str(expected) in str(actual)
        else:
            raise ApiError(400, f"filter operation {operation!r} is not supported here")
        if not holds:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    api: KfpApiServer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def do_PATCH(self) -> None:
        self._answer()

    def _answer(self) -> None:
        status, payload = self.api.handle(self._record())
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> RecordedRequest:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        body, form, files = None, {}, {}
        if content_type.startswith("multipart/form-data"):
            form, files = _parse_multipart(content_type, raw)
        elif raw:
            body = json.loads(raw)
        return RecordedRequest(method=self.command, path=url.path, query=dict(parse_qsl(url.query)),
                               headers={name.lower(): value for name, value in self.headers.items()},
                               body=body, form=form, files=files)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read the recorded requests; the access log would only be noise


def _parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, str], dict[str, UploadedFile]]:
    # The email parser reads MIME multipart bodies; the cgi module that used to is deprecated.
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    form: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        content = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files[name] = UploadedFile(part.get_filename(), content)
        else:
            form[name] = content.decode()
    return form, files
