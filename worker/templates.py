"""Action parameter templates: sandboxed Jinja2 plus `${NAME}` secret references.

Templates are compiled once, when the rules file loads, so a syntax error is a located load
error and not a per-event surprise. A missing value at render time (`{{ data.nope }}`) is a
`RenderError` for that one event and action, never a crash (StrictUndefined).

Secrets are structural, never in-band (DESIGN §3, §7). A template that names `${NAME}`
renders to a `SecretText`: literal parts and `SecretRef`s, in order. `mask()` turns it into
text with `***` (plans, logs, dead letters) and `reveal()` into text with the environment's
values, only at the moment an action is sent. Plain strings are never searched for
references: event data that looks like a reference or a marker stays that text.

Inside Jinja the position of a reference has to survive rendering, so it travels as a
marker: private-use characters around a per-process random nonce and the name. Event data
cannot forge one: every value an expression outputs has its private-use marker characters
escaped (`finalize`) before the output is split back into parts, the nonce is never
written anywhere, and only the names the template itself declares are accepted.

Most templates are text with `{{ data.key }}`-style references. Those also get a *direct*
form, compiled at load: the references are looked up in the event itself, as Jinja would
look them up, without building Jinja's context (which wraps the whole event data) or
running its generated code. Anything else — filters, tests, blocks, a reference that is
missing or reaches a non-object — renders through Jinja, which stays the reference.
"""

from __future__ import annotations

import base64
import json
import re
import secrets as _random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from worker.events import MISSING, Event, lookup_key

__all__ = [
    "MASK",
    "SECRET_RE",
    "JSONObject",
    "Redactor",
    "RenderError",
    "SecretRef",
    "SecretText",
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
# Markers inside Jinja sources only (see the module docstring): open, nonce + name, close;
# the escape character protects expression output.
_MARK_OPEN, _MARK_CLOSE, _MARK_ESCAPE = "\ue000", "\ue001", "\ue002"
_RESERVED = (_MARK_OPEN, _MARK_CLOSE, _MARK_ESCAPE)
_NONCE = _random.token_hex(12)
_MARK_RE = re.compile(f"{_MARK_OPEN}{_NONCE}([A-Za-z_][A-Za-z0-9_]*){_MARK_CLOSE}")
# One pass over rendered output: an escaped character, or a marker.
_SPLIT_RE = re.compile(
    f"{_MARK_ESCAPE}([012])|{_MARK_OPEN}{_NONCE}([A-Za-z_][A-Za-z0-9_]*){_MARK_CLOSE}"
)
_UNESCAPE = {"0": _MARK_OPEN, "1": _MARK_CLOSE, "2": _MARK_ESCAPE}
_ESCAPE_TABLE = str.maketrans(
    {
        _MARK_OPEN: _MARK_ESCAPE + "0",
        _MARK_CLOSE: _MARK_ESCAPE + "1",
        _MARK_ESCAPE: _MARK_ESCAPE + "2",
    }
)
_JINJA_MARKERS = ("{{", "{%", "{#")
# `{{ name.name… }}`, the one kind of expression the direct form renders.
_REFERENCE_RE = re.compile(
    r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[ \t]*\}\}"
)
_ROOTS = frozenset({"event", "data", "rule"})


def _escape_markers(value: Any) -> Any:
    """Jinja's `finalize` in templates with secrets: expression output can hold no marker."""
    if type(value) is not str:
        if value is None or type(value) in (int, bool, float):
            return value
        value = str(value)  # what Jinja would output (Markup stays Markup: a str subclass)
    if value.isascii():
        return value
    return value.translate(_ESCAPE_TABLE)


def _environment(*, html: bool, secrets: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=html,  # HTML bodies: every value an expression outputs is escaped (§7)
        keep_trailing_newline=True,
        finalize=_escape_markers if secrets else None,
    )


_ENV = _environment(html=False, secrets=False)
_HTML_ENV = _environment(html=True, secrets=False)
_SECRET_ENV = _environment(html=False, secrets=True)
_SECRET_HTML_ENV = _environment(html=True, secrets=True)


class RenderError(Exception):
    """A template could not be rendered for one event (a per-event dead-letter)."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A `${NAME}` the rules file wrote: replaced by the value only when an action is sent."""

    name: str


