"""The `aml_job` action: submit an Azure ML job named after the idempotency key (DESIGN §3, §5).

Two forms, the same overrides:

- `job: PATH` loads the job YAML with the SDK's own `load_job` (any job type: command,
  pipeline, sweep, ...), exactly as `az ml job create --file` would.
- `rerun: NAME` fetches an existing job (`jobs.get`) and submits a copy of it under the new
  name. Verified for command jobs. For pipeline jobs prefer `job:` with the pipeline YAML:
  a fetched pipeline job does not round-trip to the body the service stored (azure-sdk-for-
  python PR #47389), so the service may refuse the copy; such a refusal is a non-retryable
  error whose message says so. (Against a stub, the SDK itself submits the copy.)

Overrides: the job's name is `aew-` + the idempotency key; `experiment_name`,
`display_name` and `compute` replace the job's; `tags` are merged into the job's, plus
`aml-event-worker/event-id`, `aml-event-worker/rule` and `aml-event-worker/idempotency-key`;
`inputs` replace the job's inputs of the same name (the job must declare them):

- an input that is a data/model asset (`type: uri_folder`, `mltable`, ...) keeps its type and
  mode and takes the value as its new `path` (`azureml:my-data:3`, a URI);
- a literal input takes the value. Templates render to strings, and the service stores every
  literal as a string anyway; a string is converted only when the job's own value is a
  number or a boolean (`epochs: 3` in the YAML), so that the SDK's validation sees the type
  it expects, and a value that does not convert is a non-retryable error;
- a map value (`{type: uri_file, path: ...}`) is a complete `Input` and replaces the input.

Idempotency: the job name is deterministic, so a retry, a replay or a second replica finds
the job already submitted. The executor first looks the name up (`jobs.get`) and reports an
existing job as `already_submitted` without sending anything; a same-name submission that
races it is answered by the service with "A job with this name already exists"
(`UserError` / `JobPropertyImmutable`), which is resolved the same way.

One attempt per call (the caller retries): the SDK's own retries are off (`retry_total=0`).
Network errors, 408, 429 and 5xx are retryable, with the service's Retry-After; 400, 401,
403, 404 (an unknown workspace, compute or job to rerun), local validation errors and an
unreadable job file are not. `MLClient` is synchronous and slow to import (about 1.2 s), so
`azure.ai.ml` is imported only when the first job is submitted, and every SDK call runs in a
worker thread. One client per workspace, cached.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

import worker
from worker.actions import parse_retry_after
from worker.errors import ActionError
from worker.jsontext import utf8_safe
from worker.plan import PlannedAction
from worker.templates import Redactor, mask

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = [
    "JOB_NAME_PREFIX",
    "TAG_EVENT_ID",
    "TAG_IDEMPOTENCY_KEY",
    "TAG_RULE",
    "AmlJobExecutor",
    "Workspace",
    "build_ml_client",
    "job_name_for",
    "parse_workspace_id",
]

log = structlog.get_logger(__name__)

JOB_NAME_PREFIX = "aew-"
TAG_EVENT_ID = "aml-event-worker/event-id"
TAG_RULE = "aml-event-worker/rule"
TAG_IDEMPOTENCY_KEY = "aml-event-worker/idempotency-key"
USER_AGENT = f"aml-event-worker/{worker.__version__}"
CONNECTION_TIMEOUT_S = 30
READ_TIMEOUT_S = 120

_WORKSPACE_RE = re.compile(
    r"/subscriptions/(?P<sub>[^/\s]+)/resourceGroups/(?P<rg>[^/\s]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/\s]+)/?",
    re.IGNORECASE,
)
_RETRYABLE_STATUSES = frozenset({408, 429})
_LITERAL_INPUT_TYPES: Mapping[str, type] = {
    "string": str,
    "number": float,
    "integer": int,
    "boolean": bool,
}
_TYPE_WORDS: Mapping[type, str] = {float: "number", int: "integer", bool: "boolean", str: "string"}
_SHOWN_CHARS = 400

ClientFactory = Callable[[str, str, str], Any]


@dataclass(frozen=True, slots=True)
class Workspace:
    subscription_id: str
    resource_group: str
    name: str

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.name}"
        )

    @property
    def key(self) -> tuple[str, str, str]:
        """ARM ids compare case-insensitively: one client per workspace, however spelled."""
        return (
            self.subscription_id.casefold(),
            self.resource_group.casefold(),
            self.name.casefold(),
        )


def parse_workspace_id(text: str) -> Workspace | None:
    """An Azure ML workspace ARM id (any casing), or None when `text` is not one."""
    match = _WORKSPACE_RE.fullmatch(text.strip())
    if match is None:
        return None
    return Workspace(match["sub"], match["rg"], match["ws"])


def job_name_for(planned: PlannedAction) -> str:
    """DESIGN §5: AML job names are `aew-` + the idempotency key (36 characters)."""
    return JOB_NAME_PREFIX + planned.key


def build_ml_client(
    credential: Any,
    subscription_id: str,
    resource_group: str,
    workspace: str,
    *,
    cloud: str = "AzureCloud",
    **kwargs: Any,
) -> Any:
    """An `MLClient` configured for the worker: one attempt per call (no SDK retries), no
    progress bars, no SDK telemetry, our user agent. Extra keyword arguments reach the SDK
    (tests pass `cloud_metadata=` and `connection_verify=` to aim it at a local stub)."""
    from azure.ai.ml import MLClient

    options: dict[str, Any] = {
        "retry_total": 0,
        "show_progress": False,
        "enable_telemetry": False,
        "user_agent": USER_AGENT,
        "connection_timeout": CONNECTION_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }
    options.update(kwargs)
    return MLClient(credential, subscription_id, resource_group, workspace, cloud=cloud, **options)


class AmlJobExecutor:
    """Submits `aml_job` actions. `client_factory(subscription, resource_group, workspace)`
    replaces the default `MLClient` construction (tests aim it at a local stub)."""

    def __init__(
        self,
        settings: Settings,
        *,
        credential: Any = None,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.settings = settings
        self._credential = credential
        self._owns_credential = credential is None
        self._client_factory = client_factory
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        self._clients.clear()
        credential, self._credential = self._credential, None
        if self._owns_credential and credential is not None:
            await asyncio.to_thread(credential.close)

    # --- clients ------------------------------------------------------------------------------

    def _default_client(self, subscription_id: str, resource_group: str, workspace: str) -> Any:
        if self._credential is None:
            from worker.connections import default_credential

            self._credential = default_credential(self.settings, aio=False)
        return build_ml_client(
            self._credential,
            subscription_id,
            resource_group,
            workspace,
            cloud=self.settings.azure_cloud,
        )

    async def _client(self, workspace: Workspace) -> Any:
        async with self._lock:
            client = self._clients.get(workspace.key)
            if client is None:
                factory = self._client_factory or self._default_client
                try:
                    client = await asyncio.to_thread(
                        factory, workspace.subscription_id, workspace.resource_group, workspace.name
                    )
                except Exception as exc:  # configuration (cloud, credential): not transient
                    raise ActionError(
                        f"aml_job: cannot create an MLClient for {workspace.id}: "
                        f"{type(exc).__name__}: {exc}",
                        retryable=False,
                    ) from None
                self._clients[workspace.key] = client
            return client

    # --- one attempt --------------------------------------------------------------------------

    async def execute(self, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
        workspace = _workspace_of(planned, params)
        redact = Redactor(mask(planned.params), params)
        # Names, tags and inputs are text to the service, which may refuse a lone surrogate's
        # JSON escape: any string an event brings becomes sendable text (DESIGN §7).
        params = _plain_text(params)
        client = await self._client(workspace)
        submission = _Submission(client, workspace, planned, params, redact)
        facts = await asyncio.to_thread(submission.run)
        if facts["already_submitted"]:
            log.debug(
                "aml_job_already_submitted",
                rule=planned.rule,
                job_name=facts["job_name"],
                idempotency_key=planned.key,
            )
        return facts


def _plain_text(value: Any) -> Any:
    """The rendered parameters with every string UTF-8-encodable (a lone surrogate: U+FFFD)."""
    if isinstance(value, str):
        return utf8_safe(value)
    if isinstance(value, Mapping):
        return {k: _plain_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_text(v) for v in value]
    return value


def _workspace_of(planned: PlannedAction, params: Mapping[str, Any]) -> Workspace:
    given = params.get("workspace")
    if given:
        workspace = parse_workspace_id(str(given))
        if workspace is None:
            raise ActionError(
                f"aml_job: 'workspace' {mask(planned.params).get('workspace')!r} is not an Azure "
                "ML workspace ARM id (/subscriptions/<id>/resourceGroups/<rg>/providers/"
                "Microsoft.MachineLearningServices/workspaces/<name>)",
                retryable=False,
            )
        return workspace
    workspace = parse_workspace_id(planned.event.topic)
    if workspace is None:
        raise ActionError(
            f"aml_job: the event's topic {planned.event.topic!r} is not an Azure ML workspace; "
            "give the action a 'workspace' (an ARM id)",
            retryable=False,
        )
    return workspace


class _Submission:
    """One attempt, run in a worker thread: every SDK call blocks."""

    def __init__(
        self,
        client: Any,
        workspace: Workspace,
        planned: PlannedAction,
        params: Mapping[str, Any],
        redact: Redactor,
    ) -> None:
        self.client = client
        self.workspace = workspace
        self.planned = planned
        self.params = params
        self.redact = redact
        self.name = job_name_for(planned)
        self.is_pipeline = False

    def run(self) -> dict[str, Any]:
        from azure.core.exceptions import AzureError

        try:
            existing = self._get(self.name)
            if existing is not None:
                return self._facts(existing, already_submitted=True)
            job = self._prepare()
            return self._submit(job)
        except ActionError:
            raise
        except AzureError as exc:
            raise self._azure_error(exc) from None
        except Exception as exc:  # the SDK's local validation and asset resolution
            raise self._local_error(exc) from None

    def _get(self, name: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.jobs.get(name)
        except ResourceNotFoundError:
            return None

    def _prepare(self) -> Any:
        params = self.params
        if "rerun" in params:
            job = self._fetch(str(params["rerun"]))
        else:
            job = self._load(self.planned.action.files["job"])
        self.is_pipeline = getattr(job, "type", None) == "pipeline"
        self._apply(job)
        return job

    def _load(self, path: str) -> Any:
        from azure.ai.ml import load_job

        try:
            return load_job(path)
        except Exception as exc:  # a file problem is the same on every attempt
            raise ActionError(
                f"aml_job: cannot load job file {path}: {self._text(exc)}", retryable=False
            ) from None

    def _fetch(self, name: str) -> Any:
        job = self._get(name)
        if job is None:
            raise ActionError(
                self.redact(f"aml_job: job to rerun {name!r} not found in {self.workspace.id}"),
                retryable=False,
            )
        old_name = job.name
        # A copy, not an update: drop what identifies the old job.
        if hasattr(job, "_id"):
            job._id = None
        if hasattr(job, "services"):
            job.services = None
        if job.display_name == old_name:
            job.display_name = None
        return job

    def _apply(self, job: Any) -> None:
        params, planned = self.params, self.planned
        job.name = self.name
        for key in ("experiment_name", "display_name", "compute"):
            if params.get(key):
                setattr(job, key, str(params[key]))
        tags = {str(k): str(v) for k, v in (job.tags or {}).items()}
        tags.update({str(k): str(v) for k, v in (params.get("tags") or {}).items()})
        tags[TAG_EVENT_ID] = planned.event.id
        tags[TAG_RULE] = planned.rule
        tags[TAG_IDEMPOTENCY_KEY] = planned.key
        job.tags = tags
        for name, value in (params.get("inputs") or {}).items():
            _set_input(job, str(name), value)

    def _submit(self, job: Any) -> dict[str, Any]:
        from azure.core.exceptions import HttpResponseError

        try:
            created = self.client.jobs.create_or_update(job)
        except HttpResponseError as exc:
            if not _already_exists(exc):
                raise
            found = self._get(self.name)
            if found is None:  # not ours after all (a blob upload race, say): try again
                raise ActionError(
                    f"aml_job: {self.name} reported as existing but not found: {self._text(exc)}"
                ) from None
            return self._facts(found, already_submitted=True)
        return self._facts(created, already_submitted=False)

    def _facts(self, job: Any, *, already_submitted: bool) -> dict[str, Any]:
        facts: dict[str, Any] = {"job_name": job.name or self.name}
        studio_url = getattr(job, "studio_url", None)
        if studio_url:
            facts["studio_url"] = studio_url
        facts["workspace"] = self.workspace.id
        facts["already_submitted"] = already_submitted
        return facts

    # --- errors -------------------------------------------------------------------------------

    def _text(self, exc: BaseException) -> str:
        return self.redact.excerpt(str(exc) or type(exc).__name__, _SHOWN_CHARS)

    def _azure_error(self, exc: Exception) -> ActionError:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        where = f"aml_job {self.name} in {self.workspace.id}"
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return ActionError(f"{where}: network error: {self._text(exc)}")
        status = getattr(exc, "status_code", None)
        if isinstance(exc, ClientAuthenticationError) and status is None:
            # No token (managed identity endpoint down, say): often transient.
            return ActionError(f"{where}: cannot get a token: {self._text(exc)}")
        if isinstance(exc, HttpResponseError) and status is not None:
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None) or {}
            retryable = status in _RETRYABLE_STATUSES or status >= 500
            hint = ""
            if self.is_pipeline and "rerun" in self.params and status == 400:
                hint = (
                    " (a fetched pipeline job does not always round-trip, azure-sdk-for-python"
                    " PR #47389: use 'job:' with the pipeline YAML instead of 'rerun:')"
                )
            return ActionError(
                f"{where}: HTTP {status}: {self._text(exc)}{hint}",
                retryable=retryable,
                retry_after_s=parse_retry_after(headers.get("Retry-After")) if retryable else None,
            )
        return ActionError(f"{where}: {type(exc).__name__}: {self._text(exc)}", retryable=False)

    def _local_error(self, exc: Exception) -> ActionError:
        return ActionError(
            f"aml_job {self.name}: {type(exc).__name__}: {self._text(exc)}", retryable=False
        )


def _already_exists(exc: Any) -> bool:
    """The service's answer to a same-name submission (status 400, or 409 on some paths)."""
    if getattr(exc, "status_code", None) not in (400, 409):
        return False
    text = f"{exc}".casefold()
    return "already exists" in text or "jobpropertyimmutable" in text


