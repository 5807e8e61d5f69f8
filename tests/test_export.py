"""`export-filters` (worker/export.py): Event Grid subscriptions equivalent to the rules.

The key property is a round trip: a subscription built from the export must decide every event
exactly as the rule does. The ARM template is parsed back (with ARM's `[[` literal escape undone,
as ARM does), each subscription's `filter` becomes a rules file again, our own loader reads it,
and both filters judge the same events. The `az` commands go through the same round trip by way
of an argparse parser declared like azure-cli's `event-subscription create` and its
`advanced_filter.py` conversions (float() for numbers, bool() for BoolEquals, ranges split on
','); the Bicep output is read back by a small parser of the Bicep it uses and compared with the
ARM template's resources.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import EXAMPLES, TOPIC
from worker.events import Event, decode_body
from worker.export import API_VERSION, EVENT_HUB_PLACEHOLDER, export_filters, subscription_names
from worker.filters import Filter, Operator
from worker.rules import RuleSet, parse_rules

HUB = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-demo/providers/"
    "Microsoft.EventHub/namespaces/ns-demo/eventhubs/aml-events"
)
LOG = {"type": "log", "message": "x"}
PARTITION_KEY = {
    "name": "PartitionKey",
    "type": "Dynamic",
    "properties": {"sourceField": "subject"},
}
Op = Operator


# --- helpers ------------------------------------------------------------------------------------


def load_examples() -> RuleSet:
    path = EXAMPLES / "rules.yaml"
    return parse_rules(path.read_text(), str(path), base_dir=path.parent, secrets="ignore")


def ruleset_of(filters: list[dict[str, Any]], topics: list[str] | None = None) -> RuleSet:
    """A rules file (JSON text: JSON is YAML) with one log rule per filter object, loaded."""
    document = {
        "version": 1,
        "topics": topics or [TOPIC],
        "rules": [
            {"name": f"rule-{i}", "filter": f, "actions": [LOG]} for i, f in enumerate(filters)
        ],
    }
    return parse_rules(json.dumps(document), "<export>", secrets="ignore")


def reload(filters: list[dict[str, Any]]) -> list[Filter]:
    return [rule.filter for rule in ruleset_of(filters).rules]


def arm_literal(value: Any) -> Any:
    """What ARM deploys for a template value (its ExpressionParser): a string that starts with
    `[` and ends with `]` is an expression unless it starts with `[[`, the escaped literal.
    No expression belongs in a filter."""
    if isinstance(value, str) and value[:1] == "[" and value[-1:] == "]":
        assert value[1:2] == "[", f"ARM would evaluate {value!r} as an expression"
        return value[1:]
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return {k: arm_literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [arm_literal(v) for v in value]
    return value


def arm_resources(text: str) -> list[dict[str, Any]]:
    template = json.loads(text)
    assert template["$schema"].endswith("/deploymentTemplate.json#")
    assert template["contentVersion"] == "1.0.0.0"
    assert template["parameters"]["eventHubResourceId"]["type"] == "string"
    for resource in template["resources"]:
        assert resource["type"] == "Microsoft.EventGrid/eventSubscriptions"
        assert resource["apiVersion"] == API_VERSION
        destination = resource["properties"]["destination"]
        assert destination["endpointType"] == "EventHub"
        assert destination["properties"]["resourceId"] == "[parameters('eventHubResourceId')]"
        assert destination["properties"]["deliveryAttributeMappings"] == [PARTITION_KEY]
    return template["resources"]


def arm_round_trip(ruleset: RuleSet) -> list[Filter]:
    text = export_filters(ruleset, format="arm", source_resource_id=None, eventhub_resource_id=None)
    resources = arm_resources(text)
    assert [r["name"] for r in resources] == [r.name for r in ruleset.rules]
    return reload([arm_literal(r["properties"]["filter"]) for r in resources])


def without_all(flt: Filter) -> Filter:
    """`includedEventTypes: [All]` and no list both mean every type."""
    types = flt.included_event_types
    if types is not None and any(t.casefold() == "all" for t in types):
        return Filter(
            None,
            flt.subject_begins_with,
            flt.subject_ends_with,
            flt.is_subject_case_sensitive,
            flt.enable_advanced_filtering_on_arrays,
            flt.advanced_filters,
        )
    return flt


def assert_same_decisions(original: list[Filter], back: list[Filter], events: list[Event]) -> None:
    assert len(original) == len(back)
    for orig, copy in zip(original, back, strict=True):
        assert without_all(orig) == copy
        for event in events:
            assert orig.matches(event) is copy.matches(event), (orig, copy, event)


def decode_all(bodies: list[Any]) -> list[Event]:
    events: list[Event] = []
    for body in bodies:
        decoded, rejections = decode_body(json.dumps(body).encode())
        assert not rejections, rejections
        events.extend(decoded)
    return events


@functools.cache
def example_events() -> list[Event]:
    """The sample events, plus variants that make each example rule both pass and fail."""
    bodies = [
        json.loads(path.read_text()) for path in sorted((EXAMPLES / "events").rglob("*.json"))
    ]
    variants = []
    for body in bodies:
        data = body.get("data")
        for status in ("Failed", "canceled", "Running", None, 3):
            variants.append({**body, "data": {**data, "runStatus": status}})
        for drift in (0.29, 0.3, 0.5, 0.7, "0.5", None):
            variants.append({**body, "data": {**data, "DriftCoefficient": drift}})
        for stage in ("production", "PRODUCTION", "staging", ["production"]):
            variants.append({**body, "data": {**data, "ModelTags": {"stage": stage}}})
        variants.append({**body, "data": {**data, "modelTags": {"stage": "production"}}})
        variants.append({**body, "subject": body["subject"].upper()})
        variants.append({**body, "data": {}})
    return decode_all(bodies + variants)


# --- az, read back as az reads it ---------------------------------------------------------------


def az_parser() -> argparse.ArgumentParser:
    """`az eventgrid event-subscription create`'s flags as azure-cli declares them (_params.py)."""
    parser = argparse.ArgumentParser(prog="az eventgrid event-subscription create")
    parser.add_argument("--name", "-n", required=True)
    parser.add_argument("--source-resource-id", required=True)
    parser.add_argument("--endpoint-type", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--included-event-types", nargs="+")
    parser.add_argument("--subject-begins-with")
    parser.add_argument("--subject-ends-with")
    parser.add_argument("--subject-case-sensitive", nargs="?", const="true")  # three-state flag
    parser.add_argument("--enable-advanced-filtering-on-arrays", nargs="?", const="true")
    parser.add_argument("--advanced-filter", nargs="+", action="append")
    parser.add_argument("--delivery-attribute-mapping", nargs="+", action="append")
    parser.add_argument("--event-delivery-schema")
    return parser


def az_reads_file(arg: str) -> bool:
    """azure-cli's _expand_file_prefixed_files: `@path` (also after the first '=') is a file."""
    tail = arg.split("=", 1)[-1]
    return tail.startswith("@") and len(tail) > 1


def az_advanced_filter(words: list[str]) -> dict[str, Any]:
    """azure-cli advanced_filter.py's EventSubscriptionAddFilter, producing the ARM object."""
    key, op, values = words[0], words[1], words[2:]
    result: dict[str, Any] = {"operatorType": op, "key": key}
    if op in ("IsNullOrUndefined", "IsNotNull"):
        assert not values
    elif op in ("NumberInRange", "NumberNotInRange"):
        result["values"] = [[float(i) for i in value.split(",")] for value in values]
    elif op == "BoolEquals":
        assert len(values) == 1
        result["value"] = bool(values[0])
    elif op.startswith("Number") and op not in ("NumberIn", "NumberNotIn"):
        assert len(values) == 1
        result["value"] = float(values[0])
    elif op in ("NumberIn", "NumberNotIn"):
        result["values"] = [float(v) for v in values]
    else:
        result["values"] = values
    return result


def az_commands(text: str) -> list[argparse.Namespace]:
    """Each command of the export, as the shell and then az would parse it."""
    commands = []
    for block in text.split("\n\n"):
        words = shlex.split(block.replace("\\\n", ""), comments=True)  # as the shell joins lines
        if not words:
            continue
        assert words[:4] == ["az", "eventgrid", "event-subscription", "create"], words
        for word in words[4:]:
            assert not az_reads_file(word), word
        try:
            commands.append(az_parser().parse_args(words[4:]))
        except SystemExit:
            pytest.fail(f"az would reject: {words}")
    return commands


def az_filter(command: argparse.Namespace) -> dict[str, Any]:
    """The ARM filter object az builds from a parsed command (custom.py)."""
    result: dict[str, Any] = {}
    if command.included_event_types:
        result["includedEventTypes"] = command.included_event_types
    if command.subject_begins_with is not None:
        result["subjectBeginsWith"] = command.subject_begins_with
    if command.subject_ends_with is not None:
        result["subjectEndsWith"] = command.subject_ends_with
    for flag, key in (
        ("subject_case_sensitive", "isSubjectCaseSensitive"),
        ("enable_advanced_filtering_on_arrays", "enableAdvancedFilteringOnArrays"),
    ):
        value = getattr(command, flag)
        if value is not None:
            assert value in ("true", "false")
            result[key] = value == "true"
    if command.advanced_filter:
        result["advancedFilters"] = [az_advanced_filter(w) for w in command.advanced_filter]
    return result


def az_passes(value: str) -> bool:
    """Does argparse hand `value` through as one of several values, and az leave it alone?"""
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", nargs="+")
    try:
        parsed, extra = parser.parse_known_args(["--flag", "k", value])
    except SystemExit:
        return False
    return not extra and parsed.flag == ["k", value] and not az_reads_file(value)


def az_single_passes(value: str) -> bool:
    """Can `value` follow a one-value flag unchanged, as `--flag VALUE` or `--flag=VALUE`?"""
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag")
    for words in (["--flag", value], [f"--flag={value}"]):
        try:
            parsed, extra = parser.parse_known_args(words)
        except SystemExit:
            continue
        if not extra and parsed.flag == value and not any(az_reads_file(w) for w in words):
            return True
    return False


# --- Bicep, read back -------------------------------------------------------------------------


class Ref(str):
    """A Bicep identifier used as a value (a parameter or a resource)."""


_BICEP_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|json\('(?P<json>[^']*)'\)|(?P<int>-?\d+)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[{}\[\]:]))"
)
_BICEP_ESCAPES = {"\\": "\\", "'": "'", "n": "\n", "r": "\r", "t": "\t", "$": "$"}


