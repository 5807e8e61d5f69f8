"""The `aml-event-worker` command line (DESIGN §6).

stdout carries only a command's own output (a plan with `--output -`, a summary line, an
explanation); logs, errors and warnings go to stderr. Exit codes: 0 done, 1 the input (rules
file, event file) is invalid or the command could not run, 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from worker import __version__
from worker.errors import UnreachableError, WorkerError

__all__ = ["main"]

# Commands that print their own diagnostics and never log: they skip structlog (whose import
# pulls in rich, ≈ 0.1 s), so `check-rules` in CI and pre-commit starts fast.
_NO_LOGS = frozenset({"check-rules", "explain", "export-filters"})


class _Fail(Exception):
    """A command could not run; the message is printed as is, exit code attached."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aml-event-worker",
        description="Turn Azure Machine Learning events (Event Grid → Event Hubs) into actions.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check-rules", help="validate a rules file", description="Validate a rules file."
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--allow-missing-secrets",
        action="store_true",
        help="report ${NAME} secrets missing from the environment as warnings (for CI)",
    )

    explain = commands.add_parser(
        "explain",
        help="show which rules match an event and why",
        description="For each rule: matched or not, and why each filter clause passed or failed.",
    )
    explain.add_argument("event_file", metavar="EVENT_JSON_FILE")
    explain.add_argument("--rules", metavar="FILE", help="rules file (default $AML_WORKER_RULES)")
    explain.add_argument("--json", action="store_true", help="machine-readable output")

    replay = commands.add_parser(
        "replay",
        help="replay recorded events through the rules",
        description="Replay message bodies through the pipeline; --dry-run writes the plan.",
    )
    replay.add_argument("--rules", metavar="FILE", help="rules file (default $AML_WORKER_RULES)")
    replay.add_argument(
        "--source",
        required=True,
        metavar="SOURCE",
        help="file:PATH (JSON lines, one Event Hubs message body per line), eventhub "
        "(the hub of AML_WORKER_EVENTHUB_*), or capture:PATH_OR_URL (Event Hubs Capture Avro)",
    )
    replay.add_argument(
        "--from",
        dest="start",
        metavar="POSITION",
        help="eventhub/capture: earliest (default), latest, seq:N, offset:X, time:ISO, per "
        "partition 0=seq:5,...; eventhub also: checkpoint (the live group's) or file:SNAPSHOT",
    )
    replay.add_argument(
        "--until", metavar="POSITION", help="inclusive end (default: each partition's last event)"
    )
    replay.add_argument("--partitions", metavar="IDS", help="only these partitions, e.g. 0,2")
    replay.add_argument(
        "--consumer-group",
        metavar="NAME",
        help="eventhub: the replay's own group (default $AML_WORKER_REPLAY_CONSUMER_GROUP)",
    )
    replay.add_argument(
        "--force", action="store_true", help="allow --consumer-group to be the live group"
    )
    replay.add_argument("--only-rule", metavar="NAME", help="replay through this rule only")
    replay.add_argument(
        "--resume",
        action="store_true",
        help="eventhub: continue a stopped replay from its consumer group's progress",
    )
    replay.add_argument("--dry-run", action="store_true", help="write the plan, run nothing")
    replay.add_argument(
        "--output", default="-", metavar="PLAN", help="plan file (JSON lines); - for stdout"
    )
    replay.add_argument("--summary-json", metavar="PATH", help="also write the counts as JSON")
    replay.add_argument(
        "--dead-letter",
        metavar="PATH",
        help="invalid bodies and render errors (default <output>.deadletter.jsonl)",
    )
    run = commands.add_parser(
        "run",
        help="the long-running consumer (Event Hub + blob checkpoints)",
        description="Consume the Event Hub, run the rules' actions, checkpoint to blob storage. "
        "Settings come from AML_WORKER_* environment variables (and .env); flags override.",
    )
    run.add_argument("--rules", metavar="FILE", help="rules file (default $AML_WORKER_RULES)")
    run.add_argument("--consumer-group", metavar="NAME")
    run.add_argument(
        "--start-position",
        metavar="POSITION",
        help="where a partition without a checkpoint starts (default earliest)",
    )
    run.add_argument("--checkpoint-interval", metavar="DURATION")
    run.add_argument(
        "--stop-when-idle",
        type=float,
        metavar="SECONDS",
        help="once every claimable partition is owned, exit 0 after no event arrived for this "
        "long (releasing held events, checkpointing to the end, releasing ownership)",
    )
    run.add_argument("--summary-json", metavar="PATH", help="write the final counts as JSON")

    send = commands.add_parser(
        "send",
        help="publish message bodies (one per line) to an Event Hub",
        description="Publish one message per line of FILE (e.g. sample traffic to dev-hub).",
    )
    send.add_argument("file", metavar="FILE.jsonl")
    send.add_argument(
        "--connection-string",
        metavar="CS",
        help="Event Hubs connection string (default $AML_WORKER_EVENTHUB_CONNECTION_STRING)",
    )
    send.add_argument("--eventhub", metavar="NAME", help="hub name if not in the connection string")
    send.add_argument(
        "--partition-key",
        default="subject",
        metavar="subject|none",
        help="subject (default: the event's subject, as the recommended Event Grid set-up "
        "does) or none (round-robin)",
    )
    send.add_argument("--partition-id", metavar="ID", help="send every message to this partition")
    send.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="application property on every message (repeatable), e.g. aeg-delivery-count=0",
    )

    export = commands.add_parser(
        "export-filters",
        help="print the Event Grid subscriptions equivalent to the rules (az, ARM or Bicep)",
        description="One subscription per rule, filtering on the server side what the rule "
        "matches, with the PartitionKey delivery property mapped to the subject.",
    )
    export.add_argument("--rules", metavar="FILE", help="rules file (default $AML_WORKER_RULES)")
    export.add_argument("--format", choices=("az", "arm", "bicep"), default="az")
    export.add_argument(
        "--source-resource-id", metavar="ID", help="the workspace (default: the rules' topics)"
    )
    export.add_argument(
        "--eventhub-resource-id", metavar="ID", help="the destination hub's ARM resource id"
    )
    export.add_argument(
        "--schema", choices=("eventgridschema", "cloudeventschemav1_0"), default="eventgridschema"
    )

    config = commands.add_parser("config", help="print the effective configuration, secrets masked")
    config.add_argument("--json", action="store_true", help="machine-readable output")

    history = commands.add_parser(
        "history", help="what the worker did with one event (state, ledger, dead letters)"
    )
    history.add_argument("--event-id", required=True, metavar="ID")
    history.add_argument("--consumer-group", metavar="NAME")
    history.add_argument("--json", action="store_true", help="machine-readable output")

    checkpoints = commands.add_parser("checkpoints", help="inspect, snapshot and move checkpoints")
    cp_commands = checkpoints.add_subparsers(dest="checkpoints_command", metavar="COMMAND")
    cp_commands.required = True
    cp_list = cp_commands.add_parser("list", help="checkpoints, owners and lag per partition")
    cp_export = cp_commands.add_parser("export", help="snapshot the checkpoints to a JSON file")
    cp_export.add_argument("file", metavar="FILE")
    cp_set = cp_commands.add_parser(
        "set",
        help="move the checkpoints (rewind for a backfill)",
        description="Move a consumer group's checkpoints to a position or a snapshot. Resets "
        "the group's dedupe/order state for those partitions and keeps its ledger.",
    )
    cp_set.add_argument("--from", dest="target", required=True, metavar="POSITION|file:SNAPSHOT")
    cp_set.add_argument("--partitions", metavar="IDS", help="only these partitions, e.g. 0,2")
    cp_set.add_argument(
        "--force", action="store_true", help="even while a live worker owns the partition"
    )
    for sub in (cp_list, cp_export, cp_set):
        sub.add_argument("--consumer-group", metavar="NAME")
    cp_list.add_argument("--json", action="store_true", help="machine-readable output")

    dead = commands.add_parser("deadletter", help="look at dead-lettered events and actions")
    dead_commands = dead.add_subparsers(dest="deadletter_command", metavar="COMMAND", required=True)
    dead_list = dead_commands.add_parser(
        "list",
        help="list dead letters of the consumer group",
        description="List dead letters (invalid bodies, render errors, failed actions) stored "
        "next to the checkpoints. Storage and hub come from AML_WORKER_* settings.",
    )
    dead_list.add_argument("--consumer-group", metavar="NAME")
    dead_list.add_argument(
        "--since", metavar="TIME", help="only those dead-lettered since (ISO 8601)"
    )
    dead_list.add_argument("--rule", metavar="NAME", help="only those of this rule")
    dead_list.add_argument("--json", action="store_true", help="machine-readable output")
    dead_replay = dead_commands.add_parser(
        "replay",
        help="re-drive dead-lettered actions with their original idempotency keys",
        description="Plan each failed action again from its stored event with the current rules "
        "and run it; successes are marked re-driven (not deleted).",
    )
    dead_replay.add_argument(
        "--rules", metavar="FILE", help="rules file (default $AML_WORKER_RULES)"
    )
    dead_replay.add_argument("--consumer-group", metavar="NAME")
    dead_replay.add_argument("--rule", metavar="NAME", help="only those of this rule")
    dead_replay.add_argument("--since", metavar="TIME", help="only those dead-lettered since")
    dead_replay.add_argument("--dry-run", action="store_true", help="say what would be re-driven")

    devhub = commands.add_parser(
        "dev-hub",
        help="a local Event Hubs-compatible AMQP server for development and tests",
        description="Serve an Event Hubs-compatible AMQP endpoint on loopback; prints the "
        "connection string (UseDevelopmentEmulator=true) on stdout.",
        add_help=False,
    )
    devhub.add_argument("args", nargs=argparse.REMAINDER)
    return parser


