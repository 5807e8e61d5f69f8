"""Action parameter templates: sandboxed Jinja2 plus `${NAME}` secret references.

Templates are compiled once, when the rules file loads, so a syntax error is a located load
error and not a per-event surprise. A missing value at render time (`{{ data.nope }}`) is a
`RenderError` for that one event and action, never a crash (StrictUndefined).

`${NAME}` is swapped for an opaque marker before Jinja sees the string, so a secret's braces
are never parsed as a template and the rendered result still says *where* a secret goes
without containing it: `mask()` turns markers into `***` (plans, logs, dead-letters) and
`reveal()` substitutes the environment's values only at the moment an action is sent.

Most templates are text with `{{ data.key }}`-style references. Those also get a *direct*
form, compiled at load: the references are looked up in the event itself, as Jinja would
look them up, without building Jinja's context (which wraps the whole event data) or
running its generated code. Anything else — filters, tests, blocks, a reference that is
missing or reaches a non-object — renders through Jinja, which stays the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from worker.events import MISSING, Event, lookup_key

__all__ = [
    "MASK",
    "SECRET_RE",
    "JSONObject",
    "Redactor",
    "RenderError",
    "Template",
    "compile_params",
    "mask",
    "render_params",
    "reveal",
    "secret_names",
    "template_context",
]

MASK = "***"
SECRET_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"
_MARK_RE = re.compile(f"{_MARK_OPEN}([A-Za-z_][A-Za-z0-9_]*){_MARK_CLOSE}")
_JINJA_MARKERS = ("{{", "{%", "{#")
# `{{ name.name… }}`, the one kind of expression the direct form renders.
_REFERENCE_RE = re.compile(
    r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[ \t]*\}\}"
)
_ROOTS = frozenset({"event", "data", "rule"})

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class RenderError(Exception):
    """A template could not be rendered for one event (a per-event dead-letter)."""


# A direct template: literal text (str) and references (a tuple of names), in order.
_Parts = tuple[str | tuple[str, ...], ...]


def _direct_form(source: str) -> _Parts | None:
    """The parts of a template made only of text and `{{ a.b.c }}` references, else None.

    The text between references must hold nothing Jinja would read differently: no other
    tag, comment or expression, and no carriage return (Jinja normalises newlines).
    """
    parts: list[str | tuple[str, ...]] = []
    position = 0
    for match in _REFERENCE_RE.finditer(source):
        parts.append(source[position : match.start()])
        path = tuple(match.group(1).split("."))
        if path[0] not in _ROOTS:
            return None
        parts.append(path)
        position = match.end()
    parts.append(source[position:])
    for index, part in enumerate(parts):
        if not isinstance(part, str):
            continue
        if "\r" in part or any(marker in part for marker in _JINJA_MARKERS):
            return None
        if part.endswith("{") and index + 1 < len(parts):  # "{{{ x }}": Jinja starts earlier
            return None
    return tuple(part for part in parts if part != "")


@dataclass(frozen=True, slots=True)
class Template:
    """One string parameter: plain text, a Jinja template, or either with secret markers."""

    source: str
    _compiled: Any = None  # jinja2.Template, or None for plain text
    _direct: _Parts | None = None  # see _direct_form

    @classmethod
    def compile(cls, source: str) -> Template:
        """Raises jinja2.TemplateSyntaxError (with `lineno`) for a bad template."""
        marked = SECRET_RE.sub(lambda m: f"{_MARK_OPEN}{m.group(1)}{_MARK_CLOSE}", source)
        if not any(marker in marked for marker in _JINJA_MARKERS):
            return cls(marked)
        return cls(marked, _ENV.from_string(marked), _direct_form(marked))

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(_MARK_RE.findall(self.source))

    def render(self, context: Mapping[str, Any]) -> str:
        if self._compiled is None:
            return self.source
        try:
            if type(context) is TemplateContext:
                if self._direct is not None:
                    text = context.render_direct(self._direct)
                    if text is not None:
                        return text
                context = context.as_dict()
            return self._compiled.render(context)
        except TemplateError as exc:
            raise RenderError(_plain(exc)) from exc
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            raise RenderError(f"{type(exc).__name__}: {exc}") from exc


def _plain(exc: TemplateError) -> str:
    message = str(exc.message or exc)
    return message.replace("'worker.templates.JSONObject object'", "the object")


def compile_params(value: Any) -> Any:
    """Compile every string in a parameter tree (maps, lists, scalars) into a Template."""
    if isinstance(value, str):
        return Template.compile(value)
    if isinstance(value, Mapping):
        return {str(k): compile_params(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compile_params(v) for v in value]
    return value


def render_params(params: Any, context: Mapping[str, Any]) -> Any:
    """Render a compiled parameter tree; secrets stay as markers (see mask/reveal)."""
    kind = type(params)
    if kind is Template:
        return params.render(context)
    if kind is str or params is None or kind is bool or kind is int:
        return params
    if isinstance(params, Mapping):
        rendered = {}
        for key, value in params.items():
            try:
                rendered[key] = render_params(value, context)
            except RenderError as exc:
                raise RenderError(f"{key}: {exc}") from exc
        return rendered
    if isinstance(params, list):
        return [render_params(v, context) for v in params]
    return params


def _walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, Template):
        yield value.source
    elif isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _walk_strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk_strings(v)


def secret_names(params: Any) -> tuple[str, ...]:
    """Every `${NAME}` a parameter tree refers to, in order, without repeats."""
    names: dict[str, None] = {}
    for text in _walk_strings(params):
        for name in _MARK_RE.findall(text):
            names[name] = None
    return tuple(names)


def _map_strings(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if type(value) is dict:
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if value is None or type(value) is bool or type(value) is int:
        return value
    if isinstance(value, Mapping):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_strings(v, fn) for v in value]
    return value


def _mask_text(text: str) -> str:
    return _MARK_RE.sub(MASK, text) if _MARK_OPEN in text else text


def mask(rendered: Any) -> Any:
    """Replace every secret marker by `***`: the only form that leaves the process."""
    return _map_strings(rendered, _mask_text)


def reveal(rendered: Any, environ: Mapping[str, str]) -> Any:
    """Substitute secret values, at the moment an action is sent and nowhere else."""

    def substitute(text: str) -> str:
        if _MARK_OPEN not in text:
            return text

        def value_of(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise RenderError(f"secret ${{{name}}} is not set in the environment")
            return environ[name]

        return _MARK_RE.sub(value_of, text)

    return _map_strings(rendered, substitute)


class JSONObject(dict):
    """A JSON object whose keys are found exactly first, then case-insensitively (DESIGN §2)."""

    __slots__ = ()

    def __missing__(self, key: str) -> Any:
        value = lookup_key(self, key) if isinstance(key, str) else MISSING
        if value is MISSING:
            raise KeyError(key)
        return value


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return JSONObject((k, _wrap(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _full_context(event: Event, rule: str) -> dict[str, Any]:
    """The names a template sees: `event`, `data` (= event.data) and `rule`."""
    data = _wrap(event.data)
    return {
        "event": JSONObject(
            id=event.id,
            topic=event.topic,
            subject=event.subject,
            type=event.type,
            time=event.time,
            data=data,
            data_version=event.data_version,
            schema=str(event.schema),
            extensions=_wrap(dict(event.extensions)),
            partition_id=event.partition_id,
            offset=event.offset,
            sequence_number=event.sequence_number,
            enqueued_time=event.enqueued_time,
            delivery_count=event.delivery_count,
            late=event.late,
        ),
        "data": data,
        "rule": rule,
    }


class Redactor:
    """Hides the secret values of one action's parameters in text shown to people.

    `masked` is `mask(planned.params)` (secrets as `***`), `revealed` the same tree with the
    values substituted. Each revealed string that differs from its masked form is replaced
    by that form, and the substituted values themselves (recovered by aligning the two, plus
    their URL-quoted forms) are replaced by `***` wherever else they appear: in a response
    body that echoes a header, or in a library's exception text that quotes the URL.
    """

    def __init__(self, masked: Any, revealed: Any, extra: Iterable[str] = ()) -> None:
        whole: dict[str, str] = {}
        values = {v for v in extra if v}
        for shown, real in _string_pairs(masked, revealed):
            if shown != real:
                whole[real] = shown
                values.update(_secret_parts(shown, real))
        values |= {quote(v, safe="") for v in values} | {quote_plus(v) for v in values}
        self._whole = sorted(whole.items(), key=lambda item: -len(item[0]))
        self._values = sorted(values, key=len, reverse=True)

    def add(self, value: str | None) -> None:
        if value and value not in self._values:
            self._values.append(value)
            self._values.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for real, shown in self._whole:
            text = text.replace(real, shown)
        for value in self._values:
            text = text.replace(value, MASK)
        return text


def _string_pairs(masked: Any, revealed: Any) -> Iterator[tuple[str, str]]:
    if isinstance(masked, str) and isinstance(revealed, str):
        yield masked, revealed
    elif isinstance(masked, Mapping) and isinstance(revealed, Mapping):
        for key, value in masked.items():
            if key in revealed:
                yield from _string_pairs(value, revealed[key])
    elif isinstance(masked, list | tuple) and isinstance(revealed, list | tuple):
        for shown, real in zip(masked, revealed, strict=False):
            yield from _string_pairs(shown, real)


def _secret_parts(shown: str, real: str) -> set[str]:
    pieces = shown.split(MASK)
    if len(pieces) > 1:
        pattern = "(.*?)".join(re.escape(piece) for piece in pieces)
        match = re.fullmatch(pattern, real, re.DOTALL)
        if match:
            return {group for group in match.groups() if group}
    return {real}


# What `event.<name>` reads, for the direct form: the same values `_full_context` puts in the
# `event` object (which is a JSONObject: names are matched exactly, then case-insensitively).
_EVENT_FIELDS: dict[str, Callable[[Event], Any]] = {
    "id": lambda e: e.id,
    "topic": lambda e: e.topic,
    "subject": lambda e: e.subject,
    "type": lambda e: e.type,
    "time": lambda e: e.time,
    "data": lambda e: e.data,
    "data_version": lambda e: e.data_version,
    "schema": lambda e: str(e.schema),
    "extensions": lambda e: dict(e.extensions),
    "partition_id": lambda e: e.partition_id,
    "offset": lambda e: e.offset,
    "sequence_number": lambda e: e.sequence_number,
    "enqueued_time": lambda e: e.enqueued_time,
    "delivery_count": lambda e: e.delivery_count,
    "late": lambda e: e.late,
}
# Names Jinja's getattr finds on the object itself before trying a key: `{{ data.items }}`
# is dict.items, so such a name renders through Jinja.
_OBJECT_ATTRIBUTES = frozenset(dir(JSONObject))


class TemplateContext(Mapping[str, Any]):
    """The template context of one event and rule, built only as far as a template needs.

    Templates in the direct form read the event without the context being built; any other
    template, or a caller using this as a mapping, gets the full context (built once).
    """

    __slots__ = ("_full", "event", "rule")

    def __init__(self, event: Event, rule: str) -> None:
        self.event = event
        self.rule = rule
        self._full: dict[str, Any] | None = None

    def for_rule(self, rule: str) -> TemplateContext:
        """The same event's context for another rule (the wrapped event is shared)."""
        other = TemplateContext(self.event, rule)
        if self._full is not None:
            other._full = {**self._full, "rule": rule}
        return other

    def as_dict(self) -> dict[str, Any]:
        if self._full is None:
            self._full = _full_context(self.event, self.rule)
        return self._full

    def __getitem__(self, name: str) -> Any:
        return self.as_dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def render_direct(self, parts: _Parts) -> str | None:
        """Render a direct-form template, or None where only Jinja can say what happens."""
        out: list[str] = []
        event = self.event
        for part in parts:
            if type(part) is str:
                out.append(part)
                continue
            root = part[0]
            rest = 1
            if root == "rule":
                value: Any = self.rule
            elif root == "data":
                value = event.data
            else:  # event
                if len(part) == 1:
                    return None
                field = _EVENT_FIELDS.get(part[1]) or _EVENT_FIELDS.get(part[1].casefold())
                if field is None:
                    return None
                value = field(event)
                rest = 2
            for name in part[rest:]:
                if not isinstance(value, dict) or name in _OBJECT_ATTRIBUTES:
                    return None
                found = value.get(name, MISSING)
                if found is MISSING:
                    found = lookup_key(value, name)
                    if found is MISSING:
                        return None
                value = found
            out.append(value if type(value) is str else str(value))
        return "".join(out)


def template_context(event: Event, rule: str) -> TemplateContext:
    """The names a template sees: `event`, `data` (= event.data) and `rule` (lazily)."""
    return TemplateContext(event, rule)
