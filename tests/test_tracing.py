"""Tracing (worker.tracing): opt-in through OTEL_*, one span tree per event, propagated out.

The span tree is checked through `run` itself: the real consumer (in-process, so that an
in-memory exporter sees every span) reads two events from dev-hub — one carrying a
`traceparent` application property, one without — and runs a webhook, an Event Hubs
forward and a webhook the peer refuses. The webhook peer and the forward hub show what
left the worker; the exporter shows how the spans hang together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import TOPIC, DevHubProcess, eg, free_port
from tests.workers import Env
from worker import tracing
from worker.errors import ConfigError

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SECRETS = {
    "TRACING_TEST_TOKEN": "tok-6f1d2c9a-secret",
    "TRACING_TEST_HMAC": "hmac-93ab1e-secret",
}

_provider: Any = None
_exporter: Any = None


def _in_memory() -> tuple[Any, Any]:
    """One provider per test process: OpenTelemetry lets the global provider be set once."""
    global _provider, _exporter
    if _provider is None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        _exporter = InMemorySpanExporter()
        _provider = TracerProvider()
        _provider.add_span_processor(SimpleSpanProcessor(_exporter))
    return _provider, _exporter


@pytest.fixture
def spans() -> Any:
    """Tracing on, into an in-memory exporter, for the test's duration."""
    provider, exporter = _in_memory()
    exporter.clear()
    tracing.install(provider)
    yield exporter
    tracing.uninstall()


@pytest.fixture
def spans_later() -> Any:
    """The same, switched on by the test itself (`tracing.install(_in_memory()[0])`)."""
    _, exporter = _in_memory()
    exporter.clear()
    yield exporter
    tracing.uninstall()


# --- switching on ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),  # naming the service alone asks for nothing
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ],
)
def test_wanted_reads_the_standard_variables(environ: dict[str, str], on: bool) -> None:
    """Tracing is opt-in: only an exporter or an OTLP endpoint turns it on."""
    assert tracing.wanted(environ) is on


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_an_exporter_we_cannot_provide_fails_at_start(environ: dict[str, str], variable: str):
    """A misconfigured exporter names its variable instead of silently tracing nowhere."""
    with pytest.raises(ConfigError, match=variable):
        tracing.configure(environ)
    assert not tracing.enabled()


PROBE = """
import json, os, sys
from worker import logs, tracing
logs.configure("info", "json")  # logs to stderr, as the CLI does
on = tracing.configure(os.environ)
from azure.core.settings import settings
from opentelemetry import trace
provider = trace.get_tracer_provider()
resource = getattr(provider, "resource", None)
if on:
    with trace.get_tracer("probe").start_as_current_span("probe-span"):
        pass
    tracing.shutdown()
print(json.dumps({
    "on": on,
    "provider": type(provider).__name__,
    "sdk_imported": "opentelemetry.sdk" in sys.modules,
    "azure_tracing": settings.tracing_implementation() is not None,
    "service_name": resource.attributes.get("service.name") if resource else None,
    "partition_traces": tracing.message_traces("0", eventhub="h", consumer_group="g") is not None,
}))
"""


def _probe(**otel: str) -> tuple[dict[str, Any], str]:
    ours = ("OTEL_", "AZURE_TRACING_ENABLED", "AZURE_SDK_TRACING_IMPLEMENTATION")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    environ.update(otel)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout), result.stderr


def test_without_otel_variables_nothing_is_set_up() -> None:
    """No OTEL_* variable: no provider, no SDK import, Azure SDK tracing untouched."""
    facts, _ = _probe()
    assert facts == {
        "on": False,
        "provider": "ProxyTracerProvider",
        "sdk_imported": False,
        "azure_tracing": False,
        "service_name": None,
        "partition_traces": False,
    }


def test_console_exporter_traces_under_the_default_service_name() -> None:
    """OTEL_TRACES_EXPORTER=console: an SDK provider named aml-event-worker, spans on
    stderr (stdout stays the command's own), and the Azure SDKs' plugin switched on."""
    facts, stderr = _probe(OTEL_TRACES_EXPORTER="console")
    assert facts["on"] and facts["provider"] == "TracerProvider"
    assert facts["service_name"] == "aml-event-worker"
    assert facts["azure_tracing"] and facts["partition_traces"]
    assert '"name": "probe-span"' in stderr

    facts, _ = _probe(OTEL_TRACES_EXPORTER="none", OTEL_EXPORTER_OTLP_ENDPOINT="http://x")
    assert not facts["on"] and facts["provider"] == "ProxyTracerProvider"


