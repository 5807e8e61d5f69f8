"""A local HTTPS stand-in for Azure Resource Manager and the Azure ML job service.

Real SDK clients (azure-ai-ml's `MLClient`, azure-mgmt-core's ARM pipeline) talk to it over
TLS on 127.0.0.1 with a self-signed certificate made by `openssl` (some SDK calls refuse
bearer tokens over plain HTTP). It records every request and answers what the worker's
actions need:

- `PUT  <WS>/jobs/{name}`: stores the job. A second PUT of the same name whose immutable
  parts differ answers 400 with the service's `UserError` / `JobPropertyImmutable` body; an
  equal one answers 200 (an update of the mutable fields).
- `GET  <WS>/jobs/{name}`: the stored job, or 404.
- `GET  <WS>`, `GET <WS>/computes/{name}`: a minimal workspace / compute.
- `POST <factory>/pipelines/{name}/createRun`: `{"runId": ...}`.
- anything else: 404 with an ARM error body, and the request lands in `unknown`.

`fail(...)` queues a canned answer (a 503 with Retry-After, a 400) for the next matching
requests. `<WS>` = `/subscriptions/{s}/resourceGroups/{rg}/providers/
Microsoft.MachineLearningServices/workspaces/{ws}`; paths match case-insensitively, as ARM's.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ArmStub",
    "AsyncStubCredential",
    "Recorded",
    "StubCredential",
    "make_jwt",
    "running_stub",
]

_WS = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"
)
_JOB_RE = re.compile(_WS + r"/jobs/(?P<name>[^/]+)$", re.IGNORECASE)
_COMPUTE_RE = re.compile(_WS + r"/computes/(?P<name>[^/]+)$", re.IGNORECASE)
_WORKSPACE_RE = re.compile(_WS + r"$", re.IGNORECASE)
_COMPONENT_RE = re.compile(
    _WS + r"/components/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.IGNORECASE
)
_CREATE_RUN_RE = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.DataFactory/"
    r"factories/(?P<factory>[^/]+)/pipelines/(?P<pipeline>[^/]+)/createRun$",
    re.IGNORECASE,
)

# What the job service lets a same-name PUT change (its own error message lists them).
_MUTABLE_JOB_PROPERTIES = frozenset(
    {"description", "tags", "displayName", "properties", "isArchived", "status", "services"}
)


def make_jwt(scope: str) -> str:
    """An unsigned JWT the SDKs can decode: `aud` = the scope without `/.default`."""

    def part(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    audience = scope.removesuffix("/.default")
    claims = {
        "aud": audience,
        "tid": "00000000-0000-0000-0000-0000000000aa",
        "oid": "00000000-0000-0000-0000-0000000000bb",
        "upn": "stub@example.com",
        "iat": int(time.time()),
        "exp": int(time.time()) + 3600,
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


class StubCredential:
    """A sync TokenCredential (MLClient is sync) that records the scopes asked for."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.extend(scopes)
        return AccessToken(make_jwt(scopes[0]), int(time.time()) + 3600)