@dataclass(frozen=True, slots=True)
class SecretText:
    """Rendered text with secrets in it: literal parts and `SecretRef`s, in order.

    It is not a `str` on purpose: code that would send or print it has to choose `masked()`
    or `revealed()`, and `str()` / `repr()` give the masked form.
    """

    parts: tuple[str | SecretRef, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.name for p in self.parts if type(p) is SecretRef))

    def masked(self) -> str:
        return "".join(MASK if type(p) is SecretRef else p for p in self.parts)

    def revealed(self, environ: Mapping[str, str]) -> str:
        out: list[str] = []
        for part in self.parts:
            if type(part) is SecretRef:
                value = environ.get(part.name)
                if not value:
                    state = "empty" if value == "" else "not set"
                    raise RenderError(f"secret ${{{part.name}}} is {state} in the environment")
                out.append(value)
            else:
                out.append(part)
        return "".join(out)

    def __str__(self) -> str:
        return self.masked()

    def __repr__(self) -> str:
        return f"SecretText({self.masked()!r})"


def _split_source(source: str) -> SecretText:
    """A template without Jinja: its text and references, split once at load."""
    parts: list[str | SecretRef] = []
    position = 0
    for match in SECRET_RE.finditer(source):
        if match.start() > position:
            parts.append(source[position : match.start()])
        parts.append(SecretRef(match.group(1)))
        position = match.end()
    if position < len(source):
        parts.append(source[position:])
    return SecretText(tuple(parts))


def _split_rendered(text: str, declared: frozenset[str]) -> SecretText:
    """Rendered output of a template with secrets, back into parts (see module docstring)."""
    parts: list[str | SecretRef] = []
    literal: list[str] = []
    position = 0
    for match in _SPLIT_RE.finditer(text):
        _check_literal(text[position : match.start()])
        literal.append(text[position : match.start()])
        position = match.end()
        escaped, name = match.groups()
        if escaped is not None:
            literal.append(_UNESCAPE[escaped])
            continue
        if name not in declared:  # e.g. a filter block rewrote the name: never guess
            raise RenderError(f"secret reference ${{{name}}} is not one the template declares")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(SecretRef(name))
    _check_literal(text[position:])
    literal.append(text[position:])
    tail = "".join(literal)
    if tail:
        parts.append(tail)
    return SecretText(tuple(parts))


def _check_literal(text: str) -> None:
    """Outside markers and escapes no marker character can remain: expression output is
    escaped, so one here means the template itself rewrote a marker. Never guess then."""
    if any(char in text for char in _RESERVED):
        raise RenderError("the template altered a ${NAME} secret reference; nothing was sent")


# Tags whose output does not pass through `finalize` as written (captured, called or
# filtered text): a template that names a secret may not use them (DESIGN §7).
_CAPTURING_TAGS = frozenset({"set", "macro", "call", "filter", "block"})


def _check_marker_positions(environment: SandboxedEnvironment, marked: str) -> None:
    """References must sit in the template's text, not inside `{{ }}`/`{% %}`: only there
    does the rendered output carry them as written (a reference inside an expression would
    become data, e.g. a string constant, and be escaped like data). And no tag may capture
    or filter text: its arguments and its output would bypass the escaping of data."""
    tokens = list(environment.lex(marked))
    for index, (lineno, kind, value) in enumerate(tokens):
        if kind != "data" and _MARK_OPEN in value:
            raise TemplateSyntaxError(
                "a ${NAME} secret reference must be outside {{ }}, {% %} and {# #}", lineno
            )
        if kind == "block_begin":
            name = next((v for _, k, v in tokens[index + 1 :] if k != "whitespace"), "")
            if name in _CAPTURING_TAGS:
                raise TemplateSyntaxError(
                    f"a template that names a ${{NAME}} secret may not use {{% {name} %}}: "
                    "put the secret in a parameter of its own",
                    lineno,
                )


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
    """One string parameter: plain text or a Jinja template, either with `${NAME}` secrets.

    Rendering gives a `str`, or a `SecretText` when the source names a secret.
    """

    source: str  # as written in the rules file
    secrets: tuple[str, ...] = ()  # the `${NAME}`s it names, in order, without repeats
    _compiled: Any = None  # jinja2.Template, or None for text without Jinja
    _direct: _Parts | None = None  # see _direct_form
    _text: str | SecretText | None = None  # the rendering of a template without Jinja

    @classmethod
    def compile(cls, source: str, *, html: bool = False) -> Template:
        """Raises jinja2.TemplateSyntaxError (with `lineno`) for a bad template.

        `html`: the template produces HTML, so every value it outputs is escaped.
        """
        names = tuple(dict.fromkeys(SECRET_RE.findall(source)))
        jinja = any(marker in source for marker in _JINJA_MARKERS)
        if not jinja:
            return cls(source, names, _text=_split_source(source) if names else source)
        if not names:
            if html:
                return cls(source, names, _HTML_ENV.from_string(source))
            return cls(source, names, _ENV.from_string(source), _direct_form(source))
        for lineno, line in enumerate(source.splitlines(), 1):
            if any(char in line for char in _RESERVED):
                raise TemplateSyntaxError(
                    "characters U+E000-U+E002 are reserved in templates that name a secret",
                    lineno,
                )
        marked = SECRET_RE.sub(lambda m: f"{_MARK_OPEN}{_NONCE}{m.group(1)}{_MARK_CLOSE}", source)
        environment = _SECRET_HTML_ENV if html else _SECRET_ENV
        try:
            _check_marker_positions(environment, marked)
            compiled = environment.from_string(marked)
        except TemplateSyntaxError as exc:
            # The message may quote the source: show it as written, never the nonce.
            message = _MARK_RE.sub(r"${\1}", exc.message or "")
            raise TemplateSyntaxError(message, exc.lineno) from None
        return cls(source, names, compiled)

    def render(self, context: Mapping[str, Any]) -> str | SecretText:
        if self._compiled is None:
            assert self._text is not None
            return self._text
        try:
            if type(context) is TemplateContext:
                if self._direct is not None:
                    text = context.render_direct(self._direct)
                    if text is not None:
                        return text
                context = context.as_dict()
            text = self._compiled.render(context)
        except TemplateError as exc:
            raise RenderError(_plain(exc)) from exc
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            raise RenderError(f"{type(exc).__name__}: {exc}") from exc
        if self.secrets:
            return _split_rendered(text, frozenset(self.secrets))
        return text