def bicep_unquote(token: str) -> str:
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        if body[i] != "\\":
            out.append(body[i])
            i += 1
        elif body[i + 1] == "u":
            end = body.index("}", i)
            out.append(chr(int(body[i + 3 : end], 16)))
            i = end + 1
        else:
            out.append(_BICEP_ESCAPES[body[i + 1]])
            i += 2
    return "".join(out)


def bicep_tokens(text: str) -> list[tuple[str, Any]]:
    tokens, pos = [], 0
    while text[pos:].strip():
        match = _BICEP_TOKEN.match(text, pos)
        assert match, text[pos : pos + 40]
        pos = match.end()
        kind = match.lastgroup
        value = match[kind]
        if kind == "str":
            tokens.append(("value", bicep_unquote(value)))
        elif kind == "json":
            tokens.append(("value", json.loads(value)))
        elif kind == "int":
            tokens.append(("value", int(value)))
        elif kind == "ident":
            literal = {"true": True, "false": False, "null": None}
            tokens.append(("value", literal[value] if value in literal else Ref(value)))
        else:
            tokens.append(("punct", value))
    return tokens


def bicep_value(tokens: list[tuple[str, Any]], i: int) -> tuple[Any, int]:
    kind, value = tokens[i]
    if kind == "value":
        return value, i + 1
    if value == "[":
        items: list[Any] = []
        i += 1
        while tokens[i] != ("punct", "]"):
            item, i = bicep_value(tokens, i)
            items.append(item)
        return items, i + 1
    assert value == "{", value
    obj: dict[str, Any] = {}
    i += 1
    while tokens[i] != ("punct", "}"):
        key = tokens[i][1]
        assert tokens[i + 1] == ("punct", ":")
        obj[str(key)], i = bicep_value(tokens, i + 2)
    return obj, i + 1


