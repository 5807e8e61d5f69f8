"""The rules file (DESIGN §3): YAML → validated, immutable rules.

Validation walks the YAML node tree (ruamel.yaml keeps every node's line and column) and
collects *every* problem of the file before failing, so a user fixes a file in one pass.
Filters are Event Grid's own ARM `filter` objects, checked against Event Grid's own limits,
so anything that loads here would also be accepted as a subscription filter.
"""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from email.errors import HeaderParseError
from email.headerregistry import Address
from enum import StrEnum
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from worker import filters
from worker.durations import parse_duration
from worker.errors import Problem, RulesError
from worker.events import fold_topic, fold_type
from worker.filters import AdvancedFilter, Filter, Operator
from worker.templates import Template, compile_params, secret_names

__all__ = [
    "ACTION_TYPES",
    "Action",
    "DedupeSettings",
    "Late",
    "OrderingSettings",
    "Retry",
    "Rule",
    "RuleSet",
    "Throttle",
    "ThrottlePer",
    "load_rules",
    "parse_mailbox",
    "parse_rules",
]

MAX_ADVANCED_FILTERS = 25
MAX_FILTER_VALUES = 25
MAX_STRING_VALUE = 512
_RULE_NAME_RE = re.compile(r"[a-z0-9-]+\Z")
_ACTION_ID_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")


class Late(StrEnum):
    DROP = "drop"
    DELIVER = "deliver"


class ThrottlePer(StrEnum):
    OBJECT = "object"
    RULE = "rule"


@dataclass(frozen=True, slots=True)
class OrderingSettings:
    grace_s: float = 5.0
    late: Late = Late.DROP
    max_skew_s: float = 300.0


@dataclass(frozen=True, slots=True)
class DedupeSettings:
    window_s: float = 86_400.0
    max_ids: int = 1_000_000


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 5
    initial_s: float = 1.0
    max_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Throttle:
    per: ThrottlePer
    at_most: int
    every_s: float