# `run --stop-when-idle` stopped, but its checkpoint is behind what it received.
EXIT_BEHIND = 3
# The hub or the checkpoint storage did not answer at start.
EXIT_UNREACHABLE = 4


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "dev-hub":
        from worker.devhub.__main__ import main as dev_hub_main

        return dev_hub_main(argv[1:], prog="aml-event-worker dev-hub")
    args = _parser().parse_args(argv)
    if args.command not in _NO_LOGS:
        from worker import logs

        logs.configure(
            os.environ.get("AML_WORKER_LOG_LEVEL", "info"),
            os.environ.get("AML_WORKER_LOG_FORMAT") or None,
        )
    handler = {
        "check-rules": _check_rules,
        "explain": _explain,
        "replay": _replay,
        "run": _run,
        "send": _send,
        "deadletter": _deadletter,
        "checkpoints": _checkpoints,
        "history": _history,
        "export-filters": _export_filters,
        "config": _config,
    }
    try:
        return handler[args.command](args)
    except _Fail as exc:
        print(f"aml-event-worker {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except UnreachableError as exc:
        print(f"aml-event-worker {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except WorkerError as exc:
        print(f"aml-event-worker {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _load(path: str | None, *, secrets: str, job_roots: str | None = None) -> Any:
    """`job_roots`: `Settings.job_roots` where settings are loaded (`run`, so a `.env`
    counts); elsewhere AML_WORKER_JOB_ROOTS is read from the environment."""
    from worker.errors import RulesError
    from worker.rules import load_rules, split_job_roots

    path = path or os.environ.get("AML_WORKER_RULES")
    if not path:
        raise _Fail("no rules file: pass --rules FILE or set AML_WORKER_RULES", 2)
    try:
        roots = None if job_roots is None else split_job_roots(job_roots)
        ruleset = load_rules(path, secrets=secrets, job_roots=roots)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        raise _Fail(f"{path}: {count} error{'s' if count != 1 else ''}; nothing done") from None
    for warning in ruleset.warnings:
        print(
            f"{warning.file}:{warning.line}:{warning.column}: warning: {warning.message}",
            file=sys.stderr,
        )
    return ruleset


def _check_rules(args: argparse.Namespace) -> int:
    mode = "warn" if args.allow_missing_secrets else "require"
    ruleset = _load(args.file, secrets=mode)
    actions = [a for r in ruleset.rules for a in r.actions]
    types = ", ".join(sorted({a.type for a in actions})) or "none"
    print(
        f"{args.file}: OK: {len(ruleset.rules)} rule{'s' if len(ruleset.rules) != 1 else ''}, "
        f"{len(actions)} action{'s' if len(actions) != 1 else ''} ({types}), "
        f"{len(ruleset.topics)} topic{'s' if len(ruleset.topics) != 1 else ''}, "
        f"{len(ruleset.warnings)} warning{'s' if len(ruleset.warnings) != 1 else ''}"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    from worker.explain import explain_events, render_text
    from worker.jsontext import dumps, utf8_safe

    ruleset = _load(args.rules, secrets="ignore")
    try:
        body = Path(args.event_file).read_bytes()
    except OSError as exc:
        raise _Fail(f"cannot read {args.event_file}: {exc.strerror or exc}") from None
    report, rejections = explain_events(ruleset, body)
    for rejection in rejections:
        print(f"{args.event_file}: {rejection.describe()}", file=sys.stderr)
    if not report:
        raise _Fail(f"{args.event_file} holds no event to explain")
    if args.json:
        sys.stdout.write(dumps(report if len(report) > 1 else report[0], indent=2) + "\n")
    else:
        sys.stdout.write(utf8_safe(render_text(report)))  # an event's lone surrogate, say
    return 0


@contextlib.contextmanager
def _open_out(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _Fail(f"cannot write {path}: {exc.strerror or exc}") from None
    with handle:
        yield handle


def _replay(args: argparse.Namespace) -> int:
    kind, _, location = args.source.partition(":")
    if kind not in ("file", "eventhub", "capture") or (kind != "eventhub" and not location):
        raise _Fail(
            f"unsupported --source {args.source!r}: use file:PATH, eventhub or capture:PATH_OR_URL",
            2,
        )
    ruleset = _load(args.rules, secrets="ignore" if args.dry_run else "require")
    if args.only_rule:
        chosen = [r for r in ruleset.rules if r.name == args.only_rule]
        if not chosen:
            names = ", ".join(r.name for r in ruleset.rules)
            raise _Fail(f"--only-rule: no rule named {args.only_rule!r} (rules: {names})", 2)
        ruleset = dataclasses.replace(ruleset, rules=tuple(chosen))
    dead_letter = args.dead_letter or (
        "deadletter.jsonl" if args.output == "-" else f"{args.output}.deadletter.jsonl"
    )
    if kind == "file":
        summary = _replay_file(args, ruleset, location, dead_letter)
    elif kind == "capture":
        summary = _replay_capture(args, ruleset, location, dead_letter)
    else:
        summary = _replay_eventhub(args, ruleset, dead_letter)
    counts = summary if isinstance(summary, dict) else summary.as_dict()
    print(
        "replay summary: " + " ".join(f"{name}={value}" for name, value in counts.items()),
        file=sys.stderr,
    )
    if counts.get("invalid") or counts.get("render_errors"):
        print(f"dead letters written to {dead_letter}", file=sys.stderr)
    if args.summary_json:
        with _open_out(args.summary_json) as handle:
            json.dump(counts, handle, indent=2)
            handle.write("\n")
    return 0


def _replay_file(args: argparse.Namespace, ruleset: Any, location: str, dead_letter: str) -> Any:
    from worker.errors import SourceError
    from worker.replay import dry_run
    from worker.source import read_jsonl

    if not Path(location).is_file():
        raise _Fail(f"source file {location} not found")
    if not args.dry_run:
        return _act_on_file(ruleset, location, dead_letter)
    try:
        with _open_out(args.output) as plan, _open_out(dead_letter) as dead:
            return dry_run(ruleset, read_jsonl(location), plan, dead)
    except SourceError as exc:
        raise _Fail(str(exc)) from None


def _act_on_file(ruleset: Any, location: str, dead_letter: str) -> Any:
    """A file replay that runs the actions (same keys as live; no ledger: a file has no
    hub, so targets that dedupe by key are what keeps a second run from repeating)."""
    import asyncio

    from worker.actions import available_executors
    from worker.backfill import backfill_messages
    from worker.settings import load_settings
    from worker.source import read_jsonl

    settings = load_settings()
    executors = available_executors(settings)

    async def messages() -> Any:
        for item in read_jsonl(location):
            yield item

    async def go() -> Any:
        try:
            return await backfill_messages(
                settings, ruleset, messages(), plan_path=None, dead_letters=dead,
                executors=executors, consumer_group=None,
            )  # fmt: skip
        finally:
            for executor in executors.values():
                with contextlib.suppress(Exception):
                    await executor.aclose()

    with _open_out(dead_letter) as dead:
        result = asyncio.run(go())
    return {
        **result.summary.as_dict(),
        "actions_dispatched": result.actions,
        "action_failures": result.failures,
    }


def _positions(text: str | None, flag: str) -> Any:
    from worker.positions import parse_positions

    if text is None:
        return None
    try:
        return parse_positions(text)
    except ValueError as exc:
        raise _Fail(f"{flag}: {exc}", 2) from None


def _replay_capture(args: argparse.Namespace, ruleset: Any, location: str, dead: str) -> Any:
    import asyncio

    from worker.actions import available_executors
    from worker.backfill import backfill_messages
    from worker.capture import read_capture
    from worker.settings import load_settings

    settings = load_settings()
    conn = settings.checkpoint_store_connection_string
    partitions = set(args.partitions.split(",")) if args.partitions else None
    messages = read_capture(
        location,
        connection_string=conn.get_secret_value() if conn else None,
        start=_positions(args.start, "--from"),
        until=_positions(args.until, "--until"),
        partitions=partitions,
    )
    executors = None if args.dry_run else available_executors(settings)

    async def go(dead_file: IO[str]) -> Any:
        try:
            return await backfill_messages(
                settings,
                ruleset,
                messages,
                plan_path=args.output if args.dry_run else None,
                dead_letters=dead_file,
                executors=executors,
                consumer_group=args.consumer_group or settings.replay_consumer_group,
            )
        finally:
            for executor in (executors or {}).values():
                with contextlib.suppress(Exception):
                    await executor.aclose()

    with _open_out(dead) as dead_file:
        result = asyncio.run(go(dead_file))
    counts = result.summary.as_dict()
    if not args.dry_run:
        counts.update(
            actions_dispatched=result.actions,
            actions_skipped_by_ledger=result.skipped,
            action_failures=result.failures,
        )
    return counts


def _replay_eventhub(args: argparse.Namespace, ruleset: Any, dead_letter: str) -> Any:
    import asyncio

    from worker.actions import available_executors
    from worker.backfill import backfill_eventhub
    from worker.settings import load_settings

    settings = load_settings()
    group = args.consumer_group or settings.replay_consumer_group
    if group.lower() == settings.consumer_group.lower() and not args.force:
        raise _Fail(
            f"--consumer-group {group!r} is the live worker's group: a replay there would "
            "move its checkpoints; pick another group or pass --force",
            2,
        )
    start = args.start or "earliest"
    from_checkpoint = start == "checkpoint"
    snapshot = start[len("file:") :] if start.startswith("file:") else None
    positions = None if (from_checkpoint or snapshot) else _positions(start, "--from")
    partitions = {p.strip() for p in args.partitions.split(",")} if args.partitions else None
    executors = None if args.dry_run else available_executors(settings)
    bar = _progress_bar() if sys.stderr.isatty() else None
    result = asyncio.run(
        backfill_eventhub(
            settings,
            ruleset,
            consumer_group=group,
            start=positions,
            from_checkpoint=from_checkpoint,
            snapshot=snapshot,
            resume=args.resume,
            until=_positions(args.until, "--until"),
            partitions=partitions,
            plan_path=args.output if args.dry_run else None,
            dead_letter_path=dead_letter,
            executors=executors,
            progress=bar.update if bar else None,
        )
    )
    if bar:
        bar.stop()
    counts = result.summary.as_dict()
    if not args.dry_run:
        counts.update(
            actions_dispatched=result.actions,
            actions_skipped_by_ledger=result.skipped,
            action_failures=result.failures,
        )
    return counts


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from worker.settings import load_settings

    settings = load_settings(
        rules=args.rules,
        consumer_group=args.consumer_group,
        start_position=args.start_position,
        checkpoint_interval=args.checkpoint_interval,
    )
    from worker import logs

    logs.configure(settings.log_level, settings.log_format)
    ruleset = _load(
        str(settings.rules) if settings.rules else None,
        secrets="require",
        job_roots=settings.job_roots,
    )
    from worker.positions import parse_positions

    try:
        positions = parse_positions(settings.start_position)
    except ValueError as exc:
        raise _Fail(f"AML_WORKER_START_POSITION: {exc}") from None
    from worker import tracing
    from worker.consumer import run_worker

    tracing.configure(os.environ)  # opt-in through the standard OTEL_* variables
    try:
        stats = asyncio.run(
            run_worker(settings, ruleset, positions, stop_when_idle=args.stop_when_idle)
        )
    finally:
        tracing.shutdown()  # export what is still buffered
    counts = stats.as_dict()
    print(
        "run summary: " + " ".join(f"{k}={v}" for k, v in counts.items() if k != "partitions"),
        file=sys.stderr,
    )
    if args.summary_json:
        with _open_out(args.summary_json) as handle:
            json.dump(counts, handle, indent=2)
            handle.write("\n")
    if args.stop_when_idle is not None and (stats.behind or stats.unsaved_partitions):
        where = ", ".join(
            f"partition {pid}: checkpoint at {done if done is not None else 'none'}, "
            f"received up to {last}"
            for pid, (done, last) in sorted(stats.behind.items())
        ) or ", ".join(f"partition {pid}: state not saved" for pid in stats.unsaved_partitions)
        raise _Fail(
            f"stopped, but the checkpoint did not reach the end of what was received ({where}). "
            "The messages after it are read again by the next run; the log's "
            "dead_letter_write_failed / state_not_saved lines say why (usually the checkpoint "
            "storage).",
            EXIT_BEHIND,
        )
    return 0


def _send(args: argparse.Namespace) -> int:
    import asyncio

    from worker.sending import parse_properties, send_file
    from worker.settings import load_settings

    settings = load_settings()
    try:
        properties = parse_properties(args.property)
    except ValueError as exc:
        raise _Fail(str(exc), 2) from None
    if args.partition_key not in ("subject", "none"):
        raise _Fail("--partition-key is 'subject' or 'none'", 2)
    if not Path(args.file).is_file():
        raise _Fail(f"{args.file} not found")
    sent, hub = asyncio.run(
        send_file(
            settings,
            Path(args.file),
            connection_string=args.connection_string,
            eventhub_name=args.eventhub,
            by_subject=args.partition_key == "subject",
            partition_id=args.partition_id,
            properties=properties,
        )
    )
    print(f"sent {sent} message{'s' if sent != 1 else ''} to {hub}")
    return 0


def _deadletter(args: argparse.Namespace) -> int:
    import asyncio

    from worker.deadletters import filter_dead_letters, render_table, to_json
    from worker.events import parse_time
    from worker.settings import load_settings

    settings = load_settings(consumer_group=args.consumer_group)
    since = None
    if args.since:
        try:
            since = parse_time(args.since)[0]
        except ValueError as exc:
            raise _Fail(f"--since: {exc}", 2) from None
    if args.deadletter_command == "replay":
        ruleset = _load(args.rules, secrets="ignore" if args.dry_run else "require")
        counts = asyncio.run(_redrive(settings, ruleset, since, args.rule, args.dry_run))
        print(" ".join(f"{k}={v}" for k, v in counts.items()))
        return 0
    records = asyncio.run(_list_dead_letters(settings))
    records = filter_dead_letters(records, since=since, rule=args.rule)
    sys.stdout.write(to_json(records) if args.json else render_table(records))
    return 0


async def _redrive(
    settings: Any, ruleset: Any, since: Any, rule: str | None, dry_run: bool
) -> dict[str, int]:
    from worker.actions import available_executors
    from worker.connections import partition_store
    from worker.deadletters import filter_dead_letters, redrive

    executors = available_executors(settings)
    try:
        async with partition_store(settings, checkpoints=False) as (_, store):
            records = filter_dead_letters(await store.list_dead_letters(), since=since, rule=rule)
            return await redrive(
                store, records, ruleset, executors,
                settings=settings, environ=os.environ, dry_run=dry_run,
            )  # fmt: skip
    finally:
        for executor in executors.values():
            with contextlib.suppress(Exception):
                await executor.aclose()


async def _list_dead_letters(settings: Any) -> list[dict[str, Any]]:
    from worker.connections import partition_store

    async with partition_store(settings, checkpoints=False) as (_, store):
        return await store.list_dead_letters()


def _checkpoints(args: argparse.Namespace) -> int:
    import asyncio

    from worker.settings import load_settings

    settings = load_settings(consumer_group=args.consumer_group)
    return asyncio.run(_checkpoints_async(args, settings))


async def _checkpoints_async(args: argparse.Namespace, settings: Any) -> int:
    from worker import rewind
    from worker.connections import consumer_client, partition_store

    def make_client() -> Any:
        return consumer_client(settings, consumer_group=settings.consumer_group)

    async with partition_store(settings) as (client, store):
        rows = await rewind.list_checkpoints(store, client, settings.ownership_expiry)
        if args.checkpoints_command == "list":
            if args.json:
                json.dump([r.as_dict() for r in rows], sys.stdout, indent=2)
                sys.stdout.write("\n")
            else:
                sys.stdout.write(rewind.render_table(rows))
            return 0
        if args.checkpoints_command == "export":
            document = rewind.snapshot_document(store, rows)
            with _open_out(args.file) as handle:
                json.dump(document, handle, indent=2)
                handle.write("\n")
            print(f"exported {len(document['partitions'])} checkpoints to {args.file}")
            return 0
        wanted = {p.strip() for p in args.partitions.split(",")} if args.partitions else None
        chosen = [r for r in rows if wanted is None or r.partition_id in wanted]
        busy = [r.partition_id for r in chosen if r.owner_active]
        if busy and not args.force:
            raise _Fail(
                f"partition(s) {', '.join(busy)} are owned by a running worker; stop it "
                "(or pass --force: it would overwrite the moved checkpoint on its next save)",
                1,
            )
        ids = [r.partition_id for r in chosen]
        if args.target.startswith("file:"):
            snapshot = rewind.read_snapshot(args.target[len("file:") :])
            marks = {pid: snapshot[pid] for pid in ids if pid in snapshot}
        else:
            target = _positions(args.target, "--from")
            marks = await rewind.resolve_marks(client, make_client, ids, target)
        print("partition  before -> after (sequence number / offset)")
        for row in chosen:
            mark = marks.get(row.partition_id)
            if mark is None:
                continue
            before = f"{row.mark.sequence_number}/{row.mark.offset}" if row.mark else "none"
            await store.update_checkpoint(row.partition_id, mark)
            await store.reset_state(row.partition_id)
            print(f"{row.partition_id:<10} {before} -> {mark.sequence_number}/{mark.offset}")
        print("dedupe/order state reset for these partitions; the ledger is kept")
        return 0


def _history(args: argparse.Namespace) -> int:
    import asyncio

    from worker.settings import load_settings

    settings = load_settings(consumer_group=args.consumer_group)
    return asyncio.run(_history_async(args, settings))


async def _history_async(args: argparse.Namespace, settings: Any) -> int:
    from worker.connections import partition_store
    from worker.history import event_history, render_history

    async with partition_store(settings) as (client, store):
        found = await event_history(store, await client.get_partition_ids(), args.event_id)
    if args.json:
        json.dump(found, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_history(found))
    return 0


class _progress_bar:
    """A rich progress bar per partition (done / total, rate, ETA) on a terminal."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("partition {task.fields[pid]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def update(self, state: dict[str, tuple[int, int]]) -> None:
        for pid, (done, total) in state.items():
            if pid not in self.tasks:
                self.tasks[pid] = self.progress.add_task("", total=total or None, pid=pid)
            self.progress.update(self.tasks[pid], completed=done, total=total or None)

    def stop(self) -> None:
        self.progress.stop()


def _export_filters(args: argparse.Namespace) -> int:
    from worker.export import export_filters

    ruleset = _load(args.rules, secrets="ignore")
    try:
        text = export_filters(
            ruleset,
            format=args.format,
            source_resource_id=args.source_resource_id,
            eventhub_resource_id=args.eventhub_resource_id,
            schema=args.schema,
        )
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _config(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from worker.settings import load_settings

    settings = load_settings()
    shown: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = "***"
        elif isinstance(value, Path):
            value = str(value)
        shown[f"AML_WORKER_{name.upper()}"] = value
    if args.json:
        json.dump(shown, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        width = max(len(k) for k in shown)
        for key, value in shown.items():
            print(f"{key.ljust(width)}  {'' if value is None else value}")
    return 0
