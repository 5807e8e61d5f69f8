"""Secrets enter an output only where the rules file put a reference (DESIGN §3, §7).

Event data is hostile: it may carry the old in-band markers (private-use characters around
a variable's name), `${NAME}` text, the escape character, or anything else. Whatever it
carries, the revealed parameters are exactly the template's text with the event's values
where the template put them and the declared secrets where the template named them.
"""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError

from tests.conftest import TOPIC, eg, event_of
from tests.test_run_actions import WebhookPeer
from tests.workers import Env
from worker.plan import plan_rule
from worker.rules import parse_rules
from worker.templates import SecretRef, SecretText, Template, mask, reveal, template_context

ENVIRON = {
    "TOKEN": "tok-SECRETVALUE-1",
    "OTHER": "other-SECRETVALUE-2",
    "AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING": "conn-SECRETVALUE-3",
}
NAMES = sorted(ENVIRON)

# Text an attacker controls: markers of every kind, reference syntax, variable names.
_PIECES = [
    "\ue000",
    "\ue001",
    "\ue002",
    "\ue0020",
    "\ue0021",
    "${",
    "}",
    "$",
    "{{",
    "\r\n",
    *NAMES,
    *(f"\ue000{n}\ue001" for n in NAMES),
    *(f"${{{n}}}" for n in NAMES),
]
hostile_text = st.lists(
    st.one_of(
        st.sampled_from(_PIECES),
        st.text(string.ascii_letters + string.digits + "_-", max_size=4),
        st.characters(min_codepoint=0xE000, max_codepoint=0xF8FF).map(str),
    ),
    max_size=12,
).map("".join)


def _context(data: dict[str, Any], subject: str = "runs/r1") -> Any:
    return template_context(event_of(eg(data=data, subject=subject)), "rule")


TEMPLATES = [
    # (template, expected revealed text from data a/b and the environment)
    ("{{ data.a }}|${TOKEN}|{{ data.b }}", lambda a, b: f"{a}|{ENVIRON['TOKEN']}|{b}"),
    ("{% if data.a %}${TOKEN}{% endif %}{{ data.b }}", None),
    ("pre-${OTHER}-{{ data.a | upper }}", lambda a, b: f"pre-{ENVIRON['OTHER']}-{a.upper()}"),
    ("{{ data.a }}{{ data.b }}", lambda a, b: a + b),  # no secret: plain str
]


@settings(max_examples=150, deadline=None)
@given(a=hostile_text, b=hostile_text, which=st.integers(0, len(TEMPLATES) - 1))
def test_event_data_never_names_a_secret(a: str, b: str, which: int) -> None:
    source, expected = TEMPLATES[which]
    rendered = Template.compile(source).render(_context({"a": a, "b": b}))
    revealed = reveal(rendered, ENVIRON)
    if expected is None:  # the `if` template
        assert revealed == (ENVIRON["TOKEN"] if a else "") + b
    else:
        assert revealed == expected(a, b)
    # Masked: the event's text as it came, secrets as ***, no value anywhere.
    masked = mask(rendered)
    for value in ENVIRON.values():
        assert value not in masked


@settings(max_examples=100, deadline=None)
@given(a=hostile_text)
def test_data_rendered_into_a_secret_free_template_stays_plain_text(a: str) -> None:
    rendered = Template.compile("x {{ data.a }} y").render(_context({"a": a}))
    assert type(rendered) is str
    assert reveal(rendered, ENVIRON) == f"x {a} y"


def test_a_template_without_jinja_splits_at_load() -> None:
    template = Template.compile("Bearer ${TOKEN}")
    assert template.secrets == ("TOKEN",)
    rendered = template.render(_context({}))
    assert rendered == SecretText(("Bearer ", SecretRef("TOKEN")))
    assert str(rendered) == repr(rendered)[12:-2] == "Bearer ***"


def test_an_empty_or_missing_value_is_a_render_error_not_an_empty_credential() -> None:
    from worker.templates import RenderError

    rendered = Template.compile("Bearer ${TOKEN}").render(_context({}))
    with pytest.raises(RenderError, match=r"\$\{TOKEN\} is empty"):
        reveal(rendered, {"TOKEN": ""})
    with pytest.raises(RenderError, match=r"\$\{TOKEN\} is not set"):
        reveal(rendered, {})


@pytest.mark.parametrize(
    "source", ['{{ "${TOKEN}" }}', '{% set x = "${TOKEN}" %}{{ x }}', "{{ data.a ~ '${TOKEN}' }}"]
)
def test_a_reference_inside_an_expression_is_a_load_error(source: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=r"outside|may not use"):
        Template.compile(source)


def test_reference_in_rules_file_inside_expression_is_located() -> None:
    from worker.errors import RulesError

    text = (
        f"version: 1\ntopics: ['{TOPIC}']\nrules:\n  - name: r\n    actions:\n"
        "      - {type: webhook, url: 'https://h/x', headers: {A: '{{ \"${TOKEN}\" }}'}}\n"
    )
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.yaml", environ=ENVIRON)
    assert "rules.yaml:6" in str(info.value)
    assert "outside" in str(info.value)


