"""`export-filters`: the Event Grid subscriptions equivalent to a rules file.

A rule's filter is an Event Grid `EventSubscriptionFilter` already (DESIGN §3), so each rule
becomes one subscription (named after the rule) on the workspace, delivering to the Event Hub the
worker reads, with the `PartitionKey` delivery property mapped to the subject (DESIGN §4: every
event of one object in one partition). Three spellings of the same subscriptions:

- `az`: one `az eventgrid event-subscription create` per rule and topic, shell-quoted;
- `arm`: one ARM template, a `Microsoft.EventGrid/eventSubscriptions` extension resource per rule
  scoped to the workspace;
- `bicep`: the same template in Bicep.

Pure code: a RuleSet in, text out. Where a value cannot be written faithfully in a format (a
number JSON cannot hold, a value `az` would read as an option or a file), a ValueError says so
rather than exporting a subscription that filters differently from the rule.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from hashlib import sha256
from typing import Any

from worker.filters import (
    NO_VALUE_OPERATORS,
    NUMBER_OPERATORS,
    RANGE_OPERATORS,
    SINGLE_VALUE_OPERATORS,
    AdvancedFilter,
    Filter,
    Operator,
)
from worker.rules import RuleSet

__all__ = [
    "API_VERSION",
    "EVENT_HUB_PLACEHOLDER",
    "FORMATS",
    "export_filters",
    "subscription_filter",
    "subscription_names",
]

# Microsoft.EventGrid's GA API version with deliveryAttributeMappings and every operator.
API_VERSION = "2022-06-15"
_WORKSPACE_TYPE = "Microsoft.MachineLearningServices/workspaces"
_WORKSPACE_API_VERSION = "2024-04-01"  # only types the `existing` workspace in Bicep
EVENT_HUB_PLACEHOLDER = "<EVENT_HUB_RESOURCE_ID>"
FORMATS = ("az", "arm", "bicep")
_SCHEMAS = {  # what users may pass → ARM's eventDeliverySchema
    "eventgridschema": "EventGridSchema",
    "eventgrid": "EventGridSchema",
    "cloudeventschemav1_0": "CloudEventSchemaV1_0",
    "cloudevents": "CloudEventSchemaV1_0",
}
_PARTITION_KEY = {
    "name": "PartitionKey",
    "type": "Dynamic",
    "properties": {"sourceField": "subject"},
}
_ARM_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
_PARAMETER = "eventHubResourceId"
_PARAMETER_HELP = (
    "Resource id of the Event Hub the worker reads "
    "(/subscriptions/.../providers/Microsoft.EventHub/namespaces/<ns>/eventhubs/<hub>)"
)

# Event subscription names: 3-64 characters, letters, digits and '-'.
_NAME_MIN, _NAME_MAX = 3, 64
_ARM_ID = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/(?P<namespace>[^/]+)/(?P<path>[^/]+/[^/]+(?:/[^/]+/[^/]+)*)/?\Z",
    re.IGNORECASE,
)
# JSON consumers that read numbers as doubles hold every integer up to 2**53 exactly.
_EXACT_DOUBLE_INT = 2**53
_BICEP_INT_MAX = 2**63 - 1


def export_filters(
    ruleset: RuleSet,
    *,
    format: str,
    source_resource_id: str | None,
    eventhub_resource_id: str | None,
    schema: str = "eventgridschema",
) -> str:
    """The Event Grid subscriptions for `ruleset`'s rules, as `az` commands, ARM or Bicep.

    One subscription per rule (and per topic: the source is `source_resource_id`, or else each
    of the file's topics), delivering to `eventhub_resource_id` (a placeholder, or a template
    parameter without default, when None) with `PartitionKey` mapped to the subject.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    delivery_schema = _SCHEMAS.get(schema.casefold())
    if delivery_schema is None:
        raise ValueError(
            f"unknown event delivery schema {schema!r}; use eventgridschema or cloudeventschemav1_0"
        )
    sources = _unique([source_resource_id] if source_resource_id else ruleset.topics)
    names = subscription_names([rule.name for rule in ruleset.rules])
    subscriptions = [
        _Subscription(
            name=names[rule.name], rule=rule.name, filter=subscription_filter(rule.filter)
        )
        for rule in ruleset.rules
    ]
    if format == "az":
        return _az(ruleset, sources, subscriptions, eventhub_resource_id, delivery_schema)
    scopes = _scopes(sources)
    if format == "arm":
        return _arm(ruleset, scopes, subscriptions, eventhub_resource_id, delivery_schema)
    return _bicep(ruleset, scopes, subscriptions, eventhub_resource_id, delivery_schema)


