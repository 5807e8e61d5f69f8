"""Action parameter templates: sandboxed Jinja2 plus `${NAME}` secret references.

Templates are compiled once, when the rules file loads, so a syntax error is a located load
error and not a per-event surprise. A missing value at render time (`{{ data.nope }}`) is a
`RenderError` for that one event and action, never a crash (StrictUndefined).

`${NAME}` is swapped for an opaque marker before Jinja sees the string, so a secret's braces
are never parsed as a template and the rendered result still says *where* a secret goes
without containing it: `mask()` turns markers into `***` (plans, logs, dead-letters) and
`reveal()` substitutes the environment's values only at the moment an action is sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
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

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class RenderError(Exception):
    """A template could not be rendered for one event (a per-event dead-letter)."""


@dataclass(frozen=True, slots=True)
class Template:
    """One string parameter: plain text, a Jinja template, or either with secret markers."""

    source: str
    _compiled: Any = None  # jinja2.Template, or None for plain text

    @classmethod
    def compile(cls, source: str) -> Template:
        """Raises jinja2.TemplateSyntaxError (with `lineno`) for a bad template."""
        marked = SECRET_RE.sub(lambda m: f"{_MARK_OPEN}{m.group(1)}{_MARK_CLOSE}", source)
        if not any(marker in marked for marker in _JINJA_MARKERS):
            return cls(marked)
        return cls(marked, _ENV.from_string(marked))

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(_MARK_RE.findall(self.source))

    def render(self, context: Mapping[str, Any]) -> str:
        if self._compiled is None:
            return self.source
        try:
            return self._compiled.render(context)
        except TemplateError as exc:
            raise RenderError(_plain(exc)) from exc
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
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
    if isinstance(params, Template):
        return params.render(context)
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
    if isinstance(value, Mapping):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_strings(v, fn) for v in value]
    return value


def mask(rendered: Any) -> Any:
    """Replace every secret marker by `***`: the only form that leaves the process."""
    return _map_strings(rendered, lambda s: _MARK_RE.sub(MASK, s) if _MARK_OPEN in s else s)


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


def template_context(event: Event, rule: str) -> dict[str, Any]:
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