def test_service_name_from_the_environment_wins() -> None:
    """OTEL_SERVICE_NAME overrides the default; AZURE_TRACING_ENABLED=false (the Azure
    SDKs' own switch) keeps their spans out while ours stay."""
    facts, _ = _probe(
        OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="worker-eu", AZURE_TRACING_ENABLED="false"
    )
    assert facts["on"] and facts["service_name"] == "worker-eu"
    assert not facts["azure_tracing"]


# --- units -----------------------------------------------------------------------------------


def _pipeline(tmp_path: Any, grace: str) -> Any:
    from worker.pipeline import PartitionPipeline
    from worker.rules import load_rules

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: {grace}}}\nrules:\n"
        "  - name: all\n    actions: [{type: log, message: x}]\n"
    )
    return PartitionPipeline(load_rules(rules))


def test_held_events_keep_their_message_context(tmp_path, spans) -> None:
    """Two events of one message, released by the reorder buffer later: both spans are
    children of the message's context, start when the message arrived, and the per-message
    record is gone once both have their span."""
    from worker.events import Origin

    pipeline = _pipeline(tmp_path, "1h")
    traces = tracing.message_traces("3", eventhub="hub", consumer_group="cg")
    assert traces is not None
    body = json.dumps(
        [eg("a", time="2024-06-10T10:00:01Z"), eg("b", time="2024-06-10T10:00:00Z")]
    ).encode()
    step = pipeline.feed(body, Origin(partition_id="3", sequence_number=7))
    assert step.decisions == []  # both held
    traces.received({b"Diagnostic-Id": TRACEPARENT.encode()}, 7, step.decoded)
    arrived = time.time_ns()
    released = pipeline.finish().decisions
    assert [d.event.id for d in released] == ["b", "a"]
    for decision in released:
        tracing.end_event(traces.start_event(decision), [])
    assert len(traces) == 0
    finished = spans.get_finished_spans()
    assert [s.attributes["messaging.message.id"] for s in finished] == ["b", "a"]
    for span in finished:
        assert _hex(span.context.trace_id, 32) == TRACE_ID
        assert span.parent is not None and _hex(span.parent.span_id, 16) == PARENT_ID
        assert span.start_time <= arrived
        assert span.attributes["messaging.destination.partition.id"] == "3"
        assert span.attributes["aml_worker.sequence_number"] == 7