def bicep_resources(text: str) -> dict[str, tuple[str, Any]]:
    """symbol → (type@version, body) of every `resource` declaration."""
    resources = {}
    pattern = re.compile(r"^resource (\w+) '([^']+)'( existing)? = \{$", re.MULTILINE)
    for match in pattern.finditer(text):
        start = match.end() - 1
        end = text.index("\n}\n", start) + 2
        body, _ = bicep_value(bicep_tokens(text[start:end]), 0)
        resources[match[1]] = (match[2] + (" existing" if match[3] else ""), body)
    return resources


# --- the examples -------------------------------------------------------------------------------


def test_examples_arm_round_trip():
    """Every example rule's exported filter, loaded back, decides every sample event the same."""
    ruleset = load_examples()
    events = example_events()
    original = [rule.filter for rule in ruleset.rules]
    assert_same_decisions(original, arm_round_trip(ruleset), events)
    for flt in original:  # the corpus exercises both outcomes of every rule
        assert {flt.matches(e) for e in events} == {True, False}


def test_examples_az_commands():
    """One complete command per rule, with the rule's filter, the PartitionKey mapping, the
    delivery schema, the workspace as source and the hub placeholder as endpoint."""
    ruleset = load_examples()
    text = export_filters(ruleset, format="az", source_resource_id=None, eventhub_resource_id=None)
    commands = az_commands(text)
    assert [c.name for c in commands] == [r.name for r in ruleset.rules]
    for command in commands:
        assert command.source_resource_id == ruleset.topics[0]
        assert command.endpoint_type == "eventhub"
        assert command.endpoint == EVENT_HUB_PLACEHOLDER
        assert command.delivery_attribute_mapping == [["PartitionKey", "dynamic", "subject"]]
        assert command.event_delivery_schema == "eventgridschema"
    first = commands[0]
    assert first.included_event_types == ["Microsoft.MachineLearningServices.RunStatusChanged"]
    assert first.subject_begins_with == "experiments/"
    assert first.advanced_filter == [["data.runStatus", "StringIn", "Failed", "Canceled"]]
    assert commands[1].advanced_filter == [
        ["data.DriftCoefficient", "NumberGreaterThanOrEquals", "0.5"]
    ]
    assert commands[4].advanced_filter is None
    assert "--advanced-filter data.runStatus StringIn Failed Canceled \\\n" in text
    events = example_events()
    back = reload([az_filter(c) for c in commands])
    assert_same_decisions([r.filter for r in ruleset.rules], back, events)