class AsyncStubCredential:
    """The async twin of StubCredential, for azure-core's async bearer token policy."""

    def __init__(self) -> None:
        self.scopes: list[str] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.extend(scopes)
        return AccessToken(make_jwt(scopes[0]), int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> AsyncStubCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass
class Recorded:
    """One request as the stub saw it (header names lower-cased)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, raw text, or None
    status: int = 0


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    times: int


@dataclass
class ArmStub:
    """The server's state; use `running_stub()` to start one."""

    cert_path: Path
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    unknown: list[Recorded] = field(default_factory=list)
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def cloud_metadata(self) -> dict[str, str]:
        """MLClient's `cloud_metadata=`: every endpoint is this stub (tooling-notes)."""
        base = self.url + "/"
        return {
            "azure_portal": base,
            "resource_manager": base,
            "active_directory": base,
            "aml_resource_id": base,
            "registry_discovery_endpoint": base,
            "storage_endpoint": "core.windows.net",
        }

    # --- programming the stub ---------------------------------------------------------------

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests matching (method, path regex) with `status`."""
        if body is None:
            code = "ServiceUnavailable" if status >= 500 else "BadRequest"
            body = {"error": {"code": code, "message": f"injected {status}"}}
        with self._lock:
            self._failures.append(
                _Failure(
                    method.upper(),
                    re.compile(path_regex, re.IGNORECASE),
                    status,
                    body,
                    headers or {},
                    times,
                )
            )

    def add_job(self, workspace_id: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
        """Register an existing job (as if submitted earlier) and return its stored form."""
        job = self._stored_job(workspace_id, name, {"properties": properties})
        with self._lock:
            self.jobs[(workspace_id.casefold(), name.casefold())] = job
        return job

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.unknown.clear()
            self.jobs.clear()
            self.components.clear()
            self._failures.clear()

    def calls(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        """Recorded requests, optionally by method and a (case-insensitive) path substring."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper())
                and contains.casefold() in r.path.casefold()
            ]

    # --- request handling (called on the server's threads) --------------------------------

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.method == method and failure.pattern.search(path):
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def _stored_job(self, workspace_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        job = copy.deepcopy(body)
        job["id"] = f"{workspace_id}/jobs/{name}"
        job["name"] = name
        job["type"] = "Microsoft.MachineLearningServices/workspaces/jobs"
        job["systemData"] = {"createdAt": "2024-06-10T10:00:00Z", "createdBy": "stub"}
        props = job.setdefault("properties", {})
        props.setdefault("status", "NotStarted")
        props["services"] = {
            "Studio": {
                "jobServiceType": "Studio",
                "endpoint": f"https://ml.azure.com/runs/{name}?wsid={workspace_id}",
            }
        }
        return job

    def handle(self, record: Recorded) -> tuple[int, Any, dict[str, str]]:
        failure = self._take_failure(record.method, record.path)
        if failure is not None:
            return failure.status, failure.body, failure.headers

        method, path = record.method, record.path
        if match := _JOB_RE.match(path):
            workspace_id = path[: match.start("name") - len("/jobs/")]
            key = (workspace_id.casefold(), match["name"].casefold())
            if method == "GET":
                with self._lock:
                    job = self.jobs.get(key)
                if job is None:
                    return 404, _not_found(f"job {match['name']}"), {}
                return 200, job, {}
            if method == "PUT" and isinstance(record.body, dict):
                return self._put_job(workspace_id, match["name"], key, record.body)
        if match := _COMPONENT_RE.match(path):
            return self._component(method, path, match["name"], match["version"], record.body)
        if method == "GET" and (match := _COMPUTE_RE.match(path)):
            return 200, _compute(path, match["name"]), {}
        if method == "GET" and (match := _WORKSPACE_RE.match(path)):
            return 200, _workspace(path, match["ws"]), {}
        if method == "POST" and _CREATE_RUN_RE.match(path):
            return 200, {"runId": str(uuid.uuid4())}, {}
        with self._lock:
            self.unknown.append(record)
        return 404, _not_found(f"{method} {path} (the stub does not know this call)"), {}

    def _component(
        self, method: str, path: str, name: str, version: str, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            if method == "PUT" and isinstance(body, dict):
                stored = copy.deepcopy(body)
                stored.update(
                    id=path,
                    name=version,
                    type="Microsoft.MachineLearningServices/workspaces/components/versions",
                )
                self.components[path.casefold()] = stored
                return 201, stored, {}
            if method == "GET" and path.casefold() in self.components:
                return 200, self.components[path.casefold()], {}
        return 404, _not_found(f"component {name}:{version}"), {}

    def _put_job(
        self, workspace_id: str, name: str, key: tuple[str, str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            existing = self.jobs.get(key)
            if existing is None:
                job = self._stored_job(workspace_id, name, body)
                self.jobs[key] = job
                return 201, job, {}
            if _immutable(existing) != _immutable(body):
                return 400, _already_exists(), {}
            for prop in ("description", "tags", "displayName", "isArchived"):
                if prop in body.get("properties", {}):
                    existing["properties"][prop] = body["properties"][prop]
            return 200, existing, {}


def _immutable(job: dict[str, Any]) -> dict[str, Any]:
    props = job.get("properties", {})
    return {k: v for k, v in props.items() if k not in _MUTABLE_JOB_PROPERTIES and v is not None}


def _not_found(what: str) -> dict[str, Any]:
    return {"error": {"code": "UserError", "message": f"{what} not found"}}


def _already_exists() -> dict[str, Any]:
    """The job service's answer to a same-name PUT that changes an immutable property."""
    message = (
        "A job with this name already exists. If you are trying to create a new job, use a "
        "different name. If you are trying to update an existing job, the existing job's "
        "Settings, Inputs, Outputs, Jobs, InputBindings, OutputBindings cannot be changed. "
        "Only description, tags, displayName, properties, and isArchived can be updated."
    )
    return {
        "error": {
            "code": "UserError",
            "severity": None,
            "message": message,
            "messageFormat": None,
            "messageParameters": {"property": " Settings"},
            "innerError": {
                "code": "Immutable",
                "innerError": {"code": "JobPropertyImmutable", "innerError": None},
            },
            "details": [],
        }
    }


def _workspace(path: str, name: str) -> dict[str, Any]:
    return {
        "id": path,
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces",
        "location": "westeurope",
        "kind": "Default",
        "identity": {"type": "SystemAssigned"},
        "properties": {
            "friendlyName": name,
            "discoveryUrl": "https://westeurope.api.azureml.ms/discovery",
            "workspaceId": "00000000-0000-0000-0000-0000000000cc",
            "provisioningState": "Succeeded",
        },
    }


def _compute(path: str, name: str) -> dict[str, Any]:
    return {
        "id": path,
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/computes",
        "location": "westeurope",
        "properties": {
            "computeType": "AmlCompute",
            "provisioningState": "Succeeded",
            "properties": {"vmSize": "STANDARD_DS3_V2", "vmPriority": "Dedicated"},
        },
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def _serve(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        record = Recorded(
            method=self.command,
            path=split.path,
            query={k: v[-1] for k, v in parse_qs(split.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        stub = self.server.stub
        with stub._lock:
            stub.requests.append(record)
        status, payload, headers = stub.handle(record)
        record.status = status
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: ArmStub


def _make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "stub-cert.pem", directory / "stub-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.contextmanager
def running_stub(directory: Path | None = None) -> Iterator[ArmStub]:
    """Serve an ArmStub on a free 127.0.0.1 port over HTTPS until the block ends."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cert, key = _make_cert(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        stub = ArmStub(cert_path=cert, port=server.server_address[1])
        server.stub = stub
        thread = threading.Thread(target=server.serve_forever, name="arm-stub", daemon=True)
        thread.start()
        try:
            yield stub
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