@pytest.mark.parametrize(
    "properties",
    [
        None,
        {},
        {b"traceparent": b"00-not-a-trace-context"},
        {b"traceparent": b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
    ],
)
def test_a_message_without_a_valid_context_starts_a_trace(tmp_path, spans, properties) -> None:
    from worker.events import Origin

    pipeline = _pipeline(tmp_path, "0s")
    traces = tracing.message_traces("0", eventhub=None, consumer_group="$Default")
    assert traces is not None
    step = pipeline.feed(json.dumps(eg("x")).encode(), Origin(partition_id="0", sequence_number=1))
    traces.received(properties, 1, step.decoded)
    (decision,) = step.decisions
    tracing.end_event(traces.start_event(decision), ["done"])
    (span,) = spans.get_finished_spans()
    assert span.parent is None and span.context.is_valid
    assert "messaging.destination.name" not in span.attributes


def test_message_properties_carry_the_current_span(spans) -> None:
    """What a forwarded message gets when the Event Hubs SDK does not stamp it itself."""
    from opentelemetry import trace

    provider, _ = _in_memory()
    with provider.get_tracer("t").start_as_current_span("action") as span:
        properties = tracing.message_properties()
    context = span.get_span_context()
    assert properties["traceparent"] == properties["Diagnostic-Id"]
    version, trace_id, span_id, _flags = properties["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        _hex(context.trace_id, 32),
        _hex(context.span_id, 16),
    )
    assert tracing.message_properties() == {}  # no current span: nothing to propagate
    assert not trace.get_current_span().get_span_context().is_valid


# --- one event through run --------------------------------------------------------------------


class Peer:
    """The webhook target, on loopback in the test's own loop: /hook accepts, /reject
    refuses (400: dead-lettered at once)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        return web.Response(status=202 if request.path == "/hook" else 400)

    async def __aenter__(self) -> Peer:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        app.router.add_post("/reject", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def _forwarded(connection_string: str, expected: int) -> list[Any]:
    from azure.eventhub.aio import EventHubConsumerClient

    received: list[Any] = []
    enough = asyncio.Event()

    async def on_event(_context: Any, event: Any) -> None:
        received.append(event)
        if len(received) >= expected:
            enough.set()

    client = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group="$Default"
    )
    async with client:
        task = asyncio.ensure_future(client.receive(on_event, starting_position="-1"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), 30)
        await client.close()
        task.cancel()
    return received


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def test_run_gives_each_event_a_span_tree_and_propagates_it(
    tmp_path, azurite, spans_later, monkeypatch
) -> None:
    """Event with a traceparent: its span continues that trace; one child span per action
    (in rule order, results and errors recorded); the webhook request carries the HTTP
    span's traceparent and the forwarded message the SDK's message span, both in the same
    trace. The event without one starts its own trace. No secret reaches a span."""
    from opentelemetry.trace import SpanKind, StatusCode

    from worker.actions.eventhub import EventHubExecutor
    from worker.actions.webhook import WebhookExecutor
    from worker.consumer import run_worker
    from worker.positions import parse_positions
    from worker.rules import load_rules
    from worker.sending import send_file
    from worker.settings import Settings

    spans = spans_later
    hub = DevHubProcess(tmp_path / "hub", hubs=("aml-events:1", "forward:1"))
    hub.start()
    try:
        env = Env(tmp_path, hub, azurite)
        forward = hub.hub_connection_string("forward")
        for name, value in {**SECRETS, "TRACING_TEST_FORWARD": forward}.items():
            monkeypatch.setenv(name, value)
        traced, untraced = tmp_path / "traced.jsonl", tmp_path / "untraced.jsonl"
        traced.write_text(json.dumps(eg("e1", subject="experiments/a/runs/1")) + "\n")
        untraced.write_text(json.dumps(eg("e2", subject="experiments/b/runs/2")) + "\n")
        # Sent before tracing is on, so the SDK does not stamp a context of its own.
        for path, properties in ((traced, {"traceparent": TRACEPARENT}), (untraced, None)):
            await send_file(
                Settings(),
                path,
                connection_string=env.env["AML_WORKER_EVENTHUB_CONNECTION_STRING"],
                eventhub_name=None,
                properties=properties,
            )
        tracing.install(_in_memory()[0])

        async with Peer() as peer:
            rules = tmp_path / "rules.yaml"
            rules.write_text(
                f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
                "  - name: notify\n    actions:\n"
                f"      - {{type: webhook, id: hook, url: 'http://127.0.0.1:{peer.port}/hook',"
                " headers: {Authorization: 'Bearer ${TRACING_TEST_TOKEN}'},"
                " hmac_secret: '${TRACING_TEST_HMAC}'}\n"
                "      - {type: eventhub, id: fwd, connection_string: '${TRACING_TEST_FORWARD}'}\n"
                f"      - {{type: webhook, id: refused, url: 'http://127.0.0.1:{peer.port}/reject',"
                " retry: {attempts: 1}}\n"
            )
            settings = Settings(
                eventhub_connection_string=env.env["AML_WORKER_EVENTHUB_CONNECTION_STRING"],
                checkpoint_store_connection_string=azurite.connection_string,
                checkpoint_container=env.container,
                create_container=True,
                load_balancing_interval=0.5,
                ownership_expiry=3,
                checkpoint_interval=0.3,
                shutdown_timeout=5,
                http_port="off",
            )
            executors = {
                "webhook": WebhookExecutor(settings),
                "eventhub": EventHubExecutor(settings),
            }
            stats = await run_worker(
                settings,
                load_rules(rules),
                parse_positions("earliest"),
                stop_when_idle=1.5,
                executors=executors,
            )
            assert stats.actions == 4 and stats.action_failures == 2
            messages = await _forwarded(forward, 2)
    finally:
        hub.stop()

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    events = {
        s.attributes["messaging.message.id"]: s
        for s in finished
        if s.name == "aml_worker.process_event"
    }
    assert sorted(events) == ["e1", "e2"]
    e1, e2 = events["e1"], events["e2"]

    # The event span continues the trace that came on the message.
    assert _hex(e1.context.trace_id, 32) == TRACE_ID
    assert e1.parent is not None and e1.parent.is_remote
    assert _hex(e1.parent.span_id, 16) == PARENT_ID
    assert e1.kind is SpanKind.CONSUMER
    assert e1.attributes["messaging.system"] == "eventhubs"
    assert e1.attributes["messaging.destination.name"] == "aml-events"
    assert e1.attributes["messaging.consumer.group.name"] == "$Default"
    assert e1.attributes["messaging.destination.partition.id"] == "0"
    assert e1.attributes["cloudevents.event_subject"] == "experiments/a/runs/1"
    assert e1.attributes["aml_worker.outcome"] == "matched"
    assert tuple(e1.attributes["aml_worker.rules"]) == ("notify",)
    assert e1.attributes["aml_worker.actions.dead_lettered"] == 1
    assert e1.status.status_code is StatusCode.ERROR
    # ... and links the Event Hubs SDK's own batch span (azure-core's plugin is on).
    linked = [by_id.get(link.context.span_id) for link in e1.links]
    assert [s.name for s in linked if s is not None] == ["EventHubs.process"]
    # Without a context on the message the event starts a trace of its own.
    assert e2.parent is None and e2.context.trace_id != e1.context.trace_id

    for event, span in events.items():
        actions = sorted(
            (
                s
                for s in finished
                if s.parent is not None and s.parent.span_id == span.context.span_id
            ),
            key=lambda s: s.start_time,
        )
        assert [s.name for s in actions] == [
            "aml_worker.action webhook",
            "aml_worker.action eventhub",
            "aml_worker.action webhook",
        ], event
        hook, fwd, refused = actions
        assert [s.attributes["aml_worker.action.id"] for s in actions] == ["hook", "fwd", "refused"]
        assert [s.attributes["aml_worker.action.result"] for s in actions] == [
            "done", "done", "dead_lettered",
        ]  # fmt: skip
        assert all(s.context.trace_id == span.context.trace_id for s in actions)
        assert span.start_time <= hook.start_time and refused.end_time <= span.end_time
        assert refused.status.status_code is StatusCode.ERROR
        assert refused.attributes["error.type"] == "permanent_error"
        assert refused.attributes["aml_worker.action.attempts"] == 1
        assert "400" in (refused.status.description or "")

        # The webhook request carries the traceparent of its HTTP client span.
        (http,) = [s for s in finished if s.parent and s.parent.span_id == hook.context.span_id]
        assert http.kind is SpanKind.CLIENT and http.name == "POST"
        assert http.attributes["http.response.status_code"] == 202
        assert http.attributes["url.full"] == f"http://127.0.0.1:{peer.port}/hook"
        (request,) = [
            headers
            for path, headers, body in peer.requests
            if path == "/hook" and json.loads(body)[0]["id"] == event
        ]
        _, trace_id, parent_id, _ = request["traceparent"].split("-")
        assert trace_id == _hex(span.context.trace_id, 32)
        assert parent_id == _hex(http.context.span_id, 16)

        # The forwarded message carries the context of the SDK's message span, a child of
        # the action span: the downstream consumer continues the same trace.
        (message,) = [m for m in messages if json.loads(m.body_as_str())["id"] == event]
        stamped = message.properties[b"traceparent"].decode()
        assert message.properties[b"Diagnostic-Id"].decode() == stamped
        _, trace_id, parent_id, _ = stamped.split("-")
        assert trace_id == _hex(span.context.trace_id, 32)
        sdk_span = by_id[int(parent_id, 16)]
        assert sdk_span.name == "EventHubs.message"
        assert sdk_span.parent is not None and sdk_span.parent.span_id == fwd.context.span_id

    # Secrets (revealed only when the action is sent) appear in no span.
    dumped = "".join(s.to_json() for s in finished)
    for secret in [*SECRETS.values(), forward.split("SharedAccessKey=")[1].split(";")[0]]:
        assert secret not in dumped