# --- the subscription, format-independent ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Subscription:
    name: str
    rule: str
    filter: dict[str, Any]


def subscription_names(rule_names: Sequence[str]) -> dict[str, str]:
    """rule name → event subscription name: the rule's own name when it fits 3-64 characters.

    A longer name keeps its first 55 characters plus 8 hex digits of its hash; a shorter one
    gets `-sub` appended; a name that would collide with another rule's gets the hash form.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    for rule in rule_names:
        name = rule
        if len(name) > _NAME_MAX:
            name = _hashed(rule)
        elif len(name) < _NAME_MIN:
            name = f"{name}-sub"
        if name.casefold() in taken:
            name = _hashed(rule)
        taken.add(name.casefold())
        names[rule] = name
    return names


def _hashed(rule: str) -> str:
    digest = sha256(rule.encode("utf-8")).hexdigest()[:8]
    return f"{rule[: _NAME_MAX - 9]}-{digest}"


def subscription_filter(flt: Filter) -> dict[str, Any]:
    """The ARM `filter` object of a rule's filter, defaults left out.

    `includedEventTypes` containing `All` is left out too: Event Grid rejects `All` since API
    2019-02-01-preview (`az` drops it with a warning), and no list means every type, as `All`
    means to the worker.
    """
    result: dict[str, Any] = {}
    types = flt.included_event_types
    if types is not None and not any(t.casefold() == "all" for t in types):
        result["includedEventTypes"] = list(types)
    if flt.subject_begins_with:
        result["subjectBeginsWith"] = flt.subject_begins_with
    if flt.subject_ends_with:
        result["subjectEndsWith"] = flt.subject_ends_with
    if flt.is_subject_case_sensitive:
        result["isSubjectCaseSensitive"] = True
    if flt.enable_advanced_filtering_on_arrays:
        result["enableAdvancedFilteringOnArrays"] = True
    if flt.advanced_filters:
        result["advancedFilters"] = [_advanced_filter(af) for af in flt.advanced_filters]
    return result


def _advanced_filter(af: AdvancedFilter) -> dict[str, Any]:
    op = af.operator
    result: dict[str, Any] = {"operatorType": op.value, "key": af.key}
    if op in NO_VALUE_OPERATORS:
        return result
    if op in RANGE_OPERATORS:
        result["values"] = [[_json_number(low), _json_number(high)] for low, high in af.values]
    elif op in NUMBER_OPERATORS:
        numbers = [_json_number(v) for v in af.values]
        if op in SINGLE_VALUE_OPERATORS:
            result["value"] = numbers[0]
        else:
            result["values"] = numbers
    elif op is Operator.BOOL_EQUALS:
        result["value"] = bool(af.values[0])
    else:
        result["values"] = list(af.values)
    return result


def _json_number(value: Any) -> int | float:
    """A filter operand as the JSON number that loads back to the same Decimal.

    Integers up to 2**53 stay integers; otherwise the float whose repr is the operand (the
    rules loader makes every non-integer that way); an integer no double holds stays an
    integer (JSON allows any length). Anything else would change the filter: an error.
    """
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"filter value {value} is not a finite number; JSON cannot hold it")
    integral = number == number.to_integral_value()
    if integral and abs(number) <= _EXACT_DOUBLE_INT:
        return int(number)
    as_float = float(number)
    if as_float == as_float and abs(as_float) != float("inf") and Decimal(repr(as_float)) == number:
        return as_float
    if integral:
        return int(number)
    raise ValueError(
        f"filter value {value} has more digits than a double holds; Event Grid stores filter "
        "numbers as doubles, so it would compare with a different number"
    )


def _unique(values: Iterable[str]) -> list[str]:
    """Topics compare case-insensitively (ARM ids come back re-cased): keep the first spelling."""
    seen: set[str] = set()
    result = []
    for value in values:
        if value.casefold() not in seen:
            seen.add(value.casefold())
            result.append(value)
    return result


# --- az -----------------------------------------------------------------------------------

_AZ_CREATE = "az eventgrid event-subscription create"
_AZ_SCHEMAS = {"EventGridSchema": "eventgridschema", "CloudEventSchemaV1_0": "cloudeventschemav1_0"}
_AZ_BOOL_NOTE = (
    "# BoolEquals false is written '' because az reads the value with Python's bool(),\n"
    "# which is true for any non-empty text ('false' included)."
)
# argparse takes an argument starting with '-' as a value only when it looks like this
_ARGPARSE_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _az(
    ruleset: RuleSet,
    sources: Sequence[str],
    subscriptions: Sequence[_Subscription],
    eventhub_resource_id: str | None,
    delivery_schema: str,
) -> str:
    endpoint = eventhub_resource_id or EVENT_HUB_PLACEHOLDER
    blocks = [
        f"# Event Grid subscriptions for the rules in {_one_line(ruleset.path)}"
        " (aml-event-worker export-filters).\n"
        "# Each delivers to the Event Hub with the PartitionKey delivery property set to the\n"
        "# event's subject, so all events of one run or model land in one partition."
        + ("" if eventhub_resource_id else f"\n# Replace {EVENT_HUB_PLACEHOLDER} first.")
    ]
    for source in sources:
        for subscription in subscriptions:
            blocks.append(_az_command(subscription, source, endpoint, delivery_schema))
    return "\n\n".join(blocks) + "\n"


def _az_command(
    subscription: _Subscription, source: str, endpoint: str, delivery_schema: str
) -> str:
    where = f"rule '{subscription.rule}'"
    flt = subscription.filter
    notes = [f"# rule {subscription.rule}"]
    lines = [
        _AZ_CREATE,
        _az_flag("--name", subscription.name, where),
        _az_flag("--source-resource-id", source, where),
        "--endpoint-type eventhub",
        _az_flag("--endpoint", endpoint, where),
    ]
    if "includedEventTypes" in flt:
        types = [_az_value(t, where, "event type") for t in flt["includedEventTypes"]]
        lines.append("--included-event-types " + " ".join(types))
    if "subjectBeginsWith" in flt:
        lines.append(_az_flag("--subject-begins-with", flt["subjectBeginsWith"], where))
    if "subjectEndsWith" in flt:
        lines.append(_az_flag("--subject-ends-with", flt["subjectEndsWith"], where))
    if flt.get("isSubjectCaseSensitive"):
        lines.append("--subject-case-sensitive true")
    if flt.get("enableAdvancedFilteringOnArrays"):
        lines.append("--enable-advanced-filtering-on-arrays true")
    for af in flt.get("advancedFilters", ()):
        words = [_az_value(af["key"], where, "filter key"), af["operatorType"]]
        if "value" in af and isinstance(af["value"], bool):
            if not af["value"] and _AZ_BOOL_NOTE not in notes:
                notes.append(_AZ_BOOL_NOTE)
            words.append("true" if af["value"] else "''")
        elif "value" in af:
            words.append(_az_number(af["value"], where))
        elif af["operatorType"] in (Operator.NUMBER_IN_RANGE, Operator.NUMBER_NOT_IN_RANGE):
            words.extend(_az_range(low, high, where) for low, high in af["values"])
        elif af["operatorType"] in (Operator.NUMBER_IN, Operator.NUMBER_NOT_IN):
            words.extend(_az_number(v, where) for v in af["values"])
        else:
            words.extend(_az_value(v, where, "filter value") for v in af.get("values", ()))
        lines.append("--advanced-filter " + " ".join(words))
    lines.append("--delivery-attribute-mapping PartitionKey dynamic subject")
    lines.append(f"--event-delivery-schema {_AZ_SCHEMAS[delivery_schema]}")
    return "\n".join(notes) + "\n" + " \\\n    ".join(lines)


def _az_flag(flag: str, value: str, where: str) -> str:
    """`--flag VALUE`, or `--flag=VALUE` when argparse would read VALUE as an option."""
    if value.startswith("-") or _az_reads_file(value):
        if value.startswith("@") and len(value) > 1:
            raise _az_error(where, f"{flag} value {value!r}")
        return f"{flag}={shlex.quote(value)}"
    return f"{flag} {shlex.quote(value)}"


def _az_value(value: str, where: str, what: str) -> str:
    """One of several values after a flag: argparse and az must pass it through unchanged."""
    option_like = (
        value.startswith("-")
        and len(value) > 1
        and " " not in value
        and not _ARGPARSE_NEGATIVE_NUMBER.match(value)
    )
    if option_like or _az_reads_file(value):
        raise _az_error(where, f"{what} {value!r}")
    return shlex.quote(value)


def _az_reads_file(arg: str) -> bool:
    """az replaces `@path` (also after the first '=') with the contents of that file."""
    tail = arg.split("=", 1)[-1]
    return tail.startswith("@") and len(tail) > 1


def _az_error(where: str, what: str) -> ValueError:
    return ValueError(
        f"{where}: az cannot pass the {what} unchanged (it would read it as an option or a "
        "file name); export this rules file with --format arm or bicep instead"
    )


def _az_number(value: int | float, where: str) -> str:
    """A number az's float() reads back as the same double; a negative one never in exponent
    form (argparse reads '-1e-05' as an option but '-0.00001' as a value)."""
    if isinstance(value, int):
        # az sends float(text) as JSON, i.e. repr(the double): that must still be `value`
        if Decimal(repr(float(value))) != value:
            raise ValueError(
                f"{where}: az reads filter numbers as doubles, which cannot hold {value}; "
                "export this rules file with --format arm or bicep instead"
            )
        return str(value)
    text = repr(value)
    if text.startswith("-") and not _ARGPARSE_NEGATIVE_NUMBER.match(text):
        text = format(Decimal(text), "f")
    return text


def _az_range(low: int | float, high: int | float, where: str) -> str:
    text = f"{_az_number(low, where)},{_az_number(high, where)}"
    # argparse takes '-5,3' for an option; az splits on ',' and float() ignores the space
    return shlex.quote(" " + text) if text.startswith("-") else text


# --- ARM and Bicep ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scope:
    resource_id: str
    subscription_id: str
    resource_group: str
    resource_type: str  # e.g. Microsoft.MachineLearningServices/workspaces
    name: str  # e.g. ws-ml-prod
    relative: str  # ARM's `scope` form: Microsoft.MachineLearningServices/workspaces/ws-ml-prod


def _scopes(sources: Sequence[str]) -> list[_Scope]:
    """Each source as an ARM resource in the one resource group the template deploys to."""
    scopes = []
    for source in sources:
        match = _ARM_ID.match(source)
        if match is None:
            raise ValueError(
                f"topic {source!r} is not an ARM resource id (/subscriptions/<id>/resourceGroups/"
                "<rg>/providers/<namespace>/<type>/<name>); pass the workspace's id as the source"
            )
        parts = match["path"].split("/")
        types, names = parts[0::2], parts[1::2]
        scopes.append(
            _Scope(
                resource_id=source,
                subscription_id=match["sub"],
                resource_group=match["rg"],
                resource_type="/".join([match["namespace"], *types]),
                name="/".join(names),
                relative=f"{match['namespace']}/{match['path']}",
            )
        )
    groups = {(s.subscription_id.casefold(), s.resource_group.casefold()) for s in scopes}
    if len(groups) > 1:
        raise ValueError(
            "the topics are in different resource groups, and a template deploys to one; export "
            "one workspace at a time by giving its id as the source"
        )
    return scopes


def _properties(
    subscription: _Subscription, resource_id: Any, delivery_schema: str
) -> dict[str, Any]:
    """`properties` of one eventSubscriptions resource; `resource_id` is the hub's (expression)."""
    return {
        "destination": {
            "endpointType": "EventHub",
            "properties": {
                "resourceId": resource_id,
                "deliveryAttributeMappings": [_PARTITION_KEY],
            },
        },
        "filter": subscription.filter,
        "eventDeliverySchema": delivery_schema,
    }


