"""The webhook action against a real aiohttp server on loopback (no mocks of our code)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import hypothesis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from hypothesis import HealthCheck
from hypothesis import strategies as st

import worker
from tests.conftest import TOPIC, ce, eg, free_port
from worker.actions import parse_retry_after
from worker.actions.webhook import WebhookExecutor
from worker.errors import ActionError
from worker.events import decode_body
from worker.plan import PlannedAction, idempotency_key, plan_rule
from worker.rules import parse_rules
from worker.templates import reveal

DATA = {"runId": "run-42", "runStatus": "Failed", "experimentName": "exp"}


def planned_for(
    action: dict[str, Any], event: dict[str, Any], environ: dict[str, str] | None = None
) -> tuple[PlannedAction, Any]:
    """Plan one action exactly as the worker does: rules text, decoded event, plan, reveal."""
    environ = environ or {}
    rules = {"version": 1, "topics": [TOPIC], "rules": [{"name": "hook", "actions": [action]}]}
    ruleset = parse_rules(json.dumps(rules), "rules.yaml", environ=environ)
    events, rejections = decode_body(json.dumps(event).encode())
    assert not rejections and len(events) == 1
    [planned] = plan_rule(ruleset.rules[0], events[0])
    assert isinstance(planned, PlannedAction), planned
    return planned, reveal(planned.params, environ)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    wait: asyncio.Event | None = None  # hold the response until this is set


class Peer:
    """A recording HTTP server: replies are queued per test, 200 by default."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.replies: deque[Reply] = deque()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                {k.lower(): v for k, v in request.headers.items()},
                await request.read(),
            )
        )
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.wait is not None:
            await asyncio.wait_for(reply.wait.wait(), 10)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    def url(self, path: str = "/hook") -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}{path}"  # as written: no quoting of {{ }}

    @property
    def last(self) -> Seen:
        return self.seen[-1]


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    recorder = Peer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    recorder.server = TestServer(app, host="127.0.0.1")
    await recorder.server.start_server()
    yield recorder
    await recorder.server.close()


@pytest.fixture
async def executor() -> AsyncIterator[WebhookExecutor]:
    async with WebhookExecutor(None) as made:
        yield made


async def failure(executor: WebhookExecutor, planned: PlannedAction, params: Any) -> ActionError:
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    return caught.value


# --- bodies -------------------------------------------------------------------------------


async def test_default_body_is_an_eventgrid_array_of_the_event_as_received(peer, executor):
    """No body: a JSON array holding the one event exactly as received, like Event Grid."""
    event = eg(
        "e-1",
        data=DATA,
        time="2024-06-10T10:00:00.1234567Z",
        unknownField={"kept": True},
    )
    planned, params = planned_for({"type": "webhook", "url": peer.url()}, event)

    facts = await executor.execute(planned, params)

    assert facts == {"status": 200, "method": "POST", "url": peer.url()}
    seen = peer.last
    assert seen.method == "POST"
    assert json.loads(seen.body) == [event]
    assert list(json.loads(seen.body)[0]) == list(event)  # key order kept too
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["aeg-event-type"] == "Notification"
    assert seen.headers["user-agent"] == f"aml-event-worker/{worker.__version__}"


async def test_default_body_converts_a_cloudevent_to_eventgrid(peer, executor):
    """A CloudEvent is converted for an Event Grid schema endpoint."""
    event = ce("c-1", data=DATA, time="2024-06-10T10:00:00.5Z", dataversion="3")
    planned, params = planned_for({"type": "webhook", "url": peer.url()}, event)

    await executor.execute(planned, params)

    assert json.loads(peer.last.body) == [
        {
            "id": "c-1",
            "topic": TOPIC,
            "subject": "experiments/x/runs/r1",
            "eventType": "Microsoft.MachineLearningServices.RunStatusChanged",
            "eventTime": "2024-06-10T10:00:00.5Z",
            "data": DATA,
            "dataVersion": "3",
            "metadataVersion": "1",
        }
    ]
    assert peer.last.headers["content-type"] == "application/json"


async def test_cloudevents_schema_converts_an_eventgrid_event(peer, executor):
    """`schema: cloudevents` sends one structured CloudEvent with its media type."""
    event = eg("e-2", data=DATA, time="2024-06-10T10:00:00.1234567Z")
    planned, params = planned_for(
        {"type": "webhook", "url": peer.url(), "schema": "cloudevents"}, event
    )

    await executor.execute(planned, params)

    assert json.loads(peer.last.body) == {
        "specversion": "1.0",
        "id": "e-2",
        "source": TOPIC,
        "subject": "experiments/x/runs/r1",
        "type": "Microsoft.MachineLearningServices.RunStatusChanged",
        "time": "2024-06-10T10:00:00.1234567Z",
        "data": DATA,
        "datacontenttype": "application/json",
    }
    assert peer.last.headers["content-type"] == "application/cloudevents+json; charset=utf-8"


async def test_cloudevents_schema_sends_a_cloudevent_as_received(peer, executor):
    """A CloudEvent to a CloudEvents endpoint goes as it came, extensions included."""
    event = ce("c-2", data=DATA, traceparent="00-abc-def-01", dataversion="3")
    planned, params = planned_for(
        {"type": "webhook", "url": peer.url(), "schema": "cloudevents"}, event
    )

    await executor.execute(planned, params)

    assert json.loads(peer.last.body) == event
    assert peer.last.headers["content-type"] == "application/cloudevents+json; charset=utf-8"


@pytest.mark.parametrize(
    ("template", "expected", "content_type"),
    [
        (
            "Run {{ data.runId }} is {{ data.runStatus }}",
            b"Run run-42 is Failed",
            "text/plain; charset=utf-8",
        ),
        (
            '{"run": "{{ data.runId }}", "rule": "{{ rule }}"}',
            b'{"run": "run-42", "rule": "hook"}',
            "application/json",
        ),
    ],
)
async def test_string_body_is_rendered_and_sent_as_is(
    peer, executor, template, expected, content_type
):
    """A string body is the rendered text, typed JSON only when it parses as JSON."""
    planned, params = planned_for(
        {"type": "webhook", "url": peer.url(), "body": template}, eg(data=DATA)
    )

    await executor.execute(planned, params)

    assert peer.last.body == expected
    assert peer.last.headers["content-type"] == content_type


async def test_dict_body_custom_method_and_headers(peer, executor):
    """A map body is JSON; method and headers are taken from the action, templated."""
    action = {
        "type": "webhook",
        "url": peer.url("/runs/{{ data.runId }}?source=aml"),
        "method": "put",
        "headers": {"X-Run": "{{ data.runId }}", "Content-Type": "application/vnd.run+json"},
        "body": {"run": "{{ data.runId }}", "attempt": 3, "tags": ["{{ data.runStatus }}"]},
    }
    planned, params = planned_for(action, eg(data=DATA))

    await executor.execute(planned, params)

    seen = peer.last
    assert (seen.method, seen.path, seen.query) == ("PUT", "/runs/run-42", {"source": "aml"})
    assert json.loads(seen.body) == {"run": "run-42", "attempt": 3, "tags": ["Failed"]}
    assert seen.headers["x-run"] == "run-42"
    assert seen.headers["content-type"] == "application/vnd.run+json"


async def test_get_sends_no_body(peer, executor):
    """A GET without an explicit body carries no event (a GET body is not portable)."""
    planned, params = planned_for(
        {"type": "webhook", "url": peer.url(), "method": "GET"}, eg(data=DATA)
    )

    await executor.execute(planned, params)

    assert (peer.last.method, peer.last.body) == ("GET", b"")
    assert "content-type" not in peer.last.headers


# --- headers ------------------------------------------------------------------------------


async def test_idempotency_key_is_the_planned_key_on_every_attempt(peer, executor):
    """The same key on a failed attempt and on its retry, and it is DESIGN §5's key."""
    event = eg("e-7", data=DATA)
    planned, params = planned_for({"type": "webhook", "url": peer.url(), "id": "notify"}, event)
    peer.replies.append(Reply(503, "busy"))

    error = await failure(executor, planned, params)
    await executor.execute(planned, params)

    assert error.retryable
    keys = [seen.headers["idempotency-key"] for seen in peer.seen]
    assert keys == [planned.key, planned.key]
    assert planned.key == idempotency_key(TOPIC, "e-7", "hook", "notify")


