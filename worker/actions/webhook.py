"""The `webhook` action: one HTTP request per attempt (DESIGN §3, §5).

The default body is the event itself, shaped as Event Grid's own webhook delivery would
shape it (`schema: eventgrid`: a JSON array of one event; `schema: cloudevents`: one
structured CloudEvent), so an endpoint written for an Event Grid subscription works
unchanged. Every request carries `Idempotency-Key: <planned.key>`, stable across retries,
replays and replicas, so a target that dedupes by it sees each action once.

Outcome: 2xx is done; 408, 429, 5xx, network errors and timeouts are retryable; any other
status (3xx included: redirects are not followed) is not. `Retry-After` (seconds or an HTTP
date) becomes `ActionError.retry_after_s`. Messages show the masked URL and never a secret:
the revealed values are scrubbed from anything a peer or a library might echo back.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDict

import worker
from worker import tracing
from worker.actions import parse_retry_after
from worker.errors import ActionError
from worker.events import Event, Schema, iso_ticks
from worker.jsontext import dumps_bytes, text_bytes, utf8_safe
from worker.plan import PlannedAction
from worker.templates import Redactor, mask

__all__ = [
    "CLOUDEVENTS_CONTENT_TYPE",
    "DEFAULT_TIMEOUT_S",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "Redactor",
    "WebhookExecutor",
    "cloudevent_of",
    "eventgrid_of",
    "parse_retry_after",
    "request_body",
]

DEFAULT_TIMEOUT_S = 30.0
USER_AGENT = f"aml-event-worker/{worker.__version__}"
SIGNATURE_HEADER = "X-Aml-Worker-Signature"
JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
_RETRYABLE_STATUSES = frozenset({408, 429})
_SHOWN_BODY_CHARS = 200
_DRAIN_LIMIT_BYTES = 1 << 20  # read this much of a response so the connection can be reused
_TOKEN_REFRESH_MARGIN_S = 300.0
# aiohttp >= 3.10 raises NonHttpUrlClientError for a scheme other than http(s)
_BAD_URL_ERRORS = tuple(
    getattr(aiohttp, name)
    for name in ("InvalidURL", "NonHttpUrlClientError")
    if hasattr(aiohttp, name)
)


# --- bodies -------------------------------------------------------------------------------


def _json_bytes(value: Any) -> bytes:
    return dumps_bytes(value)  # any string, a lone surrogate included (DESIGN §7)


def eventgrid_of(event: Event) -> dict[str, Any]:
    """The event in Event Grid schema: as received, or converted from a CloudEvent."""
    if event.schema is Schema.EVENTGRID:
        return event.as_received()
    raw = event.raw
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.type,
        "eventTime": raw.get("time") or iso_ticks(event.time_ticks),
        "data": event.data,
        "dataVersion": event.data_version,
        "metadataVersion": "1",
    }


def cloudevent_of(event: Event) -> dict[str, Any]:
    """The event as a structured CloudEvent: as received, or converted from Event Grid."""
    if event.schema is Schema.CLOUDEVENTS:
        return event.as_received()
    converted: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "source": event.topic,
        "subject": event.subject,
        "type": event.type,
        "time": event.raw.get("eventTime") or iso_ticks(event.time_ticks),
        "data": event.data,
        "datacontenttype": "application/json",
    }
    if not event.subject:
        del converted["subject"]
    return converted


def request_body(event: Event, params: Mapping[str, Any]) -> tuple[bytes | None, str | None]:
    """The request's body bytes and content type (None, None: no body).

    An explicit `body` is sent as given: a string as is (JSON if it parses as JSON, else
    plain text), a map or list as JSON. Without one, the event is the body, except for GET,
    which carries none.
    """
    body = params.get("body")
    if isinstance(body, str):
        try:
            json.loads(body)
        except (ValueError, RecursionError):
            return text_bytes(body), TEXT_CONTENT_TYPE
        return text_bytes(body), JSON_CONTENT_TYPE
    if body is not None:
        return _json_bytes(body), JSON_CONTENT_TYPE
    if _method(params) == "GET":
        return None, None
    if params.get("schema") == "cloudevents":
        return _json_bytes(cloudevent_of(event)), CLOUDEVENTS_CONTENT_TYPE
    return _json_bytes([eventgrid_of(event)]), JSON_CONTENT_TYPE


_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_value(value: Any) -> str:
    """A header value as one line of text (DESIGN §7): a line break or other control
    character from event data becomes a space, so it can never start another header, and a
    lone surrogate becomes U+FFFD."""
    return _CONTROL_RE.sub(" ", utf8_safe(str(value)))


def _method(params: Mapping[str, Any]) -> str:
    return str(params.get("method") or "POST").upper()


def _excerpt(raw: bytes, redact: Redactor) -> str:
    return redact.excerpt(raw.decode("utf-8", errors="replace"), _SHOWN_BODY_CHARS)


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(min(65_536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _is_cert_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError | aiohttp.ServerFingerprintMismatch):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- executor -----------------------------------------------------------------------------


class WebhookExecutor:
    """Sends webhooks over one aiohttp session, created on first use and closed by aclose().

    `session_factory` makes that session (tests, custom TLS or proxies); `credential` is an
    azure-core async TokenCredential for `auth: {type: entra}` (default: a
    DefaultAzureCredential for the configured cloud, created on first use and closed here).
    """

    def __init__(
        self,
        settings: Any = None,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        credential: Any = None,
    ) -> None:
        self._settings = settings
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._credential = credential
        self._owns_credential = False
        self._tokens: dict[str, Any] = {}
        self._closed = False

    async def __aenter__(self) -> WebhookExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._owns_credential and self._credential is not None:
            credential, self._credential = self._credential, None
            await credential.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("WebhookExecutor is closed")
        if self._session is None or self._session.closed:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                # No cookie jar: one action must not see another target's cookies. No
                # trust_env: it would read ~/.netrc on every request and clash with an
                # Authorization header (proxy support belongs in Settings).
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=None),
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
        return self._session

    def _default_credential(self) -> Any:
        from worker.connections import default_credential

        self._owns_credential = True
        return default_credential(self._settings)

    async def _bearer(self, scope: str, shown_scope: str, redact: Redactor) -> str:
        cached = self._tokens.get(scope)
        if cached is not None and cached.expires_on - _TOKEN_REFRESH_MARGIN_S > time.time():
            return cached.token
        if self._credential is None:
            self._credential = self._default_credential()
        try:
            token = await self._credential.get_token(scope)
        except TimeoutError:
            raise
        except Exception as exc:
            detail = redact.excerpt(str(exc), _SHOWN_BODY_CHARS)
            raise ActionError(
                f"webhook: could not get an Entra token for scope {shown_scope}: "
                f"{type(exc).__name__}: {detail}",
                retryable=True,
            ) from None
        self._tokens[scope] = token
        return token.token

    async def execute(self, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
        shown = mask(planned.params)
        redact = Redactor(shown, params)
        method = _method(params)
        url = utf8_safe(str(params["url"]).strip())  # a lone surrogate: U+FFFD, quoted
        shown_url = utf8_safe(str(shown["url"]))
        what = f"webhook {method} {shown_url}"
        timeout_s = params.get("timeout")
        timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
        if not timeout_s > 0:
            raise ActionError(f"{what}: 'timeout' must be longer than 0", retryable=False)

        body, content_type = request_body(planned.event, params)
        headers: CIMultiDict[str] = CIMultiDict()
        headers["User-Agent"] = USER_AGENT
        headers["aeg-event-type"] = "Notification"
        if content_type is not None:
            headers["Content-Type"] = content_type
        for name, value in (params.get("headers") or {}).items():
            headers[str(name)] = _header_value(value)
        headers["Idempotency-Key"] = planned.key
        secret = params.get("hmac_secret")
        if secret:
            digest = hmac.new(text_bytes(secret), body or b"", hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"

        if not tracing.enabled():
            return await self._send(
                method, url, body, headers, timeout_s, params, shown, redact, None
            )
        # One HTTP client span per attempt; the request carries its `traceparent`.
        span = tracing.start_http_client(method, shown_url, headers)
        try:
            return await self._send(
                method, url, body, headers, timeout_s, params, shown, redact, span
            )
        except BaseException as exc:
            tracing.http_failed(span, exc)
            raise
        finally:
            span.end()

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: CIMultiDict[str],
        timeout_s: float,
        params: Any,
        shown: Any,
        redact: Redactor,
        span: Any,
    ) -> dict[str, Any]:
        shown_url = utf8_safe(str(shown["url"]))
        what = f"webhook {method} {shown_url}"
        phase = "sending the request"
        try:
            async with asyncio.timeout(timeout_s):
                auth = params.get("auth")
                if auth:
                    phase = "getting an Entra token"
                    token = await self._bearer(auth["scope"], shown["auth"]["scope"], redact)
                    redact.add(token)
                    headers["Authorization"] = f"Bearer {token}"
                    phase = "sending the request"
                async with self._http().request(
                    method, url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    if span is not None:
                        tracing.http_status(span, status)
                    phase = "reading the response"
                    if 200 <= status < 300:
                        await _read_at_most(response, _DRAIN_LIMIT_BYTES)
                        return {"status": status, "method": method, "url": shown_url}
                    excerpt = _excerpt(await _read_at_most(response, 4096), redact)
                    retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
                    location = response.headers.get("Location")
        except ActionError:
            raise
        except TimeoutError:
            raise ActionError(
                f"{what} timed out after {timeout_s:g}s ({phase})", retryable=True
            ) from None
        except _BAD_URL_ERRORS:
            raise ActionError(
                f"{what}: not a valid http(s) URL after rendering", retryable=False
            ) from None
        except aiohttp.ClientError as exc:
            detail = redact(f"{type(exc).__name__}: {exc}")
            if _is_cert_error(exc):
                raise ActionError(
                    f"{what}: the server's TLS certificate was not accepted ({detail})",
                    retryable=False,
                ) from None
            raise ActionError(f"{what} failed ({phase}): {detail}", retryable=True) from None
        except ValueError as exc:  # e.g. a header value with a line break
            raise ActionError(
                f"{what}: the request could not be built: {redact(str(exc))}", retryable=False
            ) from None

        retryable = status >= 500 or status in _RETRYABLE_STATUSES
        message = f"{what} answered {status} {response.reason or ''}".rstrip()
        if 300 <= status < 400:
            message += " (redirects are not followed; point 'url' at the final address"
            message += f": {location})" if location else ")"
        if excerpt:
            message += f": {excerpt}"
        raise ActionError(redact(message), retryable=retryable, retry_after_s=retry_after_s)
