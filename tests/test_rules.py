"""Loading the rules file: validated values, and every error located (DESIGN §3)."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, TOPIC
from worker.errors import RulesError
from worker.filters import Operator
from worker.rules import Late, ThrottlePer, load_rules, parse_rules

HEAD = f"version: 1\ntopics: ['{TOPIC}']\n"


def load(body: str, **kwargs):
    return parse_rules(HEAD + textwrap.dedent(body), "rules.yaml", **kwargs)


def errors(body: str, **kwargs) -> list[str]:
    with pytest.raises(RulesError) as info:
        load(body, **kwargs)
    return [str(p) for p in info.value.problems]


def test_full_rule_loads_into_values():
    ruleset = load(
        """
        ordering: {grace: 10s, late: deliver, max_skew: 2m}
        dedupe: {window: 1h, max_ids: 500}
        rules:
          - name: failed-runs
            filter:
              includedEventTypes: [Microsoft.MachineLearningServices.RunStatusChanged]
              subjectBeginsWith: experiments/
              isSubjectCaseSensitive: true
              advancedFilters:
                - {operatorType: StringIn, key: data.runStatus, values: [Failed, Canceled]}
                - {operatorType: NumberGreaterThanOrEquals, key: data.x, value: 0.3}
                - {operatorType: NumberInRange, key: data.y, values: [[0, 10]]}
                - {operatorType: IsNotNull, key: data.runId}
            ordering: {late: drop}
            throttle: {per: object, at_most: 2, every: 1.5h}
            actions:
              - {type: log, id: note, message: "{{ data.runId }}", retry: {attempts: 2}}
        """
    )
    assert ruleset.ordering.grace_s == 10 and ruleset.ordering.late is Late.DELIVER
    assert ruleset.ordering.max_skew_s == 120
    assert ruleset.dedupe.window_s == 3600 and ruleset.dedupe.max_ids == 500
    rule = ruleset.rules[0]
    assert rule.late is Late.DROP
    assert rule.throttle is not None and rule.throttle.per is ThrottlePer.OBJECT
    assert rule.throttle.every_s == 5400
    ops = [f.operator for f in rule.filter.advanced_filters]
    assert ops[0] is Operator.STRING_IN and ops[3] is Operator.IS_NOT_NULL
    assert rule.filter.advanced_filters[1].values == (Decimal("0.3"),)
    assert rule.filter.advanced_filters[2].values == ((Decimal(0), Decimal(10)),)
    assert rule.filter.is_subject_case_sensitive is True
    assert rule.actions[0].key_part == "note" and rule.actions[0].retry.attempts == 2
    assert ruleset.known_types == {"microsoft.machinelearningservices.runstatuschanged"}


def test_unknown_key_gets_did_you_mean_with_location():
    problems = errors(
        """
        rules:
          - name: r
            filter: {subjectBeginWith: experiments/}
            actions: [{type: log, message: hi}]
        """
    )
    assert len(problems) == 1
    assert problems[0].startswith("rules.yaml:6:14: unknown key 'subjectBeginWith'")
    assert "did you mean 'subjectBeginsWith'?" in problems[0]


def test_all_errors_of_a_file_are_reported_at_once():
    problems = errors(
        """
        ordering: {grace: soon}
        rules:
          - name: Bad_Name
            filter:
              includedEventTypes: []
              advancedFilters:
                - {operatorType: StringIn, key: data.a, values: []}
                - {operatorType: NumberIn, key: data.b, values: ["3"]}
                - {operatorType: StringEquals, key: data.c, values: [x]}
            actions:
              - {type: email, to: [a@example.com], subjekt: x}
              - {type: smtp}
        """
    )
    text = "\n".join(problems)
    for expected in (
        "rules.yaml:4:19: 'grace': 'soon' is not a duration",
        "rules.yaml:6:11: rule name 'Bad_Name'",
        "'includedEventTypes' must be a non-empty list",
        "rules.yaml:10:57: advancedFilters[0] (StringIn) needs a non-empty list 'values'",
        "NumberIn needs a number, not a string '3'",
        "unknown operatorType 'StringEquals'",
        "unknown key 'subjekt'",
        "did you mean 'subject'?",
        "email action needs 'subject'",
        "unknown action type 'smtp'",
    ):
        assert expected in text, expected
    assert len(problems) == 9


@pytest.mark.parametrize(
    ("filter_line", "message"),
    [
        ("{operatorType: NumberLessThan, key: data.a, values: [1]}", "takes one 'value'"),
        ("{operatorType: StringIn, key: data.a, value: x}", "takes a list 'values'"),
        ("{operatorType: IsNotNull, key: data.a, values: [1]}", "takes no 'values'"),
        ("{operatorType: BoolEquals, key: data.a, value: 'true'}", "needs true or false"),
        ("{operatorType: StringContains, key: data.a, values: ['']}", "empty strings"),
        ("{operatorType: NumberInRange, key: data.a, values: [[5, 1]]}", "low > high"),
        ("{operatorType: NumberInRange, key: data.a, values: [[1, 2, 3]]}", "[low, high]"),
        ("{operatorType: NumberInRange, key: data.a, values: [3]}", "[low, high]"),
        ("{operatorType: StringIn, values: [x]}", "needs a 'key'"),
        ("{key: data.a, values: [x]}", "no 'operatorType'"),
        (f"{{operatorType: StringIn, key: data.a, values: ['{'x' * 513}']}}", "at most 512"),
    ],
)
def test_operands_must_fit_the_operator(filter_line, message):
    problems = errors(
        f"""
        rules:
          - name: r
            filter:
              advancedFilters:
                - {filter_line}
            actions: [{{type: log, message: hi}}]
        """
    )
    assert any(message in p for p in problems), problems
    assert all(p.startswith("rules.yaml:") for p in problems)


def _filters_rule(filters: list[str]) -> str:
    lines = "".join(f"        - {f}\n" for f in filters)
    return (
        HEAD
        + "rules:\n  - name: r\n    filter:\n      advancedFilters:\n"
        + lines
        + "    actions: [{type: log, message: hi}]\n"
    )


def test_event_grid_limits_per_rule():
    many = [f"{{operatorType: StringIn, key: data.k{i}, values: [a]}}" for i in range(26)]
    with pytest.raises(RulesError) as info:
        parse_rules(_filters_rule(many), "rules.yaml")
    problems = [str(p) for p in info.value.problems]
    assert any("26 advanced filters; Event Grid allows at most 25" in p for p in problems)
    assert any("26 filter values in total" in p for p in problems)
    values = ", ".join(f"v{i}" for i in range(13))
    two = [
        f"{{operatorType: StringIn, key: data.a, values: [{values}]}}",
        f"{{operatorType: StringNotIn, key: data.b, values: [{values}]}}",
    ]
    with pytest.raises(RulesError) as info:
        parse_rules(_filters_rule(two), "rules.yaml")
    assert [p.message for p in info.value.problems] == [
        "rule 'r' uses 26 filter values in total; Event Grid allows at most 25 across all "
        "advanced filters of a subscription"
    ]


def test_twenty_five_values_are_fine():
    values = ", ".join(f"v{i}" for i in range(25))
    ruleset = load(
        f"""
        rules:
          - name: r
            filter:
              advancedFilters: [{{operatorType: StringIn, key: data.a, values: [{values}]}}]
            actions: [{{type: log, message: hi}}]
        """
    )
    assert len(ruleset.rules[0].filter.advanced_filters[0].values) == 25


def test_required_top_level_fields():
    with pytest.raises(RulesError) as info:
        parse_rules("rules: []\n", "r.yaml")
    text = str(info.value)
    assert "missing 'version: 1'" in text and "missing 'topics'" in text
    with pytest.raises(RulesError, match="'topics' must be a non-empty list"):
        parse_rules("version: 1\ntopics: []\nrules: []\n", "r.yaml")
    with pytest.raises(RulesError, match="'version' must be 1"):
        parse_rules(f"version: 2\ntopics: [{TOPIC}]\nrules: []\n", "r.yaml")
    with pytest.raises(RulesError, match="rules file is empty"):
        parse_rules("", "r.yaml")


def test_yaml_syntax_and_duplicate_keys_are_located():
    with pytest.raises(RulesError) as info:
        parse_rules("version: 1\ntopics: [a\nrules: []\n", "r.yaml")
    assert str(info.value).startswith("r.yaml:") and "not valid YAML" in str(info.value)
    with pytest.raises(RulesError) as info:
        parse_rules("version: 1\nversion: 1\ntopics: [a]\nrules: []\n", "r.yaml")
    assert "r.yaml:2:1:" in str(info.value)


def test_yaml_1_2_keeps_yes_and_on_as_strings():
    ruleset = load(
        """
        rules:
          - name: r
            filter:
              advancedFilters: [{operatorType: StringIn, key: data.answer, values: [yes, on, no]}]
            actions: [{type: log, message: hi}]
        """
    )
    assert ruleset.rules[0].filter.advanced_filters[0].values == ("yes", "on", "no")


def test_rule_may_override_late_only():
    problems = errors(
        """
        rules:
          - name: r
            ordering: {late: deliver, grace: 1s}
            actions: [{type: log, message: hi}]
        """
    )
    assert problems == [
        "rules.yaml:6:31: a rule may override 'ordering.late' only, not 'grace' "
        "(grace and max_skew are set once for the whole file)"
    ]


def test_rule_names_unique_and_action_ids_unique():
    problems = errors(
        """
        rules:
          - name: r
            actions: [{type: log, id: a, message: x}, {type: log, id: a, message: y}]
          - name: r
            actions: [{type: log, message: hi}]
        """
    )
    assert any("action id 'a' is used twice" in p for p in problems)
    assert any("rule name 'r' is used twice (first at line 5)" in p for p in problems)


def test_template_syntax_error_is_a_located_load_error():
    problems = errors(
        """
        rules:
          - name: r
            actions: [{type: log, message: "{{ data.x "}]
        """
    )
    assert len(problems) == 1 and problems[0].startswith("rules.yaml:6:")
    assert "template error in 'message'" in problems[0]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("{type: webhook}", "webhook action needs 'url'"),
        ("{type: webhook, url: ftp://x}", "must start with http:// or https://"),
        ("{type: webhook, url: 'https://x', method: FETCH}", "'method' must be an HTTP method"),
        ("{type: webhook, url: 'https://x', timeout: 10 minutes}", "not a duration"),
        ("{type: webhook, url: 'https://x', auth: {type: basic}}", "'auth.type' must be 'entra'"),
        ("{type: webhook, url: 'https://x', schema: xml}", "one of eventgrid, cloudevents"),
        ("{type: email, to: a@example.com, subject: s}", "'to' must be a list of strings"),
        ("{type: aml_job}", "exactly one of 'job' or 'rerun'"),
        ("{type: aml_job, rerun: a, job: b.yml}", "exactly one of 'job' or 'rerun'"),
        ("{type: aml_job, job: missing.yml}", "file 'missing.yml' not found"),
        ("{type: eventhub}", "exactly one of 'connection_string' or 'namespace'+'eventhub'"),
        ("{type: eventhub, namespace: ns}", "needs 'eventhub'"),
        ("{type: adf_pipeline, pipeline: p}", "needs 'factory'"),
        ("{type: log, message: m, level: loud}", "'level' must be one of debug"),
        ("{type: log, message: m, retry: {attempts: 0}}", "'attempts' must be a whole number"),
        ("{type: log, message: m, concurrency: -1}", "'concurrency' must be a whole number"),
        ("{type: log, message: m, id: 'has space'}", "action 'id' must be"),
        ("{type: webhok, url: 'https://x'}", "did you mean 'webhook'?"),
    ],
)
def test_action_parameters_are_validated_at_load(action, message, tmp_path):
    text = HEAD + f"rules:\n  - name: r\n    actions:\n      - {action}\n"
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.yaml", base_dir=tmp_path, environ={})
    assert any(message in str(p) for p in info.value.problems), info.value.problems
    assert all(p.line == 6 for p in info.value.problems)


def test_job_path_resolves_relative_to_the_rules_file(tmp_path: Path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "retrain.yml").write_text("type: command\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        HEAD + "rules:\n  - name: r\n    actions: [{type: aml_job, job: jobs/retrain.yml}]\n"
    )
    ruleset = load_rules(rules)
    action = ruleset.rules[0].actions[0]
    assert action.files["job"] == str(tmp_path / "jobs" / "retrain.yml")
    assert action.params["job"] == "jobs/retrain.yml"  # as written, so plans are portable


SECRET_RULES = """
rules:
  - name: r
    actions:
      - type: webhook
        url: https://hooks.example.com/x
        headers: {Authorization: "Bearer ${HOOK_TOKEN}"}
