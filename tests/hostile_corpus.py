"""The regression corpus of hostile messages (issue 12, DESIGN §7): each one broke a
partition, leaked a secret or lost a dead letter once. Tests replay it through `replay`
and `run`; `make fuzz` seeds its generated bodies with it.

Each case is one Event Hubs message body and what it must become: `invalid` bodies or
elements (dead-lettered with a reason), events that are `planned`, and the number of
dead-letter records it causes (invalid elements + render errors + failed actions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.conftest import TOPIC, eg

__all__ = ["CASES", "SECRET_ENV", "Case", "body_lines", "rules_text"]

# What an attacker would love to read: any of these in an output is a leak.
SECRET_ENV = {
    "HOOK_TOKEN": "hook-token-7d1f0c2a9b",
    "HMAC_KEY": "hmac-key-5e8a21c4f7",
}


@dataclass(frozen=True)
class Case:
    name: str
    body: str  # one message body (a JSON-lines line: no raw newline)
    invalid: int = 0  # rejected bodies / array elements
    events: int = 0  # decoded events


def _event(event_id: str, **fields: Any) -> dict[str, Any]:
    return eg(event_id, subject=fields.pop("subject", f"runs/{event_id}"), **fields)


def _dumps(obj: Any) -> str:
    return json.dumps(obj)  # ASCII: lone surrogates and private-use characters as escapes


def _with_raw(obj: dict[str, Any], placeholder: str, raw: str) -> str:
    """A body with `raw` JSON text (a huge number, NaN) spliced in where `placeholder` is."""
    return _dumps(obj).replace(f'"{placeholder}"', raw)


_HUGE = "9" * 5000

CASES: list[Case] = [
    Case("huge-integer", _with_raw(_event("c-huge", data={"n": "@N"}), "@N", _HUGE), invalid=1),
    Case(
        "huge-integer-in-array",
        "[" + _dumps(_event("c-arr-ok")) + "," + _with_raw(_event("c-arr"), "c-arr", _HUGE) + "]",
        invalid=1,
        events=1,
    ),
    Case("time-1-east", _dumps(_event("c-t1", time="0001-01-01T00:00:00+01:00")), invalid=1),
    Case(
        "time-year-9999-west", _dumps(_event("c-t2", time="9999-12-31T23:59:59-01:00")), invalid=1
    ),
    Case("time-leap-9999", _dumps(_event("c-t3", time="9999-12-31T23:59:60Z")), invalid=1),
    Case("nan", _with_raw(_event("c-nan", data={"x": "@X"}), "@X", "NaN"), invalid=1),
    Case("infinity", _with_raw(_event("c-inf", data={"x": "@X"}), "@X", "-Infinity"), invalid=1),
    Case("deep-nesting", "[" * 100_000 + "]" * 100_000, invalid=1),
    Case("fan-out-8000-bad-elements", "[" + ",".join(["1"] * 8000) + "]", invalid=8000),
    Case("lone-surrogate-subject", _dumps(_event("c-sur", subject="runs/\udc80")), events=1),
    Case("lone-surrogate-data", _dumps(_event("c-sur2", data={"note": "a\ud800b"})), events=1),
    Case(
        "marker-exfiltration",
        _dumps(
            _event(
                "c-mark",
                data={
                    "note": "".join(f"\ue000{n}\ue001 ${{{n}}} " for n in SECRET_ENV)
                    + "\ue000AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING\ue001"
                },
            )
        ),
        events=1,
    ),
    Case(
        "email-recipient-injection",
        _dumps(_event("c-mail", data={"to": "a@example.com, evil@example.net"})),
        events=1,
    ),
    Case(
        "email-header-injection",
        _dumps(_event("c-crlf", data={"to": "a@example.com\r\nBcc: evil@example.net"})),
        events=1,
    ),
    Case(
        "html-injection",
        _dumps(_event("c-html", data={"note": '<script>alert(1)</script>" onload="x'})),
        events=1,
    ),
    Case("private-use-everywhere", _dumps(_event("c-pua\ue000", subject="\uf8ff\ue002")), events=1),
    Case("far-future-time", _dumps(_event("c-future", time="9000-01-01T00:00:00Z")), events=1),
]


def body_lines(cases: list[Case] = CASES) -> str:
    """The corpus as a JSON-lines file: each hostile body followed by a plain event, so a
    partition that stopped on one would show as a missing plain event after it."""
    lines = []
    for index, case in enumerate(cases):
        lines.append(case.body)
        lines.append(_dumps(_event(f"plain-{index}", time="2024-06-10T10:00:00Z")))
    return "\n".join(lines) + "\n"


def rules_text(*, hook_url: str = "https://hooks.example.invalid/x") -> str:
    """A rules file that renders every attacker-controlled field into every kind of output."""
    return f"""version: 1
topics: ['{TOPIC}']
ordering: {{grace: 0s}}
rules:
  - name: everything
    actions:
      - {{type: log, id: note, message: '{{{{ event.subject }}}} {{{{ data }}}}'}}
      - type: webhook
        id: hook
        url: '{hook_url}'
        headers: {{Authorization: 'Bearer ${{HOOK_TOKEN}}'}}
        hmac_secret: '${{HMAC_KEY}}'
        body: {{subject: '{{{{ event.subject }}}}', data: '{{{{ data }}}}'}}
"""