async def test_hmac_signature_verifies_over_the_exact_body(peer, executor):
    """The server recomputes HMAC-SHA256 over the bytes it received with the shared secret."""
    secret = "s3cr3t-hmac-key"
    planned, params = planned_for(
        {"type": "webhook", "url": peer.url(), "hmac_secret": "${HOOK_SECRET}"},
        eg(data=DATA),
        {"HOOK_SECRET": secret},
    )

    await executor.execute(planned, params)

    seen = peer.last
    expected = hmac.new(secret.encode(), seen.body, hashlib.sha256).hexdigest()
    assert seen.headers["x-aml-worker-signature"] == f"sha256={expected}"
    assert planned.params["hmac_secret"] != secret  # the plan holds only a marker


async def test_azure_function_http_trigger_is_a_webhook_with_a_function_key(executor):
    """An Azure Function HTTP trigger: `x-functions-key` from a secret; a wrong key is final."""
    calls: list[Any] = []

    async def http_trigger(request: web.Request) -> web.Response:
        if request.headers.get("x-functions-key") != "func-key-123":
            return web.Response(status=401)
        calls.append(await request.json())
        return web.json_response({"accepted": True}, status=202)

    app = web.Application()
    app.router.add_post("/api/on_run_failed", http_trigger)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        action = {
            "type": "webhook",
            "url": str(server.make_url("/api/on_run_failed")),
            "headers": {"x-functions-key": "${FUNC_KEY}"},
        }
        event = eg(data=DATA)
        planned, params = planned_for(action, event, {"FUNC_KEY": "func-key-123"})
        facts = await executor.execute(planned, params)

        wrong, wrong_params = planned_for(action, event, {"FUNC_KEY": "not-the-key"})
        error = await failure(executor, wrong, wrong_params)
    finally:
        await server.close()

    assert facts["status"] == 202
    assert calls == [[event]]
    assert not error.retryable
    assert "401" in str(error) and "not-the-key" not in str(error)


# --- outcomes -----------------------------------------------------------------------------


async def test_503_with_retry_after_seconds(peer, executor):
    """503 + `Retry-After: 2` is retryable after 2 s; the message names status and URL."""
    planned, params = planned_for({"type": "webhook", "url": peer.url()}, eg())
    peer.replies.append(Reply(503, "down for maintenance", {"Retry-After": "2"}))

    error = await failure(executor, planned, params)

    assert error.retryable
    assert error.retry_after_s == 2
    assert "503" in str(error) and peer.url() in str(error)
    assert "down for maintenance" in str(error)


async def test_retry_after_as_an_http_date(peer, executor):
    """An HTTP-date Retry-After becomes the seconds until that moment."""
    planned, params = planned_for({"type": "webhook", "url": peer.url()}, eg())
    when = datetime.now(UTC) + timedelta(seconds=30)
    peer.replies.append(Reply(429, "", {"Retry-After": format_datetime(when, usegmt=True)}))

    error = await failure(executor, planned, params)

    assert error.retryable
    assert error.retry_after_s is not None
    assert 27 <= error.retry_after_s <= 30


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(408, True), (429, True), (500, True), (502, True), (400, False), (404, False)],
)
async def test_status_decides_whether_to_retry(peer, executor, status, retryable):
    """408, 429 and 5xx may succeed later; other 4xx will not."""
    planned, params = planned_for({"type": "webhook", "url": peer.url()}, eg())
    peer.replies.append(Reply(status, "x" * 1000))

    error = await failure(executor, planned, params)

    assert error.retryable is retryable
    assert error.retry_after_s is None
    assert str(status) in str(error)
    assert len(str(error)) < 400  # only an excerpt of the response body


async def test_redirect_is_not_followed_and_not_retryable(peer, executor):
    """A 3xx is reported with its Location rather than followed (a POST must not turn GET)."""
    planned, params = planned_for({"type": "webhook", "url": peer.url()}, eg())
    peer.replies.append(Reply(307, "", {"Location": peer.url("/elsewhere")}))

    error = await failure(executor, planned, params)

    assert not error.retryable
    assert "307" in str(error) and "/elsewhere" in str(error)
    assert [seen.path for seen in peer.seen] == ["/hook"]


