"""The join: parts meet in any order, a batch changes the table only when committed, entries
leave at the TTL, and the table survives the changelog round trip."""

import itertools

import pytest

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import MonitorJoinState
from modelstream.services.monitor.logic.join import (
    FEEDBACK,
    PARTS,
    PREDICTIONS,
    REQUESTS,
    Entry,
    JoinTable,
    from_state,
    to_state,
)

PART_BYTES = {REQUESTS: b"request", PREDICTIONS: b"prediction", FEEDBACK: b"label"}


@pytest.mark.parametrize("order", list(itertools.permutations(PARTS)))
def test_a_label_completes_in_any_order_once(order):
    table = JoinTable()
    for offset, kind in enumerate(order):
        staged = table.stage()
        assert staged.add(b"r", kind, PART_BYTES[kind], 1_000 + offset, (4, 70 + offset))
        assert bool(staged.completed) == (offset == 2)
        table.commit(staged)
    (entry,) = table.entries.values()
    assert entry.done and entry.first_seen_ms == 1_000
    assert entry.request is None and entry.feedback is None  # only a marker remains
    again = table.stage()
    assert not again.add(b"r", FEEDBACK, b"another label", 2_000, (4, 99))
    assert again.duplicates == 1 and not again.completed and not again.changed


def test_the_completed_label_carries_its_parts_and_feedback_position():
    staged = JoinTable().stage()
    staged.add(b"r", PREDICTIONS, b"p", 1)
    staged.add(b"r", FEEDBACK, b"f", 2, (5, 1234))
    staged.add(b"r", REQUESTS, b"q", 3)
    (label,) = staged.completed
    assert (label.request, label.prediction, label.feedback) == (b"q", b"p", b"f")
    assert label.feedback_source == (5, 1234)


def test_a_part_sent_twice_is_ignored_before_completion_too():
    staged = JoinTable().stage()
    assert staged.add(b"r", REQUESTS, b"q", 1)
    assert not staged.add(b"r", REQUESTS, b"q again", 2)
    assert staged.changed[b"r"].request == b"q" and staged.duplicates == 1


def test_an_uncommitted_batch_leaves_the_table_as_it_was():
    table = JoinTable()
    first = table.stage()
    first.add(b"r", REQUESTS, b"q", 1)
    table.commit(first)
    aborted = table.stage()
    aborted.add(b"r", PREDICTIONS, b"p", 2)
    aborted.add(b"r", FEEDBACK, b"f", 3, (0, 0))
    assert aborted.completed
    # the transaction did not commit: the batch is processed again on a fresh stage
    assert table.entries[b"r"] == Entry(1, request=b"q")
    retry = table.stage()
    retry.add(b"r", PREDICTIONS, b"p", 2)
    retry.add(b"r", FEEDBACK, b"f", 3, (0, 0))
    assert len(retry.completed) == 1


def test_entries_expire_at_the_ttl_oldest_first_reporting_incomplete_ones():
    table = JoinTable()
    staged = table.stage()
    staged.add(b"done", REQUESTS, b"q", 100)
    staged.add(b"done", PREDICTIONS, b"p", 100)
    staged.add(b"done", FEEDBACK, b"f", 100, (0, 1))
    staged.add(b"no-prediction", FEEDBACK, b"f", 200, (0, 2))
    staged.add(b"young", REQUESTS, b"q", 5_000)
    staged.add(b"old-but-after-young", REQUESTS, b"q", 300)
    table.commit(staged)
    expiry = table.stage()
    removed = expiry.expire(now_ms=1_500, ttl_ms=1_000)
    # the scan stops at the first young entry; the older one after it waits its turn
    assert removed == [b"done", b"no-prediction"]
    assert [(e.request_id, e.entry.missing()) for e in expiry.expired] == [
        (b"no-prediction", [REQUESTS, PREDICTIONS])
    ]
    table.commit(expiry)
    assert list(table.entries) == [b"young", b"old-but-after-young"]
    assert table.stage().expire(now_ms=1_500, ttl_ms=1_000, limit=0) == []


def test_the_table_round_trips_through_its_avro_changelog_and_reorders():
    codec = default_codec()
    entries = {
        b"a": Entry(300, request=b"q", prediction=b"p"),
        b"b": Entry(100, feedback=b"f", feedback_source=(2, 9)),
        b"c": Entry(200, done=True),
    }
    rebuilt = JoinTable()
    for key, entry in entries.items():
        value = codec.encode(MonitorJoinState, to_state(entry))
        rebuilt.restore(key, from_state(codec.decode(value, MonitorJoinState)))
    rebuilt.restore(b"gone", Entry(50))
    rebuilt.restore(b"gone", None)  # a tombstone
    rebuilt.reorder()
    assert rebuilt.entries == entries
    assert list(rebuilt.entries) == [b"b", b"c", b"a"]  # first-seen order again


def test_the_table_counts_the_bytes_it_holds():
    table = JoinTable()
    staged = table.stage()
    staged.add(b"a", REQUESTS, b"r" * 100, 1)
    staged.add(b"a", PREDICTIONS, b"p" * 40, 1)
    staged.add(b"b", FEEDBACK, b"f" * 7, 1, (0, 1))
    assert table.size == 0  # nothing applied before the commit
    table.commit(staged)
    assert table.size == 147
    staged = table.stage()
    staged.add(b"a", FEEDBACK, b"f" * 9, 2, (0, 2))  # complete: a marker remains
    table.commit(staged)
    assert table.size == 7 and table.entries[b"a"].done
    staged = table.stage()
    staged.expire(now_ms=100, ttl_ms=10)
    table.commit(staged)
    assert table.size == 0 and not table.entries
    for request_id, entry in ((b"c", Entry(1, request=b"xyz")), (b"c", None)):
        table.restore(request_id, entry)
        assert table.size == (3 if entry is not None else 0)
