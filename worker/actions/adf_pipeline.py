"""The `adf_pipeline` action: start an Azure Data Factory pipeline run (DESIGN §3).

One ARM call per attempt:

    POST {arm}{factory}/pipelines/{pipeline}/createRun?api-version=2018-06-01
    body: the action's `parameters` (a JSON object, `{}` when absent)
    answer: {"runId": "..."}

Why not azure-mgmt-datafactory: this one REST call does not justify a multi-megabyte
generated client (and its import time) in the worker. azure-mgmt-core's
`AsyncARMPipelineClient` gives the same ARM plumbing the generated client would use: bearer
tokens for `{arm}/.default` (with ARM's claims challenges), ARM's error format and logging
policy, resource provider auto-registration. Its retries are off (`retry_total=0`): the
worker's delivery layer retries with its own backoff and honours Retry-After.

createRun has no idempotency key, so this action is ledger-protected by the caller (DESIGN
§5); the request still carries `x-ms-client-request-id` = the idempotency key as a UUID, so
a run can be traced back to its event in the factory's activity log and ARM's request logs.

Outcome: 2xx is done; network errors, 408, 429 and 5xx are retryable (with Retry-After); any
other status is not (400 a bad parameter, 401/403 missing rights, 404 an unknown factory or
pipeline), nor is a `factory` that is not a data factory's ARM id. Parameter values are sent
as rendered (templates render to strings; write a number or a list without quotes in the
rules file to send one). Messages never carry a secret parameter value.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

import worker
from worker.actions import parse_retry_after
from worker.errors import ActionError
from worker.jsontext import utf8_safe
from worker.plan import PlannedAction
from worker.templates import Redactor, mask

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["API_VERSION", "ARM_ENDPOINTS", "AdfPipelineExecutor", "client_request_id"]

log = structlog.get_logger(__name__)

API_VERSION = "2018-06-01"
ARM_ENDPOINTS: Mapping[str, str] = {
    "AzureCloud": "https://management.azure.com",
    "AzureUSGovernment": "https://management.usgovcloudapi.net",
    "AzureChinaCloud": "https://management.chinacloudapi.cn",
}
USER_AGENT = f"aml-event-worker/{worker.__version__}"
CONNECTION_TIMEOUT_S = 30
READ_TIMEOUT_S = 60
_FACTORY_RE = re.compile(
    r"/subscriptions/[^/?#%\s]+/resourceGroups/[^/?#%\s]+/providers/"
    r"Microsoft\.DataFactory/factories/[^/?#%\s]+",
    re.IGNORECASE,
)
_RETRYABLE_STATUSES = frozenset({408, 429})
_SHOWN_CHARS = 300


def client_request_id(key: str) -> str:
    """The idempotency key (32 hex digits) as the UUID ARM logs as the client request id."""
    return str(uuid.UUID(hex=key))


class AdfPipelineExecutor:
    """Starts `adf_pipeline` actions. `base_url` replaces the cloud's ARM endpoint and
    `transport` azure-core's default aiohttp transport (tests aim both at a local stub); the
    executor owns a given transport and closes it in `aclose`."""

    def __init__(
        self,
        settings: Settings,
        *,
        credential: Any = None,
        transport: Any = None,
        base_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.arm_endpoint = ARM_ENDPOINTS[settings.azure_cloud]
        self.base_url = (base_url or self.arm_endpoint).rstrip("/")
        self.scope = self.arm_endpoint + "/.default"
        self._credential = credential
        self._owns_credential = credential is None
        self._transport = transport
        self._client: Any = None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        transport, self._transport = self._transport, None
        if client is not None:
            await client.close()  # closes the transport too
        elif transport is not None:
            await transport.close()
        credential, self._credential = self._credential, None
        if self._owns_credential and credential is not None:
            await credential.close()

    def _pipeline_client(self) -> Any:
        if self._client is not None:
            return self._client
        from azure.core.configuration import Configuration
        from azure.core.pipeline import policies
        from azure.mgmt.core import AsyncARMPipelineClient
        from azure.mgmt.core.policies import (
            ARMHttpLoggingPolicy,
            AsyncARMChallengeAuthenticationPolicy,
        )

        if self._credential is None:
            from worker.connections import default_credential

            self._credential = default_credential(self.settings)
        config: Configuration[Any, Any] = Configuration()
        config.headers_policy = policies.HeadersPolicy()
        config.user_agent_policy = policies.UserAgentPolicy(user_agent=USER_AGENT)
        config.proxy_policy = policies.ProxyPolicy()
        config.logging_policy = policies.NetworkTraceLoggingPolicy()
        config.http_logging_policy = ARMHttpLoggingPolicy()
        config.retry_policy = policies.AsyncRetryPolicy(retry_total=0)
        config.redirect_policy = policies.AsyncRedirectPolicy()
        config.custom_hook_policy = policies.CustomHookPolicy()
        config.authentication_policy = AsyncARMChallengeAuthenticationPolicy(
            self._credential, self.scope
        )
        extra = {"transport": self._transport} if self._transport is not None else {}
        self._client = AsyncARMPipelineClient(self.base_url, config=config, **extra)
        return self._client

    async def execute(self, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.core.rest import HttpRequest

        shown = mask(planned.params)
        redact = Redactor(shown, params)
        factory = str(params.get("factory") or "").strip().rstrip("/")
        pipeline = str(params.get("pipeline") or "")
        if not _FACTORY_RE.fullmatch(factory):
            raise ActionError(
                f"adf_pipeline: 'factory' {shown.get('factory')!r} is not a data factory's ARM id "
                "(/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.DataFactory/"
                "factories/<name>)",
                retryable=False,
            )
        if not pipeline:
            raise ActionError("adf_pipeline: 'pipeline' is empty", retryable=False)
        parameters = params.get("parameters") or {}
        shown_factory, shown_pipeline = str(shown.get("factory")), str(shown.get("pipeline"))
        where = f"adf_pipeline {shown_factory}/pipelines/{shown_pipeline}"
        request = HttpRequest(
            "POST",
            f"{self.base_url}{factory}/pipelines/{quote(utf8_safe(pipeline), safe='')}/createRun",
            params={"api-version": API_VERSION},
            json=parameters,
            headers={
                "Accept": "application/json",
                "x-ms-client-request-id": client_request_id(planned.key),
            },
        )
        client = self._pipeline_client()
        try:
            response = await client.send_request(
                request,
                connection_timeout=CONNECTION_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
            )
            body = await response.read()
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise ActionError(f"{where}: network error: {_short(redact, exc)}") from None
        except ClientAuthenticationError as exc:  # no token: often transient (IMDS, Entra)
            raise ActionError(f"{where}: cannot get a token: {_short(redact, exc)}") from None

        status = response.status_code
        if 200 <= status < 300:
            run_id = _json(body).get("runId")
            if not run_id:  # the run was accepted: a retry would start another one
                log.warning("adf_run_without_id", factory=shown_factory, status=status)
            return {"run_id": run_id, "factory": shown_factory, "pipeline": shown_pipeline}
        retryable = status in _RETRYABLE_STATUSES or status >= 500
        raise ActionError(
            f"{where}: HTTP {status}: {_arm_error(redact, body)}",
            retryable=retryable,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After"))
            if retryable
            else None,
        )


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _arm_error(redact: Redactor, body: bytes) -> str:
    """ARM's `{"error": {"code", "message"}}`, or the start of whatever came back."""
    error = _json(body).get("error")
    if isinstance(error, dict) and (error.get("code") or error.get("message")):
        text = f"{error.get('code') or 'Error'}: {error.get('message') or ''}"
    else:
        text = body.decode("utf-8", errors="replace") or "(empty body)"
    return redact.excerpt(text, _SHOWN_CHARS)


def _short(redact: Redactor, exc: BaseException) -> str:
    return redact.excerpt(str(exc) or type(exc).__name__, _SHOWN_CHARS)