async def test_connection_refused_is_retryable(executor):
    """Nothing listening: a network error, worth another attempt."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    planned, params = planned_for({"type": "webhook", "url": url}, eg())

    error = await failure(executor, planned, params)

    assert error.retryable
    assert url in str(error)


async def test_timeout_is_retryable_and_bounds_the_request(peer, executor):
    """A server slower than `timeout` costs `timeout`, then a retryable error."""
    planned, params = planned_for({"type": "webhook", "url": peer.url(), "timeout": "0.3s"}, eg())
    release = asyncio.Event()
    peer.replies.append(Reply(200, wait=release))

    started = time.monotonic()
    error = await failure(executor, planned, params)
    elapsed = time.monotonic() - started
    release.set()

    assert error.retryable
    assert "timed out after 0.3s" in str(error)
    assert 0.25 <= elapsed < 2


async def test_one_session_serves_every_request(peer, executor):
    """Requests reuse the executor's session (and its kept-alive connection)."""
    planned, params = planned_for({"type": "webhook", "url": peer.url()}, eg())
    ports = []

    async def remember_port(request: web.Request) -> web.Response:
        ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(body=b"x" * 300_000)  # more than one read: must be drained

    app = web.Application()
    app.router.add_post("/hook", remember_port)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        params = {**params, "url": str(server.make_url("/hook"))}
        for _ in range(3):
            await executor.execute(planned, params)
    finally:
        await server.close()

    assert len(ports) == 3 and len(set(ports)) == 1


async def test_cookies_are_not_carried_between_actions(peer, executor):
    """A target's Set-Cookie does not leak into the next request (no shared state)."""
    url = peer.url().replace("127.0.0.1", "localhost")  # cookie jars ignore IP hosts
    planned, params = planned_for({"type": "webhook", "url": url}, eg())
    peer.replies.append(Reply(200, "ok", {"Set-Cookie": "session=abc; Path=/"}))

    await executor.execute(planned, params)
    await executor.execute(planned, params)

    assert "cookie" not in peer.last.headers


async def test_aclose_closes_the_session_and_refuses_further_work(peer):
    """The session made by `session_factory` lives until aclose(), which closes it."""
    made: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        made.append(aiohttp.ClientSession())
        return made[-1]

    planned, params = planned_for({"type": "webhook", "url": peer.url()}, eg())
    executor = WebhookExecutor(None, session_factory=factory)
    await executor.execute(planned, params)
    await executor.execute(planned, params)
    await executor.aclose()

    assert len(made) == 1 and made[0].closed
    with pytest.raises(RuntimeError, match="closed"):
        await executor.execute(planned, params)


# --- Entra auth ---------------------------------------------------------------------------


class FakeCredential:
    """Stands in for azure-identity: an azure-core async TokenCredential."""

    def __init__(self, token: str = "tok-abc.def", error: Exception | None = None) -> None:
        self.token = token
        self.error = error
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        if self.error is not None:
            raise self.error
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True


async def test_entra_auth_sends_a_bearer_token_for_the_configured_scope(peer):
    """`auth: {type: entra}` asks the credential for the rule's scope, once per token life."""
    credential = FakeCredential()
    action = {
        "type": "webhook",
        "url": peer.url(),
        "auth": {"type": "entra", "scope": "api://aml-hook/.default"},
    }
    planned, params = planned_for(action, eg())

    async with WebhookExecutor(None, credential=credential) as executor:
        await executor.execute(planned, params)
        await executor.execute(planned, params)

    assert [seen.headers["authorization"] for seen in peer.seen] == ["Bearer tok-abc.def"] * 2
    assert credential.scopes == [("api://aml-hook/.default",)]
    assert not credential.closed  # a credential passed in belongs to the caller


async def test_entra_token_failure_is_retryable_and_sends_nothing(peer):
    """No token, no request: a retryable error naming the scope."""
    credential = FakeCredential(error=ClientAuthenticationError("IMDS unreachable"))
    action = {
        "type": "webhook",
        "url": peer.url(),
        "auth": {"type": "entra", "scope": "api://aml-hook/.default"},
    }
    planned, params = planned_for(action, eg())

    async with WebhookExecutor(None, credential=credential) as executor:
        error = await failure(executor, planned, params)

    assert error.retryable
    assert "api://aml-hook/.default" in str(error) and "IMDS unreachable" in str(error)
    assert peer.seen == []


