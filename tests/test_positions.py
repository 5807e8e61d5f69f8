"""Position syntax shared by settings and commands (DESIGN §6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.positions import PositionKind, parse_positions


def test_single_positions_and_their_sdk_form():
    assert parse_positions("earliest").default.sdk() == ("-1", False)
    assert parse_positions("latest").default.sdk() == ("@latest", False)
    assert parse_positions("seq:100").default.sdk() == (100, True)
    assert parse_positions("offset:4096").default.sdk() == ("4096", True)
    moment, inclusive = parse_positions("time:2024-06-10T10:00:00+02:00").default.sdk()
    assert moment == datetime(2024, 6, 10, 8, 0, tzinfo=UTC) and inclusive


def test_per_partition_positions_default_to_earliest():
    positions = parse_positions("0=seq:100, 2=latest")
    assert positions.for_partition("0").kind is PositionKind.SEQUENCE
    assert positions.for_partition("2").kind is PositionKind.LATEST
    assert positions.for_partition("1").kind is PositionKind.EARLIEST
    sdk, inclusive = positions.sdk(["0", "1", "2"])
    assert sdk == {"0": 100, "1": "-1", "2": "@latest"}
    assert inclusive == {"0": True, "1": False, "2": False}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("first", "not a position"),
        ("seq:abc", "whole number"),
        ("seq:-1", "start at 0"),
        ("time:yesterday", "not an ISO 8601 time"),
        ("page:3", "unknown position kind"),
        ("0seq:1", "unknown position kind"),
        ("0=seq:1,latest", "PARTITION=POSITION"),
        ("", "empty position"),
    ],
)
def test_bad_positions_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_positions(text)