"""


def test_missing_secret_is_a_located_error_unless_allowed():
    with pytest.raises(RulesError) as info:
        parse_rules(HEAD + SECRET_RULES, "rules.yaml", environ={})
    assert [str(p) for p in info.value.problems] == [
        "rules.yaml:9:34: secret ${HOOK_TOKEN} is not set in the environment"
    ]
    warned = parse_rules(HEAD + SECRET_RULES, "rules.yaml", environ={}, secrets="warn")
    assert [p.message for p in warned.warnings] == [
        "secret ${HOOK_TOKEN} is not set in the environment"
    ]
    assert parse_rules(HEAD + SECRET_RULES, "r", environ={}, secrets="ignore").warnings == ()
    assert parse_rules(HEAD + SECRET_RULES, "r", environ={"HOOK_TOKEN": "t"}).rules


def test_extension_keys_are_warned_about():
    ruleset = load(
        """
        rules:
          - name: r
            filter:
              advancedFilters:
                - {operatorType: StringNotIn, key: dta.runStatus, values: [x]}
                - {operatorType: StringIn, key: Subject, values: [x]}
            actions: [{type: log, message: hi}]
        """
    )
    assert len(ruleset.warnings) == 1
    assert "key 'dta.runStatus' is neither an envelope field" in ruleset.warnings[0].message
    assert ruleset.warnings[0].line == 8


def test_arm_filter_with_nulls_pastes_as_is():
    """`az eventgrid event-subscription show` prints unset fields as null."""
    ruleset = load(
        """
        rules:
          - name: r
            filter:
              advancedFilters: []
              enableAdvancedFilteringOnArrays: null
              includedEventTypes: null
              isSubjectCaseSensitive: false
              subjectBeginsWith: ''
              subjectEndsWith: ''
            actions: [{type: log, message: hi}]
        """
    )
    assert ruleset.known_types is None


def test_known_types_is_the_union_and_all_means_every_type():
    ruleset = load(
        """
        rules:
          - name: a
            filter: {includedEventTypes: [T1]}
            actions: [{type: log, message: hi}]
          - name: b
            filter: {includedEventTypes: [t2]}
            actions: [{type: log, message: hi}]
        """
    )
    assert ruleset.knows_type("t1") and ruleset.knows_type("T2") and not ruleset.knows_type("T3")
    ruleset = load(
        """
        rules:
          - name: a
            filter: {includedEventTypes: [All]}
            actions: [{type: log, message: hi}]
        """
    )
    assert ruleset.knows_type("anything")


def test_project_example_rules_load(monkeypatch):
    env = {
        "DEPLOY_HOOK_TOKEN": "t",
        "WEBHOOK_HMAC_SECRET": "s",
        "FORWARD_EVENTHUB_CONNECTION_STRING": "c",
    }
    ruleset = load_rules(EXAMPLES / "rules.yaml", environ=env)
    types = {a.type for r in ruleset.rules for a in r.actions}
    assert types == {"log", "webhook", "email", "aml_job", "eventhub", "adf_pipeline"}
    demo = load_rules(EXAMPLES / "demo.rules.yaml", environ={"DEMO_WEBHOOK_URL": "http://x"})
    assert {a.type for r in demo.rules for a in r.actions} == {"log", "webhook"}