# --- secrets ------------------------------------------------------------------------------


async def test_secrets_never_appear_in_error_messages(peer, executor):
    """A server echoing the request back, and a refused connection, show only `***`."""
    environ = {"FUNC_KEY": "query-secret-9f8e", "TOKEN": "header-secret-7a6b"}
    action = {
        "type": "webhook",
        "url": peer.url("/api/f?code=${FUNC_KEY}"),
        "headers": {"Authorization": "Basic ${TOKEN}"},
    }
    planned, params = planned_for(action, eg(), environ)
    authorization = params["headers"]["Authorization"]
    echo = f"bad request to {params['url']} with Authorization: {authorization}"
    peer.replies.append(Reply(400, echo))
    peer.replies.append(Reply(403, "key query-secret-9f8e revoked; token header-secret-7a6b too"))

    echoed = await failure(executor, planned, params)
    quoted = await failure(executor, planned, params)

    refused_url = f"http://127.0.0.1:{free_port()}/api/f?code=${{FUNC_KEY}}"
    planned2, params2 = planned_for({**action, "url": refused_url}, eg(), environ)
    refused = await failure(executor, planned2, params2)

    assert peer.last.query == {"code": "query-secret-9f8e"}  # the secret was sent...
    for error in (echoed, quoted, refused):
        text = str(error)
        assert "query-secret-9f8e" not in text and "header-secret-7a6b" not in text
        assert "code=***" in text  # ...and shown masked
    assert "Authorization: Basic ***" in str(echoed)
    assert "key *** revoked; token *** too" in str(quoted)


def test_parse_retry_after_rejects_junk():
    """Only delay-seconds and HTTP dates count; a date in the past means now."""
    now = datetime(2024, 6, 10, 10, 0, tzinfo=UTC)
    assert parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after("Mon, 10 Jun 2024 10:00:20 GMT", now) == 20
    assert parse_retry_after("Mon, 10 Jun 2024 09:00:00 GMT", now) == 0
    for junk in (None, "", "soon", "-3", "nan", "inf"):
        assert parse_retry_after(junk, now) is None


# --- untrusted event data and responses (DESIGN §7) -------------------------------------------

TOKEN = "Zq8vL2mN4pR6tY1xC3bV5nM7kJ9hG0fD2sA4qW6eR8tY0uI2oP4a"  # 52 characters, like a real key


def assert_no_fragment(secret: str, text: str, size: int = 8, known: str = "") -> None:
    """No `size`-character piece of `secret` appears in `text` (unless `known` has it too)."""
    pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
    assert not [p for p in pieces if p in text and p not in known], text


async def test_lone_surrogates_are_sent_not_crashed(peer, executor):
    """A lone surrogate from an event in every part of a request: JSON keeps it as its
    `\\uXXXX` escape (it decodes back to the same string); a header, a URL and a text body
    carry U+FFFD. The webhook is delivered instead of raising UnicodeEncodeError."""
    event = eg(subject="experiments/\udc80", data={"x": "a\udc80b", "y": "\ud800"})
    cases = [
        ({}, lambda seen: json.loads(seen.body)[0]["subject"] == "experiments/\udc80"),
        ({"schema": "cloudevents"}, lambda seen: json.loads(seen.body)["data"]["y"] == "\ud800"),
        ({"body": {"x": "{{ data.x }}"}}, lambda seen: json.loads(seen.body) == {"x": "a\udc80b"}),
        ({"body": "{{ data.x }}"}, lambda seen: seen.body == "a\ufffdb".encode()),
        ({"headers": {"X-A": "{{ data.x }}"}}, lambda seen: seen.headers["x-a"] == "a\ufffdb"),
        ({"url": peer.url("/p/{{ data.x }}")}, lambda seen: seen.path == "/p/a\ufffdb"),
        ({"hmac_secret": "k{{ data.y }}"}, lambda seen: "x-aml-worker-signature" in seen.headers),
    ]
    for extra, check in cases:
        planned, params = planned_for({"type": "webhook", "url": peer.url(), **extra}, event)
        facts = await executor.execute(planned, params)
        assert facts is not None and facts["status"] == 200
        assert check(peer.last), (extra, peer.last)