def _deploy_note(ruleset: RuleSet, scopes: Sequence[_Scope]) -> str:
    scope = scopes[0]
    return (
        f"Event Grid subscriptions for the rules in {_one_line(ruleset.path)}, generated by "
        "aml-event-worker export-filters. Deploy to the workspace's resource group "
        f"{scope.resource_group} (subscription {scope.subscription_id}): az deployment group "
        f"create --subscription {scope.subscription_id} --resource-group {scope.resource_group} "
        "--template-file FILE"
    )


def _arm(
    ruleset: RuleSet,
    scopes: Sequence[_Scope],
    subscriptions: Sequence[_Subscription],
    eventhub_resource_id: str | None,
    delivery_schema: str,
) -> str:
    parameter: dict[str, Any] = {"type": "string"}
    if eventhub_resource_id:
        parameter["defaultValue"] = _arm_literal(eventhub_resource_id)
    parameter["metadata"] = {"description": _PARAMETER_HELP}
    resources = [
        {
            "type": "Microsoft.EventGrid/eventSubscriptions",
            "apiVersion": API_VERSION,
            "name": _arm_literal(subscription.name),
            "scope": _arm_literal(scope.relative),
            "properties": _arm_literal(
                _properties(subscription, _PARAMETER_EXPRESSION, delivery_schema)
            ),
        }
        for scope in scopes
        for subscription in subscriptions
    ]
    template = {
        "$schema": _ARM_SCHEMA,
        "contentVersion": "1.0.0.0",
        "metadata": {"description": _deploy_note(ruleset, scopes)},
        "parameters": {_PARAMETER: parameter},
        "resources": resources,
    }
    return json.dumps(template, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


class _Expression(str):
    """A string ARM must evaluate (left unescaped by _arm_literal)."""

    __slots__ = ()


_PARAMETER_EXPRESSION = _Expression(f"[parameters('{_PARAMETER}')]")


def _arm_literal(value: Any) -> Any:
    """ARM evaluates a string in `[...]` as an expression; `[[...]` is the literal `[...]`."""
    if isinstance(value, _Expression):
        return str(value)
    if isinstance(value, str):
        return "[" + value if value.startswith("[") and value.endswith("]") else value
    if isinstance(value, Mapping):
        return {key: _arm_literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_arm_literal(item) for item in value]
    return value


class _Reference(str):
    """A Bicep expression (a parameter or resource name), written as is."""

    __slots__ = ()


def _bicep(
    ruleset: RuleSet,
    scopes: Sequence[_Scope],
    subscriptions: Sequence[_Subscription],
    eventhub_resource_id: str | None,
    delivery_schema: str,
) -> str:
    for scope in scopes:
        if scope.resource_type.casefold() != _WORKSPACE_TYPE.casefold():
            raise ValueError(
                f"topic {scope.resource_id!r} is not an Azure ML workspace "
                f"({_WORKSPACE_TYPE}); the Bicep export references the workspace as `existing`"
            )
    out = [
        *(f"// {line}" for line in _wrap(_deploy_note(ruleset, scopes))),
        "",
        f"@description({_bicep_string(_PARAMETER_HELP)})",
        f"param {_PARAMETER} string"
        + (f" = {_bicep_string(eventhub_resource_id)}" if eventhub_resource_id else ""),
    ]
    workspace_names = []
    for index, scope in enumerate(scopes):
        symbol = "workspace" if index == 0 else f"workspace{index + 1}"
        workspace_names.append(symbol)
        out += [
            "",
            f"resource {symbol} '{_WORKSPACE_TYPE}@{_WORKSPACE_API_VERSION}' existing = {{",
            f"  name: {_bicep_string(scope.name)}",
            "}",
        ]
    for index, workspace in enumerate(workspace_names):
        for subscription in subscriptions:
            symbol = "es_" + subscription.name.replace("-", "_")
            if len(workspace_names) > 1:
                symbol += f"_{index + 1}"
            body = {
                "name": subscription.name,
                "scope": _Reference(workspace),
                "properties": _properties(subscription, _Reference(_PARAMETER), delivery_schema),
            }
            out += [
                "",
                f"// rule {subscription.rule}",
                f"resource {symbol} 'Microsoft.EventGrid/eventSubscriptions@{API_VERSION}' = "
                + _bicep_value(body, 0),
            ]
    return "\n".join(out) + "\n"


def _bicep_value(value: Any, depth: int) -> str:
    indent = "  " * (depth + 1)
    closing = "  " * depth
    if isinstance(value, _Reference):
        return str(value)
    if isinstance(value, str):
        return _bicep_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Bicep integers are 64-bit; json() reads any JSON number (Bicep has no float literals)
        return str(value) if abs(value) <= _BICEP_INT_MAX else f"json('{value}')"
    if isinstance(value, float):
        return f"json('{value!r}')"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{indent}{key}: {_bicep_value(item, depth + 1)}" for key, item in value.items()]
        return "{\n" + "\n".join(items) + f"\n{closing}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [f"{indent}{_bicep_value(item, depth + 1)}" for item in value]
        return "[\n" + "\n".join(items) + f"\n{closing}]"
    raise TypeError(f"cannot write {type(value).__name__} in Bicep")


_BICEP_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _bicep_string(text: str) -> str:
    """A single-quoted Bicep string: escapes, `\\${` so `${` is not interpolation."""
    out = []
    for index, char in enumerate(text):
        if char in _BICEP_ESCAPES:
            out.append(_BICEP_ESCAPES[char])
        elif char == "$" and text[index + 1 : index + 2] == "{":
            out.append("\\$")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{{{ord(char):X}}}")
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _wrap(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines
