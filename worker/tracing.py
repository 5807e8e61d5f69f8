"""OpenTelemetry tracing, opt-in through the standard `OTEL_*` environment variables.

Off unless the environment asks for it (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_TRACES_EXPORTER`, and `OTEL_SDK_DISABLED` not
`true`). Off means off: the OpenTelemetry SDK is not even imported, no provider is installed,
and the hot path pays a few `is None` tests per event and per action — the pipeline targets
100k events/s. Like `logs`, this module holds the process's tracing state; only `cli`
(and tests, through `install`) set it.

What is traced (names and attributes are listed in the README, "Tracing"):

- `aml_worker.process_event` (CONSUMER): one span per decoded event, from the moment its
  message was received until its last action finished — held-back time included. Its parent
  is the trace context that came *on the message* (`traceparent`, or `Diagnostic-Id`, the
  Azure SDKs' older name for the same W3C value), so one trace runs from the producer
  through this worker to the webhook's target. The current messaging conventions prefer a
  link for "process" spans; we parent, as the Azure SDK's own processor does for a single
  message, because each of these spans handles exactly one message and an end-to-end trace
  is what an operator looks for. The Event Hubs SDK's batch "EventHubs.process" span (when
  azure-core tracing is on) is *linked*. An event without a trace context starts its own
  trace, so every event can be sampled on its own.
- `aml_worker.action <type>` (INTERNAL): one per action execution, child of its event's
  span — the span object travels with the job through reordering and the delivery queue.
  Retries are span events; a dead-lettered action has ERROR status.
- `<METHOD>` (CLIENT): one per webhook attempt, child of the action span; the request carries
  its `traceparent`. The Azure SDKs trace their own calls through azure-core's OpenTelemetry
  plugin, switched on here: forwarded Event Hubs messages get `traceparent` and
  `Diagnostic-Id` from the SDK's own "EventHubs.message" span (a child of the action span),
  ARM and blob requests get their HTTP spans and headers.

Secrets never reach a span: parameters are not recorded, URLs are the masked form without
query string, and error texts are the already-redacted ones the logs get.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

import worker

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, Tracer

    from worker.pipeline import Decision
    from worker.plan import PlannedAction

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "DIAGNOSTIC_ID",
    "EVENT_SPAN",
    "TRACEPARENT",
    "MessageTraces",
    "action_done",
    "configure",
    "enabled",
    "end_event",
    "install",
    "message_properties",
    "message_traces",
    "shutdown",
    "start_action",
    "start_http_client",
    "uninstall",
    "wanted",
]

log = structlog.get_logger(__name__)

DEFAULT_SERVICE_NAME = "aml-event-worker"
SCOPE = "aml_event_worker"  # the instrumentation scope of our own spans
EVENT_SPAN = "aml_worker.process_event"
ACTION_SPAN = "aml_worker.action"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
DIAGNOSTIC_ID = "Diagnostic-Id"
MAX_TRACKED_MESSAGES = 100_000  # per partition; held events beyond it just start a new trace

_FALSE = frozenset({"false", "0", "no", "off"})

_tracer: Tracer | None = None
_provider: Any = None  # the provider `configure` built (flushed at exit)
_azure_was: Any = None  # azure-core's tracing implementation before `install`


# --- switching on -------------------------------------------------------------------------


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces (an explicit, opt-in reading)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporter_names(environ)
    if exporters:
        return exporters != ["none"]
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "")
    return [name.strip().lower() for name in raw.split(",") if name.strip()]


def configure(environ: Mapping[str, str]) -> bool:
    """Set up the SDK as the environment says; False (and nothing imported) when it is off.

    The exporters and the batch processor read their own standard variables
    (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`), the provider reads `OTEL_TRACES_SAMPLER*`,
    the resource `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`. An exporter or protocol
    this worker cannot provide is a start-up error naming the variable.
    """
    from worker.errors import ConfigError

    if not wanted(environ):
        return False
    names = _exporter_names(environ) or ["otlp"]
    for name in names:
        if name not in ("otlp", "console", "none"):
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; use otlp, console or none"
            )
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable, "").strip()
        if protocol:
            break
    if "otlp" in names and protocol not in ("", "http/protobuf"):
        raise ConfigError(
            f"{variable}={protocol!r} is not supported: this worker ships the OTLP/HTTP "
            "exporter; use http/protobuf (collector port 4318)"
        )

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    defaults: dict[str, str] = {}
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        defaults["service.name"] = DEFAULT_SERVICE_NAME
    if "service.version" not in resource.attributes:
        defaults["service.version"] = worker.__version__
    provider = TracerProvider(resource=resource.merge(Resource(defaults)))
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":  # stderr: stdout carries only a command's own output
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    global _provider
    _provider = provider
    # The Azure SDKs' own switch, honoured: off keeps their (chatty: load balancing,
    # checkpoints) spans out; we then stamp forwarded messages ourselves.
    azure_sdk = environ.get("AZURE_TRACING_ENABLED", "").strip().lower() not in _FALSE
    install(provider, azure_sdk=azure_sdk)
    log.info(
        "tracing_enabled",
        exporters=names,
        azure_sdk_spans=azure_sdk,
        service_name=provider.resource.attributes.get("service.name"),
    )
    return True


def install(provider: Any, *, azure_sdk: bool = True) -> None:
    """Trace through `provider` (also made the global one, which the Azure SDKs use).

    `configure` calls this; tests call it with an in-memory exporter's provider.
    `azure_sdk` switches on azure-core's OpenTelemetry plugin, so the Event Hubs, Blob,
    ARM and Azure ML clients emit their own spans and propagate the context.
    """
    from opentelemetry import trace

    global _tracer, _azure_was
    current = trace.get_tracer_provider()
    if current is not provider:
        trace.set_tracer_provider(provider)  # refused (with a warning) when one is set
    _tracer = provider.get_tracer(SCOPE, worker.__version__)
    if azure_sdk:
        from azure.core.settings import settings

        _azure_was = settings.tracing_implementation()
        settings.tracing_implementation = "opentelemetry"
        if settings.tracing_implementation() is None:  # plugin missing: ours still work
            log.warning(
                "azure_sdk_tracing_unavailable",
                message="azure-core-tracing-opentelemetry is not installed: the Azure SDKs "
                "emit no spans; forwarded messages are stamped by the worker itself",
            )


def uninstall() -> None:
    """Switch tracing off again (tests); the global provider, once set, stays."""
    global _tracer, _azure_was
    _tracer = None
    from azure.core.settings import settings

    if _azure_was is None:
        settings.tracing_implementation.unset_value()
    else:
        settings.tracing_implementation = _azure_was
    _azure_was = None


def shutdown() -> None:
    """Flush and stop the provider `configure` built (a no-op when tracing is off)."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def azure_sdk_traced() -> bool:
    """Whether the Azure SDKs propagate the context themselves (azure-core's plugin is on)."""
    from azure.core.settings import settings

    return settings.tracing_implementation() is not None


# --- events ---------------------------------------------------------------------------------


def _property(properties: Mapping[Any, Any], name: str) -> str | None:
    """An application property as text; the SDK hands keys (and values) over as bytes."""
    value = properties.get(name.encode(), properties.get(name))
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if isinstance(value, str) and value else None


def creation_context(properties: Mapping[Any, Any] | None) -> Context | None:
    """The trace context a message carries: `traceparent` (W3C), else `Diagnostic-Id`."""
    if not properties:
        return None
    traceparent = _property(properties, TRACEPARENT) or _property(properties, DIAGNOSTIC_ID)
    if traceparent is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {TRACEPARENT: traceparent}
    tracestate = _property(properties, TRACESTATE)
    if tracestate:
        carrier[TRACESTATE] = tracestate
    context = TraceContextTextMapPropagator().extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None  # malformed: the event starts its own trace
    return context


class MessageTraces:
    """One partition's received messages, until each of their events has a span.

    An event may be decided long after its message arrived (reordering), so what its span
    needs from the message — the trace context it carried, the batch span that received it,
    the time — is kept here by sequence number, counted down per decoded event.
    """

    def __init__(self, partition_id: str, *, eventhub: str | None, consumer_group: str) -> None:
        self.partition_id = partition_id
        self.eventhub = eventhub
        self.consumer_group = consumer_group
        self._messages: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def received(
        self, properties: Mapping[Any, Any] | None, sequence_number: int, decoded: int
    ) -> None:
        """Note one message (call after feeding it, before dispatching its decisions)."""
        if decoded <= 0:
            return
        from opentelemetry import trace
        from opentelemetry.trace import Link

        batch = trace.get_current_span().get_span_context()
        links = (Link(batch, {"aml_worker.link": "eventhubs_batch"}),) if batch.is_valid else ()
        if len(self._messages) >= MAX_TRACKED_MESSAGES:
            del self._messages[next(iter(self._messages))]
        self._messages[sequence_number] = [
            creation_context(properties),
            links,
            time.time_ns(),
            decoded,
        ]

    def start_event(self, decision: Decision) -> Span:
        """The event's span, started at its message's arrival; `end_event` closes it."""
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind

        assert _tracer is not None
        event = decision.event
        parent: Context | None = None
        links: tuple[Link, ...] = ()
        start: int | None = None
        entry = self._messages.get(event.origin.sequence_number)  # type: ignore[arg-type]
        if entry is not None:
            parent, links, start = entry[0], entry[1], entry[2]
            entry[3] -= 1
            if entry[3] <= 0:
                del self._messages[event.origin.sequence_number]  # type: ignore[arg-type]
        attributes: dict[str, Any] = {
            "messaging.system": "eventhubs",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": self.consumer_group,
            "messaging.destination.partition.id": self.partition_id,
            "messaging.message.id": event.id,
            "cloudevents.event_id": event.id,
            "cloudevents.event_source": event.topic,
            "cloudevents.event_type": event.type,
            "aml_worker.outcome": decision.outcome.value,
            "aml_worker.actions": len(decision.actions),
        }
        if self.eventhub:
            attributes["messaging.destination.name"] = self.eventhub
        if event.subject:
            attributes["cloudevents.event_subject"] = event.subject
        origin = event.origin
        if origin.sequence_number is not None:
            attributes["aml_worker.sequence_number"] = origin.sequence_number
        if origin.enqueued_time is not None:
            attributes["messaging.eventhubs.message.enqueued_time"] = int(
                origin.enqueued_time.timestamp()
            )
        rules = list(dict.fromkeys([a.rule for a in decision.actions]))
        rules += [f.rule for f in decision.failures if f.rule not in rules]
        if rules:
            attributes["aml_worker.rules"] = rules
        if decision.throttled:
            attributes["aml_worker.throttled"] = decision.throttled
        if event.late:
            attributes["aml_worker.late"] = True
        span = _tracer.start_span(
            EVENT_SPAN,
            context=parent if parent is not None else Context(),  # else: a trace of its own
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            start_time=start,
        )
        for failure in decision.failures:
            span.add_event(
                "render_error",
                {
                    "aml_worker.rule": failure.rule,
                    "aml_worker.action.index": failure.action.index,
                    "aml_worker.idempotency_key": failure.key,
                },
            )
        if decision.failures:
            _error(span, f"{len(decision.failures)} action(s) could not be rendered")
        return span


def message_traces(
    partition_id: str, *, eventhub: str | None, consumer_group: str
) -> MessageTraces | None:
    """A partition's `MessageTraces` when tracing is on; None (nothing to do) when off."""
    if _tracer is None:
        return None
    return MessageTraces(partition_id, eventhub=eventhub, consumer_group=consumer_group)


def end_event(span: Span, results: list[str]) -> None:
    """Close an event's span once its job ended (`results`: one per action run)."""
    failed = results.count("dead_lettered")
    if failed:
        span.set_attribute("aml_worker.actions.dead_lettered", failed)
        _error(span, f"{failed} of {len(results)} action(s) dead-lettered")
    span.end()


# --- actions --------------------------------------------------------------------------------


def start_action(planned: PlannedAction, parent: Span | None) -> Span:
    """An action execution's span, child of its event's span (or of the current context)."""
    from opentelemetry import trace

    assert _tracer is not None
    action = planned.action
    attributes: dict[str, Any] = {
        "aml_worker.rule": planned.rule,
        "aml_worker.action.type": action.type,
        "aml_worker.action.index": action.index,
        "aml_worker.idempotency_key": planned.key,
        "cloudevents.event_id": planned.event.id,
    }
    if action.id:
        attributes["aml_worker.action.id"] = action.id
    context = trace.set_span_in_context(parent) if parent is not None else None
    return _tracer.start_span(
        f"{ACTION_SPAN} {action.type}", context=context, attributes=attributes
    )


def action_retry(span: Span, attempt: int, error: str) -> None:
    span.add_event("retry", {"aml_worker.attempt": attempt, "aml_worker.error": error})


def action_done(
    span: Span, result: str, attempts: int, error: str = "", error_type: str = ""
) -> None:
    """Close an action span: `result` is done, skipped or dead_lettered."""
    span.set_attribute("aml_worker.action.result", result)
    span.set_attribute("aml_worker.action.attempts", attempts)
    if result == "dead_lettered":
        span.set_attribute("error.type", error_type or "dead_lettered")
        _error(span, error)
    span.end()


def activated(span: Span) -> Any:
    """Make `span` the current one (so SDK calls made under it become its children)."""
    from opentelemetry import trace

    return trace.use_span(span, record_exception=False, set_status_on_exception=False)


# --- outgoing requests --------------------------------------------------------------------


def start_http_client(method: str, shown_url: str, headers: MutableMapping[str, str]) -> Span:
    """An HTTP client span under the current one; its `traceparent` goes into `headers`.

    `shown_url` is the masked URL; its query string is dropped too (it may carry a key that
    was not written as a `${SECRET}`).
    """
    from opentelemetry import trace
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    parts = urlsplit(shown_url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.full": f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}",
    }
    try:
        if parts.hostname:
            attributes["server.address"] = parts.hostname
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        if port:
            attributes["server.port"] = port
    except ValueError:  # a port that is not a number: the request will fail and say so
        pass
    span = _tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
    inject(headers, context=trace.set_span_in_context(span))
    return span


def message_properties() -> dict[str, str]:
    """`traceparent` and `Diagnostic-Id` (and `tracestate`) of the current span, for a
    message the SDK does not stamp itself."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    if TRACEPARENT in carrier:
        carrier[DIAGNOSTIC_ID] = carrier[TRACEPARENT]
    return carrier


def http_status(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        span.set_attribute("error.type", str(status))
        _error(span, "")


def http_failed(span: Span, exc: BaseException) -> None:
    """Record a failed request: `exc` is our ActionError (its text is already redacted);
    the type is that of the error it was translated from."""
    import asyncio

    if isinstance(exc, asyncio.CancelledError):
        span.set_attribute("error.type", "cancelled")
        return
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    if "error.type" not in attributes:
        cause = exc.__cause__ or exc.__context__ or exc
        span.set_attribute("error.type", type(cause).__qualname__)
    _error(span, str(exc))


def _error(span: Span, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description or None))