async def test_a_line_break_in_a_header_value_never_adds_a_header(peer, executor):
    """CR/LF (or another control character) that event data brings into a header value
    becomes a space: the request goes out with the one header the rules file wrote."""
    planned, params = planned_for(
        {"type": "webhook", "url": peer.url(), "headers": {"X-Run": "{{ data.runId }}"}},
        eg(data={"runId": "r1\r\nX-Evil: 1\r\n\r\nGET / HTTP/1.1\x00"}),
    )

    await executor.execute(planned, params)

    assert "x-evil" not in peer.last.headers
    assert peer.last.headers["x-run"] == "r1  X-Evil: 1    GET / HTTP/1.1"


def _echoes(secret: str) -> dict[str, str]:
    """How a peer may echo a secret: raw, URL-quoted, JSON-escaped, base64 (alone, and of
    Basic credentials `user:secret`), each after 170 characters of text."""
    raw = secret.encode()
    return {
        "raw": secret,
        "url": quote(secret, safe=""),
        "json": json.dumps(secret)[1:-1],
        "base64": base64.b64encode(raw).decode(),
        "basic": base64.b64encode(b"hook-user:" + raw).decode(),
    }


@pytest.mark.parametrize("form", ["raw", "url", "json", "base64", "basic"])
async def test_an_error_excerpt_is_redacted_before_it_is_cut(peer, executor, form):
    """A 4xx body echoing the token after 170 characters: the excerpt (at most 200
    characters) used to be cut first, leaving 30 of its 52 characters unmasked. Now no
    8-character piece of the token, in any of its forms, is in the error."""
    secret = TOKEN + "/+é"  # characters that every encoding changes
    echoed = _echoes(secret)[form]
    peer.replies.append(Reply(400, "x" * 170 + " " + echoed + " and more"))
    planned, params = planned_for(
        {"type": "webhook", "url": peer.url(), "headers": {"Authorization": "Bearer ${TOKEN}"}},
        eg(),
        {"TOKEN": secret},
    )

    error = await failure(executor, planned, params)

    text = str(error)
    assert "answered 400" in text and "***" in text
    assert_no_fragment(secret, text)
    core = echoed[16:] if form == "basic" else echoed  # the user's part is no secret
    assert_no_fragment(core, text)


@hypothesis.settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@hypothesis.given(
    secret=st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E) | st.sampled_from("éß€漢"),
        min_size=8,
        max_size=64,
    ),
    form=st.sampled_from(["raw", "url", "json", "base64", "basic"]),
    before=st.text(max_size=300),
    after=st.text(max_size=40),
    cut=st.integers(0, 100),
)
async def test_no_error_excerpt_holds_a_piece_of_a_secret(
    peer, executor, secret, form, before, after, cut
):
    """For generated secrets and responses echoing them (raw or encoded) anywhere, possibly
    cut off mid-secret: the error names the status and holds no 8-character piece of the
    secret or of the form it was echoed in."""
    hypothesis.assume("*" not in secret)
    echoed = _echoes(secret)[form]
    body = before + echoed[: max(8, len(echoed) * cut // 100)] + after
    peer.replies.append(Reply(422, body))
    planned, params = planned_for(
        {"type": "webhook", "url": peer.url(), "headers": {"X-Key": "${TOKEN}"}},
        eg(),
        {"TOKEN": secret},
    )

    error = await failure(executor, planned, params)

    text = str(error)
    assert "answered 422" in text
    known = before + " " + after + base64.b64encode(b"hook-user:").decode()
    known += " " + " ".join(before.split()) + " " + " ".join(after.split())
    assert_no_fragment(secret, text, known=known)
    assert_no_fragment(echoed[16:] if form == "basic" else echoed, text, known=known)


def test_an_absurd_retry_after_date_is_no_hint_not_a_crash() -> None:
    from worker.actions import parse_retry_after

    assert parse_retry_after("Mon, 01 Jan 99999999999999999999 00:00:00 GMT") is None