def test_html_body_escapes_data_and_keeps_the_secret_structural() -> None:
    data = {"a": "<script>x</script>\ue000TOKEN\ue001"}
    rendered = Template.compile("<p>{{ data.a }}</p>${TOKEN}", html=True).render(_context(data))
    assert reveal(rendered, ENVIRON) == (
        "<p>&lt;script&gt;x&lt;/script&gt;\ue000TOKEN\ue001</p>" + ENVIRON["TOKEN"]
    )


def _planned(rules_text: str, event: dict[str, Any]) -> Any:
    ruleset = parse_rules(rules_text, "rules.yaml", environ=ENVIRON)
    (action,) = plan_rule(ruleset.rules[0], event_of(event))
    return action


def test_plan_and_reveal_through_the_rules_file() -> None:
    """The old exploit: data carrying a marker with a variable's name."""
    attack = "\ue000AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING\ue001"
    text = (
        f"version: 1\ntopics: ['{TOPIC}']\nrules:\n  - name: r\n    actions:\n"
        "      - type: webhook\n        url: 'https://h/x?s={{ data.q }}'\n"
        "        headers: {Authorization: 'Bearer ${TOKEN}', X-Run: '{{ data.q }}'}\n"
        "        body: {note: '{{ data.q }} ${OTHER}', run: '{{ subject }}'}\n"
        "        hmac_secret: '${OTHER}'\n"
    ).replace("{{ subject }}", "{{ event.subject }}")
    planned = _planned(text, eg(subject=attack + "${TOKEN}", data={"q": attack}))
    params = reveal(planned.params, ENVIRON)
    assert params["headers"] == {"Authorization": f"Bearer {ENVIRON['TOKEN']}", "X-Run": attack}
    assert params["url"] == f"https://h/x?s={attack}"
    assert params["body"]["run"] == attack + "${TOKEN}"
    assert params["body"]["note"] == f"{attack} {ENVIRON['OTHER']}"
    flat = json.dumps(params)
    assert ENVIRON["AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING"] not in flat
    assert flat.count(ENVIRON["TOKEN"]) == 1
    line = planned.plan_json()
    for value in ENVIRON.values():
        assert value not in line
    assert json.loads(line)["params"]["headers"]["Authorization"] == "Bearer ***"


def test_run_sends_no_secret_an_event_asks_for(tmp_path, dev_hub, azurite) -> None:
    """Through `run` and a real webhook peer: the event names the checkpoint store's and the
    hub's connection strings every way it can; only the declared token goes out."""
    env = Env(tmp_path, dev_hub, azurite)
    try:
        with WebhookPeer() as peer:
            env.env.update(
                {"HOOK": f"http://127.0.0.1:{peer.port}/hook", "TOKEN": "tok-SECRETVALUE-1"}
            )
            leaks = {
                name: env.env[name]
                for name in (
                    "AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING",
                    "AML_WORKER_EVENTHUB_CONNECTION_STRING",
                )
            }
            rules = tmp_path / "rules.yaml"
            rules.write_text(
                f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
                "  - name: hook\n    actions:\n"
                "      - type: webhook\n        url: '${HOOK}'\n"
                "        headers: {Authorization: 'Bearer ${TOKEN}'}\n"
                "        body: {subject: '{{ event.subject }}', note: '{{ data.n }}'}\n"
            )
            attacks = [f"\ue000{name}\ue001" for name in leaks] + [f"${{{name}}}" for name in leaks]
            sample = tmp_path / "s.jsonl"
            sample.write_text(
                "".join(
                    json.dumps(eg(f"ev-{i}", subject=f"runs/{attack}", data={"n": attack})) + "\n"
                    for i, attack in enumerate(attacks)
                )
            )
            env.send(sample)
            worker = env.start(rules, "--stop-when-idle", "2")
            assert worker.wait(90) == 0, worker.log_path.read_text()[-3000:]
            assert len(peer.requests) == len(attacks)
            outputs = [worker.log_path.read_text()]
            for request in peer.requests:
                assert request["headers"]["Authorization"] == "Bearer tok-SECRETVALUE-1"
                outputs.append(json.dumps(request["headers"]) + request["body"].decode())
                note = json.loads(request["body"])["note"]
                assert note in attacks
            for output in outputs:
                for value in leaks.values():
                    assert value not in output
    finally:
        env.close()


@pytest.mark.parametrize(
    "source",
    [
        "{% set x %}${TOKEN}{% endset %}{{ x }}",
        "{% filter upper %}${TOKEN}{% endfilter %}",
        '{% filter replace("RUN", data.run) %}https://h/RUN?k=${TOKEN}{% endfilter %}',
        "{% macro m() %}${TOKEN}{% endmacro %}{{ m() }}",
    ],
)
def test_tags_that_capture_or_filter_text_cannot_hold_a_secret(source: str) -> None:
    """Captured or filtered text bypasses the escaping of data: a filter block's arguments
    could forge a marker, a captured one could print the nonce. Refused at load."""
    with pytest.raises(TemplateSyntaxError, match="may not use"):
        Template.compile(source)


def test_a_marker_the_template_itself_altered_is_a_render_error() -> None:
    from worker.templates import RenderError, _split_rendered

    with pytest.raises(RenderError, match="altered"):
        _split_rendered("https://h/\ue000forged\ue001", frozenset({"TOKEN"}))