@dataclass(frozen=True, slots=True)
class Action:
    """One action of a rule. `params` holds compiled Templates wherever a string was written."""

    type: str
    index: int
    params: Mapping[str, Any]
    id: str | None = None
    retry: Retry = field(default_factory=Retry)
    concurrency: int | None = None
    line: int = 0
    files: Mapping[str, str] = field(default_factory=dict)  # path params, resolved
    # Only strings (templates), integers, booleans and nulls in `params`: a plan line of this
    # action is then encoded by msgspec byte for byte as json.dumps would (floats are not:
    # msgspec writes 1e-07 as 1e-7).
    plain_params: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain_params", _plain_tree(self.params))

    @property
    def key_part(self) -> str:
        """What the idempotency key uses: the stable `id`, else the 0-based index."""
        return self.id if self.id is not None else str(self.index)

    @property
    def secrets(self) -> tuple[str, ...]:
        return secret_names(self.params)

    def __repr__(self) -> str:  # params may hold secret markers: keep them out of reprs
        return f"Action(type={self.type!r}, index={self.index}, id={self.id!r})"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    filter: Filter
    actions: tuple[Action, ...]
    late: Late | None = None  # None: the file's `ordering.late`
    throttle: Throttle | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class RuleSet:
    path: str
    topics: tuple[str, ...]
    rules: tuple[Rule, ...]
    ordering: OrderingSettings = field(default_factory=OrderingSettings)
    dedupe: DedupeSettings = field(default_factory=DedupeSettings)
    warnings: tuple[Problem, ...] = ()
    topic_keys: frozenset[str] = field(init=False)
    known_types: frozenset[str] | None = field(init=False)  # None: every type is known
    _by_type: dict[str, tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False, default=None
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_type", {})
        object.__setattr__(self, "topic_keys", frozenset(t.casefold() for t in self.topics))
        types: set[str] | None = set()
        for rule in self.rules:
            included = rule.filter.included_event_types
            if included is None or any(t.casefold() == "all" for t in included):
                types = None
                break
            types.update(t.casefold() for t in included)
        object.__setattr__(self, "known_types", None if types is None else frozenset(types))

    def allows_topic(self, topic: str) -> bool:
        return fold_topic(topic) in self.topic_keys

    def knows_type(self, event_type: str) -> bool:
        return self.known_types is None or fold_type(event_type) in self.known_types

    def rules_for(self, event_type: str) -> tuple[Rule, ...]:
        """The rules whose includedEventTypes admit `event_type`, in file order.

        Every other rule fails on its first clause anyway; skipping them up front saves
        evaluating the whole rule list for every event (memoised per type, bounded).
        """
        rules = self._by_type.get(event_type)
        if rules is None:
            rules = tuple(r for r in self.rules if r.filter.matches_type(event_type))
            if len(self._by_type) < 1024:
                self._by_type[event_type] = rules
        return rules

    def late_for(self, rule: Rule) -> Late:
        return rule.late or self.ordering.late

    @property
    def action_types(self) -> frozenset[str]:
        return frozenset(a.type for r in self.rules for a in r.actions)


# --- action parameter schemas -------------------------------------------------------------


class Kind(StrEnum):
    TEMPLATE = "a string"
    TEMPLATES = "a list of strings"
    TEMPLATE_MAP = "a map of names to strings"
    VALUE_MAP = "a map of names to values"
    BODY = "a string, map or list"
    DURATION = "a duration"
    LEVEL = "one of debug, info, warning, error"
    METHOD = "an HTTP method"
    SCHEMA = "one of eventgrid, cloudevents"
    PATH = "a path to a file"
    AUTH = "a map {type: entra, scope: ...}"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    params: Mapping[str, Kind]
    required: tuple[str, ...] = ()
    one_of: tuple[tuple[str, ...], ...] = ()  # exactly one of these groups must be given


ACTION_TYPES: Mapping[str, ActionSpec] = {
    "log": ActionSpec({"message": Kind.TEMPLATE, "level": Kind.LEVEL}, required=("message",)),
    "webhook": ActionSpec(
        {
            "url": Kind.TEMPLATE,
            "method": Kind.METHOD,
            "headers": Kind.TEMPLATE_MAP,
            "body": Kind.BODY,
            "schema": Kind.SCHEMA,
            "hmac_secret": Kind.TEMPLATE,
            "auth": Kind.AUTH,
            "timeout": Kind.DURATION,
        },
        required=("url",),
    ),
    "email": ActionSpec(
        {
            "to": Kind.TEMPLATES,
            "cc": Kind.TEMPLATES,
            "subject": Kind.TEMPLATE,
            "body": Kind.TEMPLATE,
            "html": Kind.TEMPLATE,
            "from": Kind.TEMPLATE,
        },
        required=("to", "subject"),
    ),
    "aml_job": ActionSpec(
        {
            "job": Kind.PATH,
            "rerun": Kind.TEMPLATE,
            "workspace": Kind.TEMPLATE,
            "experiment_name": Kind.TEMPLATE,
            "display_name": Kind.TEMPLATE,
            "compute": Kind.TEMPLATE,
            "inputs": Kind.VALUE_MAP,
            "tags": Kind.TEMPLATE_MAP,
        },
        one_of=(("job",), ("rerun",)),
    ),
    "eventhub": ActionSpec(
        {
            "connection_string": Kind.TEMPLATE,
            "namespace": Kind.TEMPLATE,
            "eventhub": Kind.TEMPLATE,
            "body": Kind.BODY,
            "partition_key": Kind.TEMPLATE,
            "properties": Kind.VALUE_MAP,
        },
        one_of=(("connection_string",), ("namespace", "eventhub")),
    ),
    "adf_pipeline": ActionSpec(
        {"factory": Kind.TEMPLATE, "pipeline": Kind.TEMPLATE, "parameters": Kind.VALUE_MAP},
        required=("factory", "pipeline"),
    ),
}
_COMMON_ACTION_KEYS = ("type", "id", "retry", "concurrency")
_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

_TOP_KEYS = ("version", "topics", "ordering", "dedupe", "rules")
_RULE_KEYS = ("name", "filter", "ordering", "throttle", "actions")
_FILTER_KEYS = (
    "includedEventTypes",
    "subjectBeginsWith",
    "subjectEndsWith",
    "isSubjectCaseSensitive",
    "enableAdvancedFilteringOnArrays",
    "advancedFilters",
)
_ADVANCED_KEYS = ("operatorType", "key", "value", "values")


# --- loading ------------------------------------------------------------------------------


def load_rules(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    secrets: str = "require",
    job_roots: Sequence[str | os.PathLike[str]] | None = None,
) -> RuleSet:
    """Load and validate a rules file; raise RulesError with every located problem.

    `secrets`: "require" (run, check-rules: a missing or empty `${NAME}` is an error),
    "warn" (`check-rules --allow-missing-secrets`) or "ignore" (dry runs never need them).
    `job_roots`: folders besides the rules file's own that files an action names (`job:`)
    may be in (`Settings.job_roots`); None reads AML_WORKER_JOB_ROOTS from `environ`.
    The file may be at most MAX_RULES_BYTES, and its YAML aliases may expand to at most
    MAX_EXPANDED_NODES values (DESIGN §7).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_RULES_BYTES:
            raise RulesError([_too_large(str(path), size)])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError([Problem(str(path), 1, 1, "rules file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([Problem(str(path), 1, 1, f"cannot read rules file: {exc}")]) from None
    return parse_rules(
        text,
        str(path),
        base_dir=path.parent,
        environ=environ,
        secrets=secrets,
        job_roots=job_roots,
    )


def parse_rules(
    text: str,
    filename: str = "<rules>",
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    secrets: str = "require",
    job_roots: Sequence[str | os.PathLike[str]] | None = None,
) -> RuleSet:
    environ = os.environ if environ is None else environ
    if job_roots is None:
        job_roots = split_job_roots(environ.get(JOB_ROOTS_VARIABLE))
    checker = _Checker(filename, base_dir or Path.cwd(), environ, secrets, job_roots)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_RULES_BYTES:
        raise RulesError([_too_large(filename, size)])
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line, mark.column) if mark else (0, 0)
        problem = exc.problem or str(exc)
        checker.error((line, column), f"not valid YAML: {problem}")
        raise RulesError(checker.errors) from None
    except RecursionError:  # ruamel composes recursively
        checker.error((0, 0), "not valid YAML here: values nested too deeply")
        raise RulesError(checker.errors) from None
    except Exception as exc:  # ruamel raises a few unmarked errors for odd input
        checker.error((0, 0), f"not valid YAML: {exc}")
        raise RulesError(checker.errors) from None
    _check_expansion(document, filename)
    ruleset = checker.ruleset(document)
    if checker.errors or ruleset is None:
        raise RulesError(checker.errors)
    return ruleset


Pos = tuple[int, int]  # 0-based, as ruamel keeps them

# Bounds on a rules file (DESIGN §7): a real one is a few KiB; these stop a file that would
# take minutes to parse or, through YAML aliases, expand to millions of nodes.
MAX_RULES_BYTES = 1024 * 1024
MAX_EXPANDED_NODES = 100_000
JOB_ROOTS_VARIABLE = "AML_WORKER_JOB_ROOTS"


def split_job_roots(value: str | None) -> list[str]:
    """AML_WORKER_JOB_ROOTS: folders separated by the OS path separator (`:`, `;` on Windows)."""
    return [entry.strip() for entry in (value or "").split(os.pathsep) if entry.strip()]


# One mailbox per entry (DESIGN §7): an addr-spec `local@domain`, optionally behind a plain
# display name (`Team Lead <lead@example.com>`). The local part is a dot-atom of RFC 5322
# atext, the domain a host name (ASCII, or the letters and digits of an international
# one). No whitespace, comma, semicolon, quote, bracket, encoded word or control character
# can sit in either, so one rendered entry is never two recipients, nor a header.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LETTER = r"A-Za-z0-9\u0080-\U0010ffff"  # non-ASCII: letters and digits only (_plain_chars)
_LABEL = rf"[{_LETTER}](?:[{_LETTER}-]{{0,61}}[{_LETTER}])?"
_ADDR_SPEC_RE = re.compile(
    rf"(?P<local>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})*)"
)
_NAMED_RE = re.compile(r"(?P<name>[\w .'&+/-]*?) *<(?P<addr>[^<>]*)>")
_MAX_LOCAL, _MAX_ADDRESS = 64, 254
_TEMPLATE_MARKERS = ("{{", "{%", "{#", "${")


def _plain_chars(text: str) -> bool:
    """Outside ASCII, only letters, marks and digits: no control, format (bidi), space or
    symbol character that could hide or disguise a part of an address."""
    return all(c.isascii() or unicodedata.category(c)[0] in "LMN" for c in text)


def parse_mailbox(entry: str) -> Address | None:
    """The one mailbox an entry holds, or None when it is not exactly one address."""
    text = entry.strip(" ")
    named = _NAMED_RE.fullmatch(text)
    name, addr = (named["name"].strip(" "), named["addr"]) if named else ("", text)
    spec = _ADDR_SPEC_RE.fullmatch(addr)
    if (
        spec is None
        or len(spec["local"]) > _MAX_LOCAL
        or len(addr) > _MAX_ADDRESS
        or "=?" in text  # an RFC 2047 encoded word decodes to anything in a mail reader
        or not _plain_chars(name + spec["domain"])
    ):
        return None
    try:
        address = Address(display_name=name, addr_spec=addr)
    except (ValueError, IndexError, HeaderParseError):
        return None
    return address if address.addr_spec == addr else None


def _too_large(filename: str, size: int) -> Problem:
    return Problem(
        filename,
        1,
        1,
        f"rules file is {size:,} bytes; the limit is {MAX_RULES_BYTES:,} (1 MiB): a rules "
        "file holds filters and short templates; move job definitions into the job YAML "
        "files that 'job:' names, and merge rules whose actions are the same",
    )


def _check_expansion(document: Any, filename: str) -> None:
    """Refuse a document whose aliases expand past MAX_EXPANDED_NODES values, or refer to
    themselves, before anything walks it (a 'billion laughs' is a few lines of YAML and
    loads in milliseconds, since an alias is a shared object: only walking it is costly)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def fail(value: Any, message: str) -> RulesError:
        line, column = _pos(value)
        return RulesError([Problem(filename, line + 1, column + 1, message)])

    def children(value: Any) -> list[Any]:
        items = [*value.keys(), *value.values()] if isinstance(value, Mapping) else value
        return [item for item in items if isinstance(item, Mapping | list)]

    # Iterative post-order over the container graph; a shared container is sized once.
    stack: list[tuple[Any, bool]] = [(document, False)]
    while stack:
        value, children_done = stack.pop()
        if not isinstance(value, Mapping | list):
            continue
        key = id(value)
        if children_done:
            visiting.discard(key)
            nested = children(value)
            total = 1 + len(value) * (2 if isinstance(value, Mapping) else 1) - len(nested)
            total += sum(sizes[id(item)] for item in nested)
            if total > MAX_EXPANDED_NODES:
                raise fail(
                    value,
                    f"YAML aliases expand this file to more than {MAX_EXPANDED_NODES:,} "
                    "values; write the values out instead of nesting aliases",
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in visiting:
            raise fail(value, "a YAML alias refers to the value that contains it")
        visiting.add(key)
        stack.append((value, True))
        stack.extend((item, False) for item in children(value) if id(item) not in sizes)


def _pos_key(node: Any, key: Any) -> Pos:
    try:
        return tuple(node.lc.key(key))  # type: ignore[return-value]
    except Exception:
        return _pos(node)


def _pos_value(node: Any, key: Any) -> Pos:
    try:
        return tuple(node.lc.value(key))  # type: ignore[return-value]
    except Exception:
        return _pos_key(node, key)


def _pos_item(node: Any, index: int) -> Pos:
    try:
        return tuple(node.lc.item(index))  # type: ignore[return-value]
    except Exception:
        return _pos(node)


def _pos(node: Any) -> Pos:
    lc = getattr(node, "lc", None)
    return (lc.line, lc.col) if lc is not None and lc.line is not None else (0, 0)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__


class _Checker:
    """Walks the YAML tree, building values and collecting located problems."""

    def __init__(
        self,
        filename: str,
        base_dir: Path,
        environ: Mapping[str, str],
        secrets: str,
        job_roots: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.filename = filename
        self.base_dir = base_dir
        self.environ = environ
        # Folders an action's files may be in (DESIGN §7): the rules file's own first.
        self.job_roots = [base_dir.resolve(), *(Path(root).resolve() for root in job_roots)]
        self.secrets_mode = secrets
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    # reporting

    def error(self, pos: Pos, message: str) -> None:
        self.errors.append(Problem(self.filename, pos[0] + 1, pos[1] + 1, message))

    def warn(self, pos: Pos, message: str) -> None:
        self.warnings.append(Problem(self.filename, pos[0] + 1, pos[1] + 1, message))

    def check_keys(self, node: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in node:
            if key in allowed:
                continue
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                if not close:
                    folded = {a.casefold(): a for a in allowed}
                    close = [folded[key.casefold()]] if key.casefold() in folded else []
                if close:
                    hint = f"; did you mean '{close[0]}'?"
            known = ", ".join(allowed)
            self.error(
                _pos_key(node, key), f"unknown key '{key}' in {where}{hint} (known: {known})"
            )

    def mapping(self, node: Any, pos: Pos, what: str) -> Mapping[Any, Any] | None:
        if isinstance(node, Mapping):
            return node
        self.error(pos, f"{what} must be a map, not {_describe(node)}")
        return None

    def duration(self, node: Mapping[Any, Any], key: str, default: float) -> float:
        if key not in node:
            return default
        try:
            return parse_duration(node[key])
        except ValueError as exc:
            self.error(_pos_value(node, key), f"'{key}': {exc}")
            return default

    def positive_int(self, node: Mapping[Any, Any], key: str, default: int | None) -> int | None:
        if key not in node:
            return default
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.error(_pos_value(node, key), f"'{key}' must be a whole number >= 1")
            return default
        return int(value)

    def choice(self, node: Mapping[Any, Any], key: str, enum: type[StrEnum], default: Any) -> Any:
        if key not in node:
            return default
        try:
            return enum(node[key])
        except ValueError:
            options = ", ".join(e.value for e in enum)
            self.error(_pos_value(node, key), f"'{key}' must be one of {options}")
            return default

    # document

    def ruleset(self, document: Any) -> RuleSet | None:
        if document is None:
            self.error((0, 0), "rules file is empty; it needs 'version: 1', 'topics' and 'rules'")
            return None
        top = self.mapping(document, (0, 0), "the rules file")
        if top is None:
            return None
        self.check_keys(top, _TOP_KEYS, "the rules file")
        if "version" not in top:
            self.error(_pos(top), "missing 'version: 1'")
        elif top["version"] != 1 or isinstance(top["version"], bool):
            self.error(_pos_value(top, "version"), "'version' must be 1 (the only format so far)")
        topics = self.topics(top)
        ordering = self.ordering(top)
        dedupe = self.dedupe(top)
        rules = self.rules(top)
        if self.errors:
            return None
        return RuleSet(
            path=self.filename,
            topics=topics,
            rules=rules,
            ordering=ordering,
            dedupe=dedupe,
            warnings=tuple(self.warnings),
        )

    def topics(self, top: Mapping[Any, Any]) -> tuple[str, ...]:
        if "topics" not in top:
            self.error(_pos(top), "missing 'topics': list the workspace ARM ids to accept")
            return ()
        node = top["topics"]
        if not isinstance(node, list) or not node:
            self.error(_pos_value(top, "topics"), "'topics' must be a non-empty list of strings")
            return ()
        topics = []
        for i, item in enumerate(node):
            if not isinstance(item, str) or not item.strip():
                self.error(_pos_item(node, i), f"topics[{i}] must be a non-empty string")
            else:
                topics.append(item.strip())
        return tuple(topics)

    def ordering(self, top: Mapping[Any, Any]) -> OrderingSettings:
        if "ordering" not in top:
            return OrderingSettings()
        node = self.mapping(top["ordering"], _pos_value(top, "ordering"), "'ordering'")
        if node is None:
            return OrderingSettings()
        self.check_keys(node, ("grace", "late", "max_skew"), "'ordering'")
        return OrderingSettings(
            grace_s=self.duration(node, "grace", 5.0),
            late=self.choice(node, "late", Late, Late.DROP),
            max_skew_s=self.duration(node, "max_skew", 300.0),
        )

    def dedupe(self, top: Mapping[Any, Any]) -> DedupeSettings:
        if "dedupe" not in top:
            return DedupeSettings()
        node = self.mapping(top["dedupe"], _pos_value(top, "dedupe"), "'dedupe'")
        if node is None:
            return DedupeSettings()
        self.check_keys(node, ("window", "max_ids"), "'dedupe'")
        return DedupeSettings(
            window_s=self.duration(node, "window", 86_400.0),
            max_ids=self.positive_int(node, "max_ids", 1_000_000) or 1_000_000,
        )

    def rules(self, top: Mapping[Any, Any]) -> tuple[Rule, ...]:
        if "rules" not in top:
            self.error(_pos(top), "missing 'rules': a list of rules")
            return ()
        node = top["rules"]
        if not isinstance(node, list):
            self.error(_pos_value(top, "rules"), "'rules' must be a list of rules")
            return ()
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(node):
            rule = self.rule(item, _pos_item(node, i), i)
            if rule is None:
                continue
            if rule.name in seen:
                self.error(
                    _pos_value(item, "name"),
                    f"rule name '{rule.name}' is used twice (first at line {seen[rule.name]})",
                )
            seen.setdefault(rule.name, rule.line)
            rules.append(rule)
        return tuple(rules)

    def rule(self, item: Any, pos: Pos, index: int) -> Rule | None:
        node = self.mapping(item, pos, f"rules[{index}]")
        if node is None:
            return None
        self.check_keys(node, _RULE_KEYS, f"rules[{index}]")
        name = node.get("name")
        if "name" not in node:
            self.error(pos, f"rules[{index}] has no 'name'")
            name = f"rules[{index}]"
        elif not isinstance(name, str) or not _RULE_NAME_RE.match(name):
            self.error(
                _pos_value(node, "name"),
                f"rule name {name!r} must use only lower-case letters, digits and '-'",
            )
            name = str(name)
        where = f"rule '{name}'"
        rule_filter = self.filter(node, where)
        late = None
        if "ordering" in node:
            ordering = self.mapping(node["ordering"], _pos_value(node, "ordering"), "'ordering'")
            if ordering is not None:
                for key in ordering:
                    if key != "late":
                        self.error(
                            _pos_key(ordering, key),
                            f"a rule may override 'ordering.late' only, not '{key}' "
                            "(grace and max_skew are set once for the whole file)",
                        )
                late = self.choice(ordering, "late", Late, None)
        throttle = self.throttle(node, where)
        actions = self.actions(node, where)
        return Rule(
            name=name,
            filter=rule_filter,
            actions=actions,
            late=late,
            throttle=throttle,
            line=pos[0] + 1,
        )

    def throttle(self, node: Mapping[Any, Any], where: str) -> Throttle | None:
        if "throttle" not in node:
            return None
        t = self.mapping(node["throttle"], _pos_value(node, "throttle"), f"{where} 'throttle'")
        if t is None:
            return None
        self.check_keys(t, ("per", "at_most", "every"), f"{where} 'throttle'")
        for key in ("at_most", "every"):
            if key not in t:
                self.error(_pos(t), f"{where} 'throttle' needs '{key}'")
        every = self.duration(t, "every", 0.0)
        if "every" in t and every <= 0:
            self.error(_pos_value(t, "every"), "'every' must be longer than 0")
        return Throttle(
            per=self.choice(t, "per", ThrottlePer, ThrottlePer.RULE),
            at_most=self.positive_int(t, "at_most", 1) or 1,
            every_s=every,
        )

    # filters

    def filter(self, node: Mapping[Any, Any], where: str) -> Filter:
        if "filter" not in node or node["filter"] is None:
            return Filter()
        f = self.mapping(node["filter"], _pos_value(node, "filter"), f"{where} 'filter'")
        if f is None:
            return Filter()
        self.check_keys(f, _FILTER_KEYS, f"{where} 'filter'")
        types: tuple[str, ...] | None = None
        if f.get("includedEventTypes") is not None:
            value = f["includedEventTypes"]
            if not isinstance(value, list) or not value:
                self.error(
                    _pos_value(f, "includedEventTypes"),
                    "'includedEventTypes' must be a non-empty list of event types "
                    "(omit it to match every type)",
                )
            else:
                for i, t in enumerate(value):
                    if not isinstance(t, str) or not t:
                        self.error(_pos_item(value, i), "event types must be non-empty strings")
                types = tuple(str(t) for t in value)
        strings = {}
        for key in ("subjectBeginsWith", "subjectEndsWith"):
            value = f.get(key)
            if value is not None and not isinstance(value, str):
                self.error(_pos_value(f, key), f"'{key}' must be a string")
            strings[key] = value if isinstance(value, str) else ""
        flags = {}
        for key in ("isSubjectCaseSensitive", "enableAdvancedFilteringOnArrays"):
            value = f.get(key)
            if value is not None and not isinstance(value, bool):
                self.error(_pos_value(f, key), f"'{key}' must be true or false")
            flags[key] = value is True
        advanced = self.advanced_filters(f, where)
        return Filter(
            included_event_types=types,
            subject_begins_with=strings["subjectBeginsWith"],
            subject_ends_with=strings["subjectEndsWith"],
            is_subject_case_sensitive=flags["isSubjectCaseSensitive"],
            enable_advanced_filtering_on_arrays=flags["enableAdvancedFilteringOnArrays"],
            advanced_filters=advanced,
        )

    def advanced_filters(self, f: Mapping[Any, Any], where: str) -> tuple[AdvancedFilter, ...]:
        node = f.get("advancedFilters")
        if node is None:
            return ()
        if not isinstance(node, list):
            self.error(_pos_value(f, "advancedFilters"), "'advancedFilters' must be a list")
            return ()
        if len(node) > MAX_ADVANCED_FILTERS:
            self.error(
                _pos_value(f, "advancedFilters"),
                f"{where} has {len(node)} advanced filters; Event Grid allows at most "
                f"{MAX_ADVANCED_FILTERS} per subscription",
            )
        result = []
        total_values = 0
        for i, item in enumerate(node):
            af = self.mapping(item, _pos_item(node, i), f"advancedFilters[{i}]")
            if af is None:
                continue
            built, count = self.advanced_filter(af, _pos_item(node, i), i)
            total_values += count
            if built is not None:
                result.append(built)
        if total_values > MAX_FILTER_VALUES:
            self.error(
                _pos_value(f, "advancedFilters"),
                f"{where} uses {total_values} filter values in total; Event Grid allows at most "
                f"{MAX_FILTER_VALUES} across all advanced filters of a subscription",
            )
        return tuple(result)

    def advanced_filter(
        self, af: Mapping[Any, Any], pos: Pos, index: int
    ) -> tuple[AdvancedFilter | None, int]:
        where = f"advancedFilters[{index}]"
        self.check_keys(af, _ADVANCED_KEYS, where)
        op_name = af.get("operatorType")
        if op_name is None:
            self.error(pos, f"{where} has no 'operatorType'")
            return None, 0
        try:
            op = Operator(op_name)
        except ValueError:
            names = [o.value for o in Operator]
            close = difflib.get_close_matches(str(op_name), names, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            self.error(
                _pos_value(af, "operatorType"),
                f"unknown operatorType '{op_name}'{hint}",
            )
            return None, 0
        key = af.get("key")
        ok = True
        if not isinstance(key, str) or not key.strip():
            self.error(_pos_value(af, "key") if "key" in af else pos, f"{where} needs a 'key'")
            ok = False
        elif filters.is_extension_key(key):
            self.warn(
                _pos_value(af, "key"),
                f"key '{key}' is neither an envelope field nor 'data.…': it is read as a "
                "CloudEvents extension attribute (a typo here makes Not-operators match "
                "every event)",
            )
        values, count = self.operands(af, op, pos, where)
        if values is None or not ok:
            return None, count
        return AdvancedFilter(operator=op, key=key.strip(), values=values), count

    def operands(
        self, af: Mapping[Any, Any], op: Operator, pos: Pos, where: str
    ) -> tuple[tuple[Any, ...] | None, int]:
        if op in filters.NO_VALUE_OPERATORS:
            for key in ("value", "values"):
                if key in af:
                    self.error(_pos_key(af, key), f"{op} takes no '{key}'")
                    return None, 0
            return (), 0
        if op in filters.SINGLE_VALUE_OPERATORS:
            if "values" in af:
                self.error(_pos_key(af, "values"), f"{op} takes one 'value', not 'values'")
                return None, 0
            if "value" not in af:
                self.error(pos, f"{where} ({op}) needs a 'value'")
                return None, 0
            operand = self.scalar_operand(op, af["value"], _pos_value(af, "value"))
            return (None, 1) if operand is None else ((operand,), 1)
        if "value" in af:
            self.error(_pos_key(af, "value"), f"{op} takes a list 'values', not 'value'")
            return None, 0
        raw = af.get("values")
        if not isinstance(raw, list) or not raw:
            self.error(
                _pos_value(af, "values") if "values" in af else pos,
                f"{where} ({op}) needs a non-empty list 'values'",
            )
            return None, 0
        operands = []
        ok = True
        for i, item in enumerate(raw):
            item_pos = _pos_item(raw, i)
            if op in filters.RANGE_OPERATORS:
                operand = self.range_operand(op, item, item_pos)
            else:
                operand = self.scalar_operand(op, item, item_pos)
            if operand is None:
                ok = False
            operands.append(operand)
        return (tuple(operands) if ok else None), len(raw)

    def scalar_operand(self, op: Operator, value: Any, pos: Pos) -> Any:
        if op in filters.NUMBER_OPERATORS:
            if not _is_number(value):
                self.error(pos, f"{op} needs a number, not {_describe(value)} {value!r}")
                return None
            return Decimal(int(value)) if isinstance(value, int) else Decimal(repr(float(value)))
        if op == Operator.BOOL_EQUALS:
            if not isinstance(value, bool):
                self.error(pos, f"BoolEquals needs true or false, not {_describe(value)}")
                return None
            return value
        if not isinstance(value, str):
            self.error(
                pos, f"{op} needs strings, not {_describe(value)} {value!r} (quote it: '{value}')"
            )
            return None
        if not value:
            self.error(pos, f"{op} values must not be empty strings")
            return None
        if len(value) > MAX_STRING_VALUE:
            self.error(
                pos,
                f"string value has {len(value)} characters; Event Grid allows at most "
                f"{MAX_STRING_VALUE}",
            )
            return None
        return str(value)

    def range_operand(self, op: Operator, value: Any, pos: Pos) -> Any:
        if not isinstance(value, list) or len(value) != 2 or not all(_is_number(v) for v in value):
            self.error(pos, f"{op} values must be ranges [low, high] of two numbers")
            return None
        low, high = (
            Decimal(int(v)) if isinstance(v, int) else Decimal(repr(float(v))) for v in value
        )
        if low > high:
            self.error(pos, f"range [{value[0]}, {value[1]}] has low > high")
            return None
        return (low, high)

    # actions

    def actions(self, node: Mapping[Any, Any], where: str) -> tuple[Action, ...]:
        raw = node.get("actions")
        if not isinstance(raw, list) or not raw:
            self.error(
                _pos_value(node, "actions") if "actions" in node else _pos(node),
                f"{where} needs a non-empty list 'actions'",
            )
            return ()
        actions: list[Action] = []
        ids: set[str] = set()
        for i, item in enumerate(raw):
            action = self.action(item, _pos_item(raw, i), i, where)
            if action is None:
                continue
            if action.id is not None:
                if action.id in ids:
                    self.error(
                        _pos_value(item, "id"), f"action id '{action.id}' is used twice in {where}"
                    )
                ids.add(action.id)
            actions.append(action)
        return tuple(actions)

    def action(self, item: Any, pos: Pos, index: int, rule_where: str) -> Action | None:
        where = f"{rule_where} actions[{index}]"
        node = self.mapping(item, pos, where)
        if node is None:
            return None
        action_type = node.get("type")
        if action_type not in ACTION_TYPES:
            names = list(ACTION_TYPES)
            close = difflib.get_close_matches(str(action_type), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            at = _pos_value(node, "type") if "type" in node else pos
            what = f"unknown action type '{action_type}'" if "type" in node else "no 'type'"
            self.error(at, f"{where} has {what}{hint} (known: {', '.join(names)})")
            return None
        spec = ACTION_TYPES[action_type]
        self.check_keys(node, (*_COMMON_ACTION_KEYS, *spec.params), f"{action_type} action")
        for key in spec.required:
            if key not in node:
                self.error(pos, f"{action_type} action needs '{key}'")
        if spec.one_of:
            given = [g for g in spec.one_of if any(k in node for k in g)]
            groups = " or ".join("+".join(f"'{k}'" for k in g) for g in spec.one_of)
            if len(given) != 1:
                self.error(pos, f"{action_type} action needs exactly one of {groups}")
            else:
                for key in given[0]:
                    if key not in node:
                        self.error(pos, f"{action_type} action needs '{key}' with {groups}")
        params: dict[str, Any] = {}
        files: dict[str, str] = {}
        for key, kind in spec.params.items():
            if key in node:
                value = self.param(node, key, kind)
                if value is None:
                    continue
                if kind is Kind.PATH:
                    files[key] = value
                    value = str(node[key])  # the plan shows the path as written
                params[key] = value
        action_id = node.get("id")
        if action_id is not None and (
            not isinstance(action_id, str) or not _ACTION_ID_RE.match(action_id)
        ):
            self.error(
                _pos_value(node, "id"),
                "action 'id' must be letters, digits, '_', '.' or '-'",
            )
            action_id = None
        action = Action(
            type=action_type,
            index=index,
            params=params,
            id=action_id,
            retry=self.retry(node),
            concurrency=self.positive_int(node, "concurrency", None),
            line=pos[0] + 1,
            files=files,
        )
        self.check_secrets(node, action, where)
        return action

    def retry(self, node: Mapping[Any, Any]) -> Retry:
        if "retry" not in node:
            return Retry()
        r = self.mapping(node["retry"], _pos_value(node, "retry"), "'retry'")
        if r is None:
            return Retry()
        self.check_keys(r, ("attempts", "initial", "max"), "'retry'")
        default = Retry()
        retry = Retry(
            attempts=self.positive_int(r, "attempts", default.attempts) or default.attempts,
            initial_s=self.duration(r, "initial", default.initial_s),
            max_s=self.duration(r, "max", default.max_s),
        )
        if retry.max_s < retry.initial_s:
            self.error(_pos(r), "'retry.max' must not be shorter than 'retry.initial'")
        return retry

    def param(self, node: Mapping[Any, Any], key: str, kind: Kind) -> Any:
        value = node[key]
        pos = _pos_value(node, key)
        checks: dict[Kind, Callable[[], bool]] = {
            Kind.TEMPLATE: lambda: isinstance(value, str),
            Kind.TEMPLATES: lambda: (
                isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
            ),
            Kind.TEMPLATE_MAP: lambda: (
                isinstance(value, Mapping)
                and all(isinstance(v, str | int | float) for v in value.values())
            ),
            Kind.VALUE_MAP: lambda: isinstance(value, Mapping),
            Kind.BODY: lambda: isinstance(value, str | Mapping | list),
            Kind.LEVEL: lambda: value in ("debug", "info", "warning", "error"),
            Kind.METHOD: lambda: isinstance(value, str) and value.upper() in _HTTP_METHODS,
            Kind.SCHEMA: lambda: value in ("eventgrid", "cloudevents"),
            Kind.PATH: lambda: isinstance(value, str) and bool(value),
            Kind.AUTH: lambda: isinstance(value, Mapping),
            Kind.DURATION: lambda: True,
        }
        if not checks[kind]():
            self.error(pos, f"'{key}' must be {kind.value}, not {_describe(value)}")
            return None
        if kind is Kind.DURATION:
            try:
                return parse_duration(value)
            except ValueError as exc:
                self.error(pos, f"'{key}': {exc}")
                return None
        if kind is Kind.METHOD:
            return value.upper()
        if kind in (Kind.LEVEL, Kind.SCHEMA):
            return str(value)
        if kind is Kind.PATH:
            path = (self.base_dir / value).resolve()
            if not any(path.is_relative_to(root) for root in self.job_roots):
                self.error(
                    pos,
                    f"'{key}': {value!r} resolves to {path}, outside the rules file's folder "
                    f"{self.job_roots[0]}; move it there, or list its folder in "
                    f"{JOB_ROOTS_VARIABLE}",
                )
                return None
            if not path.is_file():
                self.error(pos, f"'{key}': file {value!r} not found (looked for {path})")
                return None
            return str(path)
        if kind is Kind.AUTH:
            return self.auth(value, pos)
        if kind is Kind.TEMPLATE_MAP:
            value = {k: str(v) for k, v in value.items()}
        if key in ("to", "cc", "from") and node.get("type") == "email":
            value = self.recipients(value, pos, key)
        if (
            key == "url"
            and isinstance(value, str)
            and not re.match(r"\s*(https?://|\{\{|\$\{)", value)
        ):
            self.error(pos, f"'url' must start with http:// or https://, not {value!r}")
        return self.compile(value, pos, key)

    def recipients(self, value: str | list[str], pos: Pos, key: str) -> Any:
        """An email's `to`/`cc`/`from` as written: literal entries are checked now (a
        literal `to`/`cc` entry may list several, split on `,` or `;`); an entry with a
        template must render to exactly one address when sent (DESIGN §7), so event data
        can never add a recipient."""
        entries = [value] if isinstance(value, str) else value
        result: list[str] = []
        for entry in entries:
            if any(marker in entry for marker in _TEMPLATE_MARKERS):
                result.append(entry)
                continue
            # A quote means a display name with a comma: one entry, refused below.
            pieces = [entry] if key == "from" or '"' in entry else re.split(r"[,;]", entry)
            for piece in pieces:
                if not piece.strip():
                    continue
                if parse_mailbox(piece) is None:
                    self.error(
                        pos,
                        f"'{key}': {piece.strip()!r} is not an email address (write "
                        "'name@example.com' or 'Display Name <name@example.com>', one per "
                        "entry; a display name without quotes, commas or '@')",
                    )
                    continue
                result.append(piece.strip())
        if not result and key != "from" and all(not e.strip() for e in entries):
            self.error(pos, f"'{key}' names no email address")
        return value if isinstance(value, str) else result

    def auth(self, value: Mapping[Any, Any], pos: Pos) -> Any:
        self.check_keys(value, ("type", "scope"), "'auth'")
        if value.get("type") != "entra":
            self.error(pos, "'auth.type' must be 'entra'")
            return None
        if not isinstance(value.get("scope"), str) or not value["scope"]:
            self.error(pos, "'auth' needs 'scope' (e.g. api://<app-id>/.default)")
            return None
        return {"type": "entra", "scope": Template.compile(value["scope"])}

    def compile(self, value: Any, pos: Pos, key: str) -> Any:
        try:
            # An email's `html` is HTML: what its expressions output is escaped (DESIGN §7).
            return compile_params(_plain(value), html=key == "html")
        except TemplateSyntaxError as exc:
            line = pos[0] + (exc.lineno or 1) - 1
            self.error((line, pos[1]), f"template error in '{key}': {exc.message}")
            return None

    def check_secrets(self, node: Mapping[Any, Any], action: Action, action_where: str) -> None:
        """Every `${NAME}` must have a value: missing or empty (which would go out as
        `Bearer ` or an unsigned webhook, DESIGN §3) is a located error ("warn": a warning,
        for `check-rules --allow-missing-secrets`)."""
        if self.secrets_mode == "ignore":
            return
        for name in action.secrets:
            value = self.environ.get(name)
            if value:
                continue
            where = _secret_pos(node, name) or _pos(node)
            message = f"secret ${{{name}}} is not set in the environment"
            if value is not None:
                used = [key for key, param in action.params.items() if name in secret_names(param)]
                message = (
                    f"secret ${{{name}}} is empty in the environment; {action_where} "
                    f"({action.type} {', '.join(repr(k) for k in used)}) would send it "
                    "empty: give it a value"
                )
            if self.secrets_mode == "warn":
                self.warn(where, message)
            else:
                self.error(where, message)


def _plain_tree(value: Any) -> bool:
    """Strings, templates, integers, booleans, nulls, and maps (string keys) and lists of them."""
    if value is None or isinstance(value, str | int | Template):  # bool is an int
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain_tree(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain_tree(v) for v in value)
    return False


def _plain(value: Any) -> Any:
    """ruamel's scalar and container types → plain Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _secret_pos(node: Any, name: str) -> Pos | None:
    """Position of the first string under `node` that mentions `${name}`."""
    needle = "${" + name + "}"
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, str) and needle in value:
                return _pos_value(node, key)
            if isinstance(value, Mapping | list):
                found = _secret_pos(value, name)
                if found is not None:
                    return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str) and needle in value:
                return _pos_item(node, i)
            if isinstance(value, Mapping | list):
                found = _secret_pos(value, name)
                if found is not None:
                    return found
    return None
