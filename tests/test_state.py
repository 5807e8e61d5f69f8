"""What is finished on a partition: the checkpoint never passes unfinished work (DESIGN §5)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.state import Mark, Progress, decode_records, encode_record


def m(seq: int) -> Mark:
    return Mark(seq, str(seq * 100))


def test_checkpoint_follows_finished_messages():
    progress = Progress()
    assert progress.checkpoint() is None
    progress.received(m(0), 0)
    progress.received(m(1), 2)  # two events held
    progress.received(m(2), 0)
    assert progress.checkpoint() == m(0)
    progress.finished(1)
    assert progress.checkpoint() == m(0)
    progress.finished(1)
    assert progress.checkpoint() == m(2)


def test_restored_held_events_block_before_their_message_is_read_again():
    progress = Progress(m(10))
    progress.hold(13)
    for seq in (11, 12, 13, 14):
        progress.received(m(seq), 0)  # re-read copies are duplicates: nothing pending
    assert progress.checkpoint() == m(12)
    progress.finished(13)
    assert progress.checkpoint() == m(14)


def test_messages_at_or_before_the_checkpoint_do_not_move_it_back():
    progress = Progress(m(10))
    progress.received(m(9), 0)
    progress.received(m(10), 0)
    assert progress.checkpoint() == m(10)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=30), st.randoms())
def test_checkpoint_never_passes_an_unfinished_message(pending_counts, rng):
    progress = Progress()
    open_events = []
    for seq, count in enumerate(pending_counts):
        progress.received(m(seq), count)
        open_events += [seq] * count
        rng.shuffle(open_events)
        if open_events and rng.random() < 0.5:
            progress.finished(open_events.pop())
        mark = progress.checkpoint()
        if mark is not None:
            assert all(s > mark.sequence_number for s in open_events)
            assert mark.sequence_number <= seq
    for seq in list(open_events):
        progress.finished(seq)
    assert progress.checkpoint() == m(len(pending_counts) - 1)


def test_records_round_trip_and_a_torn_tail_is_ignored():
    data = encode_record({"a": 1}) + encode_record({"b": [2]})
    assert list(decode_records(data)) == [{"a": 1}, {"b": [2]}]
    assert list(decode_records(data[:-3])) == [{"a": 1}]