def _plain(exc: TemplateError) -> str:
    message = str(exc.message or exc)
    return message.replace("'worker.templates.JSONObject object'", "the object")


def compile_params(value: Any, *, html: bool = False) -> Any:
    """Compile every string in a parameter tree (maps, lists, scalars) into a Template.

    `html`: the tree renders HTML (an email's `html` body), so its values are escaped.
    """
    if isinstance(value, str):
        return Template.compile(value, html=html)
    if isinstance(value, Mapping):
        return {str(k): compile_params(v, html=html) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compile_params(v, html=html) for v in value]
    return value


def render_params(params: Any, context: Mapping[str, Any]) -> Any:
    """Render a compiled parameter tree; secrets stay `SecretText` (see mask/reveal)."""
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


def _walk_templates(value: Any) -> Iterator[Template]:
    if isinstance(value, Template):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _walk_templates(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk_templates(v)


def secret_names(params: Any) -> tuple[str, ...]:
    """Every `${NAME}` a compiled parameter tree refers to, in order, without repeats."""
    names: dict[str, None] = {}
    for template in _walk_templates(params):
        names.update(dict.fromkeys(template.secrets))
    return tuple(names)


def _map_secrets(value: Any, fn: Callable[[SecretText], str]) -> Any:
    """The rendered tree with each `SecretText` replaced by `fn(it)`; strings untouched."""
    kind = type(value)
    if kind is SecretText:
        return fn(value)
    if kind is str or value is None or kind is bool or kind is int or kind is float:
        return value
    if isinstance(value, Mapping):
        return {k: _map_secrets(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_secrets(v, fn) for v in value]
    return value


def mask(rendered: Any) -> Any:
    """Every secret as `***`: the only form that leaves the process (plans, logs, errors)."""
    return _map_secrets(rendered, SecretText.masked)


def reveal(rendered: Any, environ: Mapping[str, str]) -> Any:
    """Substitute secret values, at the moment an action is sent and nowhere else.

    Only `SecretText` parts that the rules file wrote are looked up; no string is searched,
    so nothing an event brings can name a variable (DESIGN §7). A missing or empty value
    is a `RenderError` (the action dead-letters), never an empty credential.
    """
    return _map_secrets(rendered, lambda text: text.revealed(environ))


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
    by that form, and the substituted values themselves (recovered by aligning the two) are
    replaced by `***` wherever else they appear, raw or encoded as a peer or a library may
    echo them (see `_encoded_forms`): in a response body that echoes a header, or in a
    library's exception text that quotes the URL. So is any piece of one of them at least
    `FRAGMENT` characters long (a peer that echoes a secret shortened, `abcdefgh…`).
    """

    FRAGMENT = 8
    # A response cut off mid-secret ends with a prefix of it: that long a prefix is masked.
    _MIN_PARTIAL = 4

    def __init__(self, masked: Any, revealed: Any, extra: Iterable[str] = ()) -> None:
        whole: dict[str, str] = {}
        values = {v for v in extra if v}
        for shown, real in _string_pairs(masked, revealed):
            if shown != real:
                whole[real] = shown
                values.update(_secret_parts(shown, real))
        self._secrets = {v for v in values if v}
        self._whole = sorted(whole.items(), key=lambda item: -len(item[0]))
        # The forms to search for, worked out on first use: most sends succeed.
        self._values: list[str] = []
        self._pieces: set[str] = set()
        self._indexed = False

    def _index(self) -> None:
        if self._indexed:
            return
        self._values = _search_order(self._secrets)
        size = self.FRAGMENT
        self._pieces = {v[i : i + size] for v in self._values for i in range(len(v) - size + 1)}
        self._indexed = True

    def add(self, value: str | None) -> None:
        """One more value to hide (a token fetched while sending)."""
        if value and value not in self._secrets:
            self._secrets.add(value)
            self._indexed = False

    def __call__(self, text: str) -> str:
        self._index()
        for real, shown in self._whole:
            text = text.replace(real, shown)
        for value in self._values:
            text = text.replace(value, MASK)
        return self._mask_pieces(text) if self._pieces else text

    def _mask_pieces(self, text: str) -> str:
        """Each run of text made of FRAGMENT-long pieces of a secret's forms becomes `***`."""
        size, pieces = self.FRAGMENT, self._pieces
        runs: list[tuple[int, int]] = []
        for start in range(len(text) - size + 1):
            if text[start : start + size] in pieces:
                if runs and start <= runs[-1][1]:
                    runs[-1] = (runs[-1][0], start + size)
                else:
                    runs.append((start, start + size))
        if not runs:
            return text
        out: list[str] = []
        position = 0
        for start, end in runs:
            out.append(text[position:start])
            out.append(MASK)
            position = end
        out.append(text[position:])
        return "".join(out)

    def excerpt(self, text: str, limit: int) -> str:
        """At most `limit` characters of `text` on one line, redacted *before* it is cut
        (DESIGN §7: a cut first would leave a secret's head where no redaction sees it).

        Redacted as received (a secret with a line break in it) and again once whitespace
        is folded; a text that ends with the head of a secret (a response read only in
        part) has that head masked too.
        """
        text = self(" ".join(self(text).split()))  # (indexed by the first call)
        head = 0  # the longest head of any form the text ends with
        for value in self._values:
            for size in range(min(len(value) - 1, len(text)), max(head, self._MIN_PARTIAL - 1), -1):
                if text.endswith(value[:size]):
                    head = size
                    break
        if head:
            text = text[:-head] + MASK
        return text if len(text) <= limit else text[:limit] + "..."


# Encoded forms shorter than this are not searched for: the base64 core of a 1-3 byte value
# would mask unrelated text (the value itself always is).
_MIN_FORM = 4
# What URL encoders leave unquoted: nothing, a path's "/", RFC 3986's sub-delimiters.
_URL_SAFE = ("", "/", "/:@!$&'()*+,;=")


def _search_order(values: Iterable[str]) -> list[str]:
    """Every form of every value, longest first (so a longer form is masked whole)."""
    return sorted(_encoded_forms(values), key=lambda form: (-len(form), form))


def _encoded_forms(values: Iterable[str]) -> set[str]:
    """A secret as a peer or a library may echo it: raw, whitespace-folded, URL-quoted
    (three ways, and `+` for spaces), JSON-escaped (ASCII or not, `\\/` or not),
    HTML-escaped, and base64 (standard and URL-safe) at each of the three byte alignments,
    so it is found inside a longer base64 text too (`user:secret` Basic credentials,
    SMTP AUTH PLAIN)."""
    import html  # only when a redactor is built: an action failed or is being sent

    forms: set[str] = set()
    for value in values:
        raw = value.encode("utf-8", "surrogatepass")
        escaped = json.dumps(value)[1:-1]
        unescaped = json.dumps(value, ensure_ascii=False)[1:-1]
        found = {
            value,
            " ".join(value.split()),
            quote_plus(value),
            escaped,
            escaped.replace("/", "\\/"),
            unescaped,
            unescaped.replace("/", "\\/"),
            html.escape(value),
            html.escape(value, quote=False),
            *(quote(value, safe=safe) for safe in _URL_SAFE),
        }
        for shift in range(3):
            encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii")
            # Only the characters made of the value's own bits: not those sharing bits
            # with the bytes before it (the shift) or after it (the end).
            core = encoded[-(-shift * 8 // 6) : (shift + len(raw)) * 8 // 6]
            found.update((core, core.replace("+", "-").replace("/", "_")))
        forms.update(form for form in found if form == value or len(form) >= _MIN_FORM)
    forms.discard("")
    return forms


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