def test_examples_bicep_matches_arm():
    """The Bicep file declares the workspace as `existing` and, scoped to it, the same
    subscription resources as the ARM template, PartitionKey mapping included."""
    ruleset = load_examples()
    bicep = export_filters(
        ruleset, format="bicep", source_resource_id=None, eventhub_resource_id=None
    )
    arm = arm_resources(
        export_filters(ruleset, format="arm", source_resource_id=None, eventhub_resource_id=None)
    )
    assert "\nparam eventHubResourceId string\n" in bicep
    resources = bicep_resources(bicep)
    workspace_type, workspace = resources.pop("workspace")
    assert workspace_type.startswith("Microsoft.MachineLearningServices/workspaces@")
    assert workspace_type.endswith(" existing")
    assert workspace == {"name": "ws-ml-prod"}
    assert len(resources) == len(ruleset.rules) == len(arm)
    for (symbol, (kind, body)), rule, resource in zip(
        resources.items(), ruleset.rules, arm, strict=True
    ):
        assert symbol == "es_" + rule.name.replace("-", "_")
        assert kind == f"Microsoft.EventGrid/eventSubscriptions@{API_VERSION}"
        assert body["name"] == rule.name
        assert body["scope"] == Ref("workspace")
        destination = body["properties"]["destination"]
        assert destination["properties"]["resourceId"] == Ref("eventHubResourceId")
        assert destination["properties"]["deliveryAttributeMappings"] == [PARTITION_KEY]
        assert body["properties"]["filter"] == arm_literal(resource["properties"]["filter"])
        assert body["properties"]["eventDeliverySchema"] == "EventGridSchema"
    assert "value: json('0.5')" in bicep  # Bicep has no float literals


def test_partition_key_mapping_in_every_format():
    """DESIGN §4: each subscription maps the PartitionKey delivery property to the subject."""
    ruleset = load_examples()
    count = len(ruleset.rules)
    texts = {
        fmt: export_filters(ruleset, format=fmt, source_resource_id=None, eventhub_resource_id=HUB)
        for fmt in ("az", "arm", "bicep")
    }
    assert texts["az"].count("--delivery-attribute-mapping PartitionKey dynamic subject") == count
    arm = json.loads(texts["arm"])["resources"]
    mappings = [
        r["properties"]["destination"]["properties"]["deliveryAttributeMappings"] for r in arm
    ]
    assert mappings == [[PARTITION_KEY]] * count
    resources = bicep_resources(texts["bicep"])
    mappings = [
        body["properties"]["destination"]["properties"]["deliveryAttributeMappings"]
        for kind, body in resources.values()
        if kind.startswith("Microsoft.EventGrid/")
    ]
    assert mappings == [[PARTITION_KEY]] * count


# --- generated rules and events ------------------------------------------------------------------

TYPES = ["A.B", "a.b", "C", "All", "Microsoft.MachineLearningServices.RunCompleted"]
KEYS = [
    "data",
    "data.a",
    "Data.A",
    "data.b.c",
    "data.B.c",
    "data.b",
    "subject",
    "id",
    "ID",
    "type",
    "eventType",
    "topic",
    "source",
    "dataVersion",
    "specversion",
    "myext",
]
SEGMENTS = ["a", "A", "b", "B", "c"]
# ARM (`[`...`]`), Bicep (`'`, `\`, `${`) and az (`-`, `@`, `=`, space) all need care with these
TEXT = "aAbB/-@=[]${}'\\ "
strings = st.text(alphabet=TEXT, min_size=1, max_size=4)
subjects = st.text(alphabet=TEXT, max_size=4)
number_operands = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0.1, 0.5, -2.5, 1e-7, -1e-05, 1e16, 1e300, 2**53, 2**60, 2**60 + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(),
)


def loaded(number: int | float) -> Decimal:
    """The Decimal the rules loader makes of a YAML number."""
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))


@st.composite
def advanced_filters(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(list(Operator)))
    result: dict[str, Any] = {"operatorType": op.value, "key": draw(st.sampled_from(KEYS))}
    if op in (Op.IS_NULL_OR_UNDEFINED, Op.IS_NOT_NULL):
        pass
    elif op in (Op.NUMBER_IN_RANGE, Op.NUMBER_NOT_IN_RANGE):
        pairs = draw(st.lists(st.tuples(number_operands, number_operands), min_size=1, max_size=3))
        result["values"] = [sorted(pair, key=loaded) for pair in pairs]
    elif op is Op.BOOL_EQUALS:
        result["value"] = draw(st.booleans())
    elif op.value.startswith("Number") and op not in (Op.NUMBER_IN, Op.NUMBER_NOT_IN):
        result["value"] = draw(number_operands)
    elif op in (Op.NUMBER_IN, Op.NUMBER_NOT_IN):
        result["values"] = draw(st.lists(number_operands, min_size=1, max_size=3))
    else:
        result["values"] = draw(st.lists(strings, min_size=1, max_size=3))
    return result