def _set_input(job: Any, name: str, value: Any) -> None:
    """Replace one input of a loaded or fetched job (see the module docstring)."""
    from azure.ai.ml import Input

    inputs = job.inputs
    if inputs is None or name not in inputs:
        names = ", ".join(sorted(inputs or {})) or "none"
        raise ActionError(
            f"aml_job: the job has no input {name!r} (its inputs: {names})", retryable=False
        )
    current = inputs[name]
    data = getattr(current, "_data", current)  # node/pipeline inputs wrap their value
    if isinstance(value, Mapping):
        try:
            new: Any = Input(**{str(k): v for k, v in value.items()})
        except TypeError as exc:
            raise ActionError(f"aml_job: input {name!r}: {exc}", retryable=False) from None
    elif isinstance(data, Input) and data.type not in _LITERAL_INPUT_TYPES:
        new = Input(type=data.type, path=str(value), mode=data.mode)
    else:
        new = _literal(name, value, data)
    if type(inputs) is dict:
        inputs[name] = new
    else:  # the SDK's attribute dicts: assignment rebinds the wrapped value
        setattr(inputs, name, new)
    job_inputs = getattr(job, "_job_inputs", None)
    if isinstance(job_inputs, dict):  # what a command node serialises
        job_inputs[name] = new


def _literal(name: str, value: Any, current: Any) -> Any:
    if not isinstance(value, str):
        return value
    declared = getattr(current, "type", None)
    if isinstance(declared, str):
        wanted = _LITERAL_INPUT_TYPES.get(declared, str)
    elif isinstance(current, bool | int | float):
        wanted = type(current)
    else:
        return value
    try:
        if wanted is bool:
            lowered = value.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError(value)
            return lowered == "true"
        return wanted(value.strip()) if wanted is not str else value
    except ValueError:
        # The value itself stays out of the message: it may carry a secret.
        raise ActionError(
            f"aml_job: input {name!r} takes {_TYPE_WORDS[wanted]} values (as in the job), "
            "and the rendered value is not one",
            retryable=False,
        ) from None
