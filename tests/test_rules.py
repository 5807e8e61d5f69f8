"""Loading the rules file: validated values, and every error located (DESIGN §3)."""

from __future__ import annotations

import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, TOPIC, eg, event_of
from worker.cli import main
from worker.errors import RulesError
from worker.filters import Operator
from worker.plan import plan_rule
from worker.rules import MAX_RULES_BYTES, Late, ThrottlePer, load_rules, parse_rules

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


# --- bounded, located, contained (DESIGN §7) -------------------------------------------------

BOMB = HEAD + textwrap.dedent(
    """\
    a: &a [x, x, x, x, x, x, x, x, x]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
    rules: [{name: r, actions: [{type: log, message: "{{ data }}"}]}]
    """
)


def test_an_alias_bomb_is_refused_at_once_with_its_location(tmp_path, capsys):
    """'Billion laughs' (9^9 values through nine lines of aliases) took 48 s and 1 GB: now
    a located error from `check-rules` in well under a second."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.perf_counter()
    assert main(["check-rules", str(path)]) == 1
    elapsed = time.perf_counter() - started
    [line, summary] = capsys.readouterr().err.splitlines()
    assert line == (
        f"{path}:8:4: YAML aliases expand this file to more than 100,000 values; "
        "write the values out instead of nesting aliases"
    )
    assert "1 error" in summary
    assert elapsed < 2


def test_aliases_that_expand_modestly_still_load():
    """Aliases are fine in a normal file: a shared filter, a shared header map."""
    ruleset = load(
        """
        rules:
          - name: a
            filter: &failed {advancedFilters: [{operatorType: StringIn, key: data.s, values: [F]}]}
            actions: [{type: log, message: a}]
          - name: b
            filter: *failed
            actions: [{type: log, message: b}]
        """
    )
    first, second = ruleset.rules
    assert first.filter == second.filter and first.filter.advanced_filters


def test_a_rules_file_over_one_mebibyte_is_refused_before_it_is_parsed(tmp_path, capsys):
    """A 10 MB file took 125 s to parse: a file over MAX_RULES_BYTES is refused by its size
    (what to do is in the message), from `load_rules`, `parse_rules` and `check-rules`."""
    assert MAX_RULES_BYTES == 1024 * 1024
    text = HEAD + "rules: [{name: r, actions: [{type: log, message: hi}]}]\n"
    padded = text + "#" * (MAX_RULES_BYTES - len(text)) + "\n"
    path = tmp_path / "big.yaml"
    path.write_text(padded)
    started = time.perf_counter()
    assert main(["check-rules", str(path)]) == 1
    assert time.perf_counter() - started < 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:1:1: rules file is 1,048,577 bytes; the limit is 1,048,576")
    assert "move job definitions" in err
    with pytest.raises(RulesError, match="the limit is 1,048,576"):
        parse_rules(padded, "big.yaml")
    # At the limit it loads (a comment-heavy file is still a file).
    path.write_text(padded[:-2] + "\n")
    assert load_rules(path).rules[0].name == "r"


EMPTY_SECRET_RULES = SECRET_RULES + '        hmac_secret: "${HOOK_TOKEN}"\n'


def test_an_empty_secret_is_a_located_error_naming_where_it_is_used():
    """An empty value would send `Bearer ` and no signature: refused like a missing one,
    naming the secret, the action and its parameters; a warning with
    --allow-missing-secrets."""
    with pytest.raises(RulesError) as info:
        parse_rules(HEAD + EMPTY_SECRET_RULES, "rules.yaml", environ={"HOOK_TOKEN": ""})
    message = (
        "secret ${HOOK_TOKEN} is empty in the environment; rule 'r' actions[0] "
        "(webhook 'headers', 'hmac_secret') would send it empty: give it a value"
    )
    assert [str(p) for p in info.value.problems] == [f"rules.yaml:9:34: {message}"]
    warned = parse_rules(
        HEAD + EMPTY_SECRET_RULES, "rules.yaml", environ={"HOOK_TOKEN": ""}, secrets="warn"
    )
    assert [p.message for p in warned.warnings] == [message]
    ignored = parse_rules(
        HEAD + EMPTY_SECRET_RULES, "r", environ={"HOOK_TOKEN": ""}, secrets="ignore"
    )
    assert ignored.warnings == ()


def test_check_rules_refuses_an_empty_secret(tmp_path, capsys, monkeypatch):
    path = tmp_path / "rules.yaml"
    path.write_text(HEAD + EMPTY_SECRET_RULES)
    monkeypatch.setenv("HOOK_TOKEN", "")
    assert main(["check-rules", str(path)]) == 1
    assert "secret ${HOOK_TOKEN} is empty in the environment" in capsys.readouterr().err
    assert main(["check-rules", "--allow-missing-secrets", str(path)]) == 0
    assert "warning: secret ${HOOK_TOKEN} is empty" in capsys.readouterr().err
    monkeypatch.setenv("HOOK_TOKEN", "t0k3n")
    assert main(["check-rules", str(path)]) == 0


def _job_rules(job: str) -> str:
    return HEAD + f"rules:\n  - name: r\n    actions: [{{type: aml_job, job: '{job}'}}]\n"


def test_a_job_path_may_not_leave_the_rules_folder(tmp_path):
    """`..`, an absolute path and a symlink pointing out are located errors; the folders
    in AML_WORKER_JOB_ROOTS (or `job_roots=`) are allowed too."""
    rules_dir, outside = tmp_path / "rules", tmp_path / "elsewhere"
    (rules_dir / "jobs").mkdir(parents=True)
    outside.mkdir()
    (outside / "train.yml").write_text("type: command\n")
    (rules_dir / "jobs" / "link.yml").symlink_to(outside / "train.yml")
    path = rules_dir / "rules.yaml"
    for job in ("../elsewhere/train.yml", str(outside / "train.yml"), "jobs/link.yml"):
        path.write_text(_job_rules(job))
        with pytest.raises(RulesError) as info:
            load_rules(path, environ={})
        [problem] = info.value.problems
        assert (problem.file, problem.line, problem.column) == (str(path), 5, 36)
        assert problem.message == (
            f"'job': {job!r} resolves to {outside / 'train.yml'}, outside the rules file's "
            f"folder {rules_dir}; move it there, or list its folder in AML_WORKER_JOB_ROOTS"
        )
        allowed = load_rules(path, environ={"AML_WORKER_JOB_ROOTS": f"/nonexistent:{outside}"})
        assert allowed.rules[0].actions[0].files["job"] == str(outside / "train.yml")
        assert load_rules(path, environ={}, job_roots=[outside]).rules


def test_a_symlinked_rules_folder_keeps_its_own_jobs(tmp_path):
    """ConfigMap mounts are symlinks: a job inside the (resolved) rules folder is fine."""
    real = tmp_path / "..2024_01_01"
    (real / "jobs").mkdir(parents=True)
    (real / "jobs" / "train.yml").write_text("type: command\n")
    (real / "rules.yaml").write_text(_job_rules("jobs/train.yml"))
    mount = tmp_path / "mount"
    mount.symlink_to(real)
    ruleset = load_rules(mount / "rules.yaml", environ={})
    assert ruleset.rules[0].actions[0].files["job"] == str(real / "jobs" / "train.yml")


def _email_rules(to: str) -> str:
    return HEAD + f"rules:\n  - name: r\n    actions: [{{type: email, subject: s, to: {to}}}]\n"


def test_literal_recipients_are_checked_at_load_and_split():
    """What the author wrote is checked now (a typo is a located error, not a dead letter
    later) and a literal list in one entry becomes one entry per address; an entry with a
    template is left for the send, where it must render to exactly one address."""
    ruleset = parse_rules(
        _email_rules(
            "['Team Lead <lead@example.com>, ops@example.com; b@example.com', "
            "'{{ data.owner }}@example.com']"
        ),
        "rules.yaml",
    )
    to = ruleset.rules[0].actions[0].params["to"]
    assert [t.source for t in to] == [
        "Team Lead <lead@example.com>",
        "ops@example.com",
        "b@example.com",
        "{{ data.owner }}@example.com",
    ]
    for bad in ("'ops@example.com oncall@example.com'", "'\"Lead, Team\" <l@example.com>'"):
        with pytest.raises(RulesError) as info:
            parse_rules(_email_rules(f"[{bad}]"), "rules.yaml")
        [problem] = info.value.problems
        assert (problem.line, problem.column) == (5, 45)
        assert "is not an email address" in problem.message


def test_the_email_html_parameter_autoescapes_event_data():
    """`html` compiles with autoescape: `<script>` or a quote from event data is escaped,
    the author's markup stays; other parameters are plain text."""
    ruleset = load(
        """
        rules:
          - name: r
            actions:
              - {type: email, to: [a@example.com], subject: "{{ data.n }}",
                 html: "<p title='{{ data.t }}'>{{ data.n }}</p>"}
        """
    )
    [rule] = ruleset.rules
    event = event_of(eg(data={"n": "<script>alert(1)</script>", "t": "x' onclick='evil()"}))
    [planned] = plan_rule(rule, event)
    assert planned.params["html"] == (
        "<p title='x&#39; onclick=&#39;evil()'>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
    )
    assert planned.params["subject"] == "<script>alert(1)</script>"