@st.composite
def rule_filters(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if draw(st.booleans()):
        result["includedEventTypes"] = draw(st.lists(st.sampled_from(TYPES), min_size=1))
    for key in ("subjectBeginsWith", "subjectEndsWith"):
        if draw(st.booleans()):
            result[key] = draw(subjects)
    for key in ("isSubjectCaseSensitive", "enableAdvancedFilteringOnArrays"):
        if draw(st.booleans()):
            result[key] = draw(st.booleans())
    if draw(st.booleans()):
        result["advancedFilters"] = draw(st.lists(advanced_filters(), max_size=6))
    return result


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.1, 0.5, -2.5, 1e-7, 1e16, 1e300, 2**53, 2**60, 2**60 + 1]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),  # decoding rejects the others (§7)
    st.text(alphabet=TEXT, max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(SEGMENTS), inner),
    max_leaves=8,
)


@st.composite
def event_bodies(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(st.dictionaries(st.sampled_from(SEGMENTS), values, max_size=4) | values)
    common = {"subject": draw(subjects), "id": draw(st.sampled_from(["e1", "E1"])), "data": data}
    event_type = draw(st.sampled_from([*TYPES, "D"]))
    if draw(st.booleans()):
        body = {
            **common,
            "topic": TOPIC,
            "eventType": event_type,
            "eventTime": "2024-06-10T10:00:00Z",
            "dataVersion": draw(st.sampled_from(["", "1", "A"])),
        }
    else:
        body = {**common, "specversion": "1.0", "source": TOPIC, "type": event_type}
        body["time"] = "2024-06-10T10:00:00Z"
    if draw(st.booleans()):
        body["myext"] = draw(scalars)
    return body


rules_files = st.lists(rule_filters(), min_size=1, max_size=3)
event_lists = st.lists(event_bodies(), min_size=5, max_size=12)


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(filters=rules_files, bodies=event_lists)
def test_generated_rules_arm_round_trip(filters, bodies):
    """Any valid rules: the ARM export, loaded back, decides every event the same way."""
    ruleset = ruleset_of(filters)
    events = decode_all(bodies) + example_events()[:12]
    assert_same_decisions([r.filter for r in ruleset.rules], arm_round_trip(ruleset), events)


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(filters=rules_files, bodies=event_lists)
def test_generated_rules_az_round_trip(filters, bodies):
    """The az commands, parsed as az parses them, build the same filters - or the export
    refuses, and then some value really cannot pass through az unchanged."""
    ruleset = ruleset_of(filters)
    try:
        text = export_filters(
            ruleset, format="az", source_resource_id=None, eventhub_resource_id=HUB
        )
    except ValueError as exc:
        assert "export this rules file with --format arm or bicep" in str(exc)
        assert not all(az_can_express(f) for f in filters)
        return
    assert all(az_can_express(f) for f in filters)
    commands = az_commands(text)
    assert [c.name for c in commands] == [r.name for r in ruleset.rules]
    assert all(c.endpoint == HUB for c in commands)
    back = reload([az_filter(c) for c in commands])
    assert_same_decisions([r.filter for r in ruleset.rules], back, decode_all(bodies))


def az_can_express(flt: dict[str, Any]) -> bool:
    """Independent of the exporter: every multi-value string passes argparse and az unchanged,
    every number is a double, no single-value flag starts with a file reference."""
    several = [t for t in flt.get("includedEventTypes", []) if t.casefold() != "all"]
    for af in flt.get("advancedFilters", []):
        operands = af.get("values", [af.get("value")])
        flat = [v for item in operands for v in (item if isinstance(item, list) else [item])]
        for number in flat:  # az sends float(text), i.e. repr(the double), as JSON
            if type(number) is int and Decimal(repr(float(number))) != number:
                return False
        several += [af["key"], *(v for v in flat if isinstance(v, str))]
    single = [flt.get("subjectBeginsWith", ""), flt.get("subjectEndsWith", "")]
    return all(az_passes(v) for v in several) and all(az_single_passes(v) for v in single)


@settings(max_examples=40, deadline=None)
@given(filters=rules_files)
def test_generated_rules_bicep_matches_arm(filters):
    """Bicep and ARM carry the same filters, whatever characters or numbers they hold."""
    ruleset = ruleset_of(filters)
    kwargs = {"source_resource_id": None, "eventhub_resource_id": HUB}
    arm = arm_resources(export_filters(ruleset, format="arm", **kwargs))
    resources = bicep_resources(export_filters(ruleset, format="bicep", **kwargs))
    resources.pop("workspace")
    assert len(resources) == len(arm)
    for (_, body), resource in zip(resources.values(), arm, strict=True):
        assert body["name"] == resource["name"]
        assert body["properties"]["filter"] == arm_literal(resource["properties"]["filter"])


# --- details --------------------------------------------------------------------------------------


def one_filter(flt: dict[str, Any], fmt: str = "arm") -> Any:
    text = export_filters(
        ruleset_of([flt]), format=fmt, source_resource_id=None, eventhub_resource_id=None
    )
    if fmt == "arm":
        return json.loads(text)["resources"][0]["properties"]["filter"]
    if fmt == "az":
        return az_commands(text)[0]
    return text


def test_empty_filter_matches_everything():
    """A rule without a filter exports an empty filter (every event), no az filter flags."""
    assert one_filter({}) == {}
    command = one_filter({}, "az")
    assert command.included_event_types is None
    assert command.advanced_filter is None
    assert command.subject_begins_with is None
    assert "    filter: {}\n" in one_filter({}, "bicep")


def test_defaults_are_left_out_and_types_kept():
    """Unset and default fields do not appear; includedEventTypes does whenever it is set."""
    flt = {
        "includedEventTypes": ["A.B"],
        "subjectBeginsWith": "",
        "subjectEndsWith": "",
        "isSubjectCaseSensitive": False,
        "enableAdvancedFilteringOnArrays": False,
        "advancedFilters": [],
    }
    assert one_filter(flt) == {"includedEventTypes": ["A.B"]}
    flt = {"isSubjectCaseSensitive": True, "enableAdvancedFilteringOnArrays": True}
    assert one_filter(flt) == flt
    command = one_filter(flt, "az")
    assert (command.subject_case_sensitive, command.enable_advanced_filtering_on_arrays) == (
        "true",
        "true",
    )


def test_all_event_types_become_no_list():
    """Event Grid rejects `All` since 2019-02-01-preview; no list means every type."""
    assert one_filter({"includedEventTypes": ["All"]}) == {}
    assert one_filter({"includedEventTypes": ["A.B", "all"]}) == {}


@pytest.mark.parametrize(
    ("loaded_value", "exported"),
    [
        (5, 5),
        (-3, -3),
        (0.5, 0.5),
        (0.1, 0.1),
        (1.0, 1),
        (-0.0, 0),
        (1e-7, 1e-7),
        (1e300, 1e300),
        (2**53, 2**53),
        (2**60 + 1, 2**60 + 1),  # no double holds it: stays an exact JSON integer
        (10**400, 10**400),
    ],
)
def test_numbers_are_json_numbers_that_load_back_exactly(loaded_value, exported):
    """Decimal operands become JSON ints or floats, never strings, and load back equal."""
    flt = {"advancedFilters": [{"operatorType": "NumberLessThan", "key": "data.x", "value": 0}]}
    flt["advancedFilters"][0]["value"] = loaded_value
    arm = one_filter(flt)["advancedFilters"][0]["value"]
    assert arm == exported
    assert type(arm) is type(exported)
    assert reload([arm_literal(one_filter(flt))])[0] == reload([flt])[0]


def test_ranges_and_bools_keep_their_json_types():
    """Ranges are nested arrays of numbers, BoolEquals a JSON boolean, null checks bare."""
    flt = {
        "advancedFilters": [
            {"operatorType": "NumberInRange", "key": "data.x", "values": [[0, 10], [0.5, 1.5]]},
            {"operatorType": "BoolEquals", "key": "data.ok", "value": False},
            {"operatorType": "IsNotNull", "key": "data.runId"},
            {"operatorType": "NumberIn", "key": "data.n", "values": [1, 2.5]},
        ]
    }
    assert one_filter(flt) == flt


def test_numbers_beyond_json_or_double_are_refused():
    """Operands the formats cannot hold exactly are errors, not silently rounded."""
    flt = Filter(advanced_filters=(_af(Op.NUMBER_LESS_THAN, Decimal("Infinity")),))
    with pytest.raises(ValueError, match="not a finite number"):
        _export_filter(flt)
    flt = Filter(advanced_filters=(_af(Op.NUMBER_IN, Decimal("0.1000000000000000000001")),))
    with pytest.raises(ValueError, match="double"):
        _export_filter(flt)


def _af(op: Operator, value: Decimal) -> Any:
    from worker.filters import AdvancedFilter

    return AdvancedFilter(op, "data.x", (value,))


def _export_filter(flt: Filter) -> str:
    from worker.rules import Rule

    rule = Rule(name="r-1", filter=flt, actions=())
    ruleset = RuleSet(path="<test>", topics=(TOPIC,), rules=(rule,))
    return export_filters(ruleset, format="arm", source_resource_id=None, eventhub_resource_id=None)


def test_arm_escapes_bracketed_strings():
    """ARM evaluates "[...]" as an expression; the export writes "[[...]" for the literal."""
    flt = {
        "subjectBeginsWith": "[x]",
        "advancedFilters": [{"operatorType": "StringIn", "key": "data.a", "values": ["[a]", "[b"]}],
    }
    arm = one_filter(flt)
    assert arm["subjectBeginsWith"] == "[[x]"
    assert arm["advancedFilters"][0]["values"] == ["[[a]", "[b"]
    assert arm_literal(arm) == flt


def test_bicep_escapes_strings():
    """Quotes, backslashes, `${` (interpolation) and control characters are escaped."""
    flt = {"advancedFilters": [{"operatorType": "StringIn", "key": "data.a", "values": []}]}
    flt["advancedFilters"][0]["values"] = ["it's", "a\\b", "${x}", "$y", "tab\there", "\x01"]
    text = one_filter(flt, "bicep")
    assert r"'it\'s'" in text
    assert r"'a\\b'" in text
    assert r"'\${x}'" in text
    assert "'$y'" in text
    assert r"'tab\there'" in text
    assert r"'\u{1}'" in text
    body = bicep_resources(text)["es_rule_0"][1]
    assert body["properties"]["filter"] == flt


def test_az_argument_pitfalls():
    """BoolEquals false is '' (az uses bool()), negative range starts get a leading space,
    numbers are never in exponent form, and a subject starting with '-' uses `--flag=value`."""
    flt = {
        "subjectBeginsWith": "-x",
        "subjectEndsWith": "a=@b",
        "advancedFilters": [
            {"operatorType": "BoolEquals", "key": "data.ok", "value": False},
            {"operatorType": "BoolEquals", "key": "data.on", "value": True},
            {"operatorType": "NumberInRange", "key": "data.x", "values": [[-5, 3], [-0.5, 1e-7]]},
            {"operatorType": "NumberIn", "key": "data.y", "values": [-1e-05, 1e300, -2]},
            {"operatorType": "StringIn", "key": "data.s", "values": ["-", "a -b", "x y"]},
        ],
    }
    ruleset = ruleset_of([flt])
    text = export_filters(ruleset, format="az", source_resource_id=None, eventhub_resource_id=None)
    assert "--subject-begins-with=-x" in text
    assert "--subject-ends-with=a=@b" in text
    assert "--advanced-filter data.ok BoolEquals ''" in text
    assert "' -5,3'" in text
    assert "-0.00001" in text
    assert "-1e-05" not in text
    assert " 1e+300 " in text
    assert "# BoolEquals false is written ''" in text
    command = az_commands(text)[0]
    assert az_filter(command)["advancedFilters"][0] == {
        "operatorType": "BoolEquals",
        "key": "data.ok",
        "value": False,
    }
    back = reload([az_filter(command)])
    assert back == [r.filter for r in ruleset.rules]


@pytest.mark.parametrize(
    "flt",
    [
        {"advancedFilters": [{"operatorType": "StringIn", "key": "data.a", "values": ["-x"]}]},
        {"advancedFilters": [{"operatorType": "StringIn", "key": "data.a", "values": ["@f"]}]},
        {"advancedFilters": [{"operatorType": "StringIn", "key": "data.a", "values": ["k=@f"]}]},
        {"advancedFilters": [{"operatorType": "NumberIn", "key": "data.a", "values": [2**60 + 1]}]},
        {"subjectBeginsWith": "@file"},
        {"includedEventTypes": ["--x"]},
    ],
)
def test_az_refuses_what_it_cannot_pass(flt):
    """Values az would take for an option, a file or a rounded double: an error naming the rule
    and pointing to the ARM and Bicep formats, which carry them fine."""
    ruleset = ruleset_of([flt])
    with pytest.raises(ValueError, match=r"rule 'rule-0'.*--format arm or bicep"):
        export_filters(ruleset, format="az", source_resource_id=None, eventhub_resource_id=None)
    back = arm_round_trip(ruleset)
    assert back == [r.filter for r in ruleset.rules]


def test_source_and_endpoint():
    """`source_resource_id` replaces the topics; the hub id replaces the placeholder (az) and
    becomes the parameter's default (ARM, Bicep)."""
    ruleset = load_examples()
    other = TOPIC
    commands = az_commands(
        export_filters(ruleset, format="az", source_resource_id=other, eventhub_resource_id=HUB)
    )
    assert {c.source_resource_id for c in commands} == {other}
    assert {c.endpoint for c in commands} == {HUB}
    template = json.loads(
        export_filters(ruleset, format="arm", source_resource_id=other, eventhub_resource_id=HUB)
    )
    assert template["parameters"]["eventHubResourceId"]["defaultValue"] == HUB
    assert {r["scope"] for r in template["resources"]} == {
        "Microsoft.MachineLearningServices/workspaces/ws-demo"
    }
    assert "rg-demo" in template["metadata"]["description"]
    bicep = export_filters(
        ruleset, format="bicep", source_resource_id=other, eventhub_resource_id=HUB
    )
    assert f"param eventHubResourceId string = '{HUB}'\n" in bicep
    assert bicep_resources(bicep)["workspace"][1] == {"name": "ws-demo"}


def test_several_topics():
    """One subscription per rule and topic; a template needs them in one resource group."""
    same_group = TOPIC.replace("ws-demo", "ws-other")
    ruleset = ruleset_of([{}, {"includedEventTypes": ["A.B"]}], topics=[TOPIC, same_group])
    commands = az_commands(
        export_filters(ruleset, format="az", source_resource_id=None, eventhub_resource_id=None)
    )
    assert [(c.source_resource_id, c.name) for c in commands] == [
        (TOPIC, "rule-0"),
        (TOPIC, "rule-1"),
        (same_group, "rule-0"),
        (same_group, "rule-1"),
    ]
    arm = arm_resources(
        export_filters(ruleset, format="arm", source_resource_id=None, eventhub_resource_id=None)
    )
    assert [r["scope"].rsplit("/", 1)[1] for r in arm] == ["ws-demo"] * 2 + ["ws-other"] * 2
    resources = bicep_resources(
        export_filters(ruleset, format="bicep", source_resource_id=None, eventhub_resource_id=None)
    )
    assert sorted(resources) == [
        "es_rule_0_1",
        "es_rule_0_2",
        "es_rule_1_1",
        "es_rule_1_2",
        "workspace",
        "workspace2",
    ]
    assert resources["es_rule_1_2"][1]["scope"] == Ref("workspace2")
    elsewhere = TOPIC.replace("rg-demo", "rg-other")
    ruleset = ruleset_of([{}], topics=[TOPIC, elsewhere])
    for fmt in ("arm", "bicep"):
        with pytest.raises(ValueError, match="different resource groups"):
            export_filters(ruleset, format=fmt, source_resource_id=None, eventhub_resource_id=None)
    assert (
        len(
            az_commands(
                export_filters(
                    ruleset, format="az", source_resource_id=None, eventhub_resource_id=None
                )
            )
        )
        == 2
    )


def test_topic_must_be_an_arm_id_for_templates():
    """A template scopes to a resource; `az` takes the topic as it is."""
    ruleset = ruleset_of([{}], topics=["my-topic"])
    for fmt in ("arm", "bicep"):
        with pytest.raises(ValueError, match="not an ARM resource id"):
            export_filters(ruleset, format=fmt, source_resource_id=None, eventhub_resource_id=None)
    text = export_filters(ruleset, format="az", source_resource_id=None, eventhub_resource_id=None)
    assert az_commands(text)[0].source_resource_id == "my-topic"


def test_delivery_schema():
    """The delivery schema is az's lower-case value and ARM's/Bicep's PascalCase one."""
    ruleset = ruleset_of([{}])
    kwargs = {"source_resource_id": None, "eventhub_resource_id": None}
    az = export_filters(ruleset, format="az", schema="CloudEventSchemaV1_0", **kwargs)
    assert az_commands(az)[0].event_delivery_schema == "cloudeventschemav1_0"
    arm = json.loads(export_filters(ruleset, format="arm", schema="cloudeventschemav1_0", **kwargs))
    assert arm["resources"][0]["properties"]["eventDeliverySchema"] == "CloudEventSchemaV1_0"
    bicep = export_filters(ruleset, format="bicep", **kwargs)
    assert "eventDeliverySchema: 'EventGridSchema'" in bicep
    with pytest.raises(ValueError, match="delivery schema"):
        export_filters(ruleset, format="arm", schema="custominputschema", **kwargs)
    with pytest.raises(ValueError, match="export format"):
        export_filters(ruleset, format="terraform", **kwargs)


def test_subscription_names():
    """Named after the rule; 3-64 characters of letters, digits and '-', distinct."""
    long = "a" * 70
    names = subscription_names(["notify", "x", long, "a" * 55 + "-" + "b" * 14])
    assert names["notify"] == "notify"
    assert names["x"] == "x-sub"
    assert len(names[long]) == 64
    assert names[long].startswith("a" * 55 + "-")
    assert len(set(names.values())) == 4
    assert all(re.fullmatch(r"[A-Za-z0-9-]{3,64}", n) for n in names.values())
    clash = subscription_names(["x", "x-sub"])
    assert clash["x"] == "x-sub"
    assert clash["x-sub"] != "x-sub"
    assert re.fullmatch(r"[A-Za-z0-9-]{3,64}", clash["x-sub"])


def test_output_is_plain_text():
    """The export is text for stdout: it ends with one newline and every format is non-empty."""
    ruleset = load_examples()
    for fmt in ("az", "arm", "bicep"):
        text = export_filters(
            ruleset, format=fmt, source_resource_id=None, eventhub_resource_id=None
        )
        assert text.endswith("\n") and not text.endswith("\n\n")
        assert all(rule.name in text for rule in ruleset.rules)
