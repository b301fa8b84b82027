"""The join: parts meet in either order, a batch changes the table only when committed,
entries leave at the TTL, and the table survives the changelog round trip (also from records
the first version of the changelog wrote)."""

import itertools

import pytest

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import MonitorJoinState
from modelstream.services.monitor.logic.join import (
    FEEDBACK,
    PARTS,
    SCORED,
    Entry,
    JoinTable,
    ScoredPart,
    from_state,
    to_state,
)

ID = b"\x07" * 8  # a feature list's identity
ROW = ScoredPart("m", 3, 900, ID, b"\x00" * 16, ("red",), ("0", "1"), b"\x01" * 16, "1")
PART = {SCORED: ROW, FEEDBACK: b"label"}


@pytest.mark.parametrize("order", list(itertools.permutations(PARTS)))
def test_a_label_completes_in_either_order_once(order):
    table = JoinTable()
    for offset, kind in enumerate(order):
        staged = table.stage()
        assert staged.add(b"r", kind, PART[kind], 1_000 + offset, (4, 70 + offset))
        assert bool(staged.completed) == (offset == 1)
        table.commit(staged)
    (entry,) = table.entries.values()
    assert entry.done and entry.first_seen_ms == 1_000
    assert entry.scored is None and entry.feedback is None  # only a marker remains
    again = table.stage()
    assert not again.add(b"r", FEEDBACK, b"another label", 2_000, (4, 99))
    assert not again.add(b"r", SCORED, ROW, 2_000)
    assert again.duplicates == 2 and not again.completed and not again.changed


def test_the_completed_label_carries_its_row_and_feedback_position():
    staged = JoinTable().stage()
    staged.add(b"r", FEEDBACK, b"f", 2, (5, 1234))
    staged.add(b"r", SCORED, ROW, 3)
    (label,) = staged.completed
    assert (label.scored, label.feedback, label.feedback_source) == (ROW, b"f", (5, 1234))


def test_a_part_sent_twice_is_ignored_before_completion_too():
    staged = JoinTable().stage()
    assert staged.add(b"r", SCORED, ROW, 1)
    other = ScoredPart("m", 4, 901, ID, b"", (), (), b"", 0.5)
    assert not staged.add(b"r", SCORED, other, 2)
    assert staged.changed[b"r"].scored == ROW and staged.duplicates == 1


def test_an_uncommitted_batch_leaves_the_table_as_it_was():
    table = JoinTable()
    first = table.stage()
    first.add(b"r", SCORED, ROW, 1)
    table.commit(first)
    aborted = table.stage()
    aborted.add(b"r", FEEDBACK, b"f", 3, (0, 0))
    assert aborted.completed
    # the transaction did not commit: the batch is processed again on a fresh stage
    assert table.entries[b"r"] == Entry(1, scored=ROW)
    retry = table.stage()
    retry.add(b"r", FEEDBACK, b"f", 3, (0, 0))
    assert len(retry.completed) == 1


def test_entries_expire_at_the_ttl_oldest_first_reporting_incomplete_ones():
    table = JoinTable()
    staged = table.stage()
    staged.add(b"done", SCORED, ROW, 100)
    staged.add(b"done", FEEDBACK, b"f", 100, (0, 1))
    staged.add(b"no-prediction", FEEDBACK, b"f", 200, (0, 2))
    staged.add(b"young", SCORED, ROW, 5_000)
    staged.add(b"old-but-after-young", SCORED, ROW, 300)
    table.commit(staged)
    expiry = table.stage()
    removed = expiry.expire(now_ms=1_500, ttl_ms=1_000)
    # the scan stops at the first young entry; the older one after it waits its turn
    assert removed == [b"done", b"no-prediction"]
    assert [(e.request_id, e.entry.missing()) for e in expiry.expired] == [
        (b"no-prediction", [SCORED])
    ]
    table.commit(expiry)
    assert list(table.entries) == [b"young", b"old-but-after-young"]
    assert table.stage().expire(now_ms=1_500, ttl_ms=1_000, limit=0) == []


def test_the_table_round_trips_through_its_avro_changelog_and_reorders():
    codec = default_codec()
    regression = ScoredPart("m", 1, 5, ID, b"\x02" * 8, (), (), b"\x03" * 8, 2.5)
    entries = {
        b"a": Entry(300, scored=ROW),
        b"b": Entry(100, feedback=b"f", feedback_source=(2, 9)),
        b"c": Entry(200, done=True),
        b"d": Entry(400, scored=regression),
    }
    rebuilt = JoinTable()
    for key, entry in entries.items():
        value = codec.encode(MonitorJoinState, to_state(entry))
        rebuilt.restore(key, from_state(codec.decode(value, MonitorJoinState)))
    rebuilt.restore(b"gone", Entry(50))
    rebuilt.restore(b"gone", None)  # a tombstone
    rebuilt.reorder()
    assert rebuilt.entries == entries
    assert list(rebuilt.entries) == [b"b", b"c", b"a", b"d"]  # first-seen order again


def test_a_record_of_the_first_changelog_version_keeps_its_feedback_and_marker():
    """Version 1 held whole requests and predictions: restored, an entry keeps the feedback
    (which then expires to the dead letters as no-prediction) and a done marker stays done."""
    import fastavro

    from modelstream.contracts.codec import MAGIC, Schema, history_schemas

    (v1,) = [s for s in history_schemas() if s.name == "MonitorJoinState"]
    assert isinstance(v1, Schema)
    codec = default_codec()

    def written_by_v1(state: dict) -> bytes:
        import io

        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, v1.parsed, state)
        return MAGIC + v1.fingerprint + buf.getvalue()

    pending = written_by_v1(
        {
            "first_seen_ms": 7,
            "request": b"q",
            "prediction": None,
            "feedback": b"f",
            "feedback_partition": 1,
            "feedback_offset": 22,
            "done": False,
        }
    )
    done = written_by_v1(
        {
            "first_seen_ms": 8,
            "request": None,
            "prediction": None,
            "feedback": None,
            "feedback_partition": None,
            "feedback_offset": None,
            "done": True,
        }
    )
    assert from_state(codec.decode(pending, MonitorJoinState)) == Entry(
        7, feedback=b"f", feedback_source=(1, 22)
    )
    assert from_state(codec.decode(done, MonitorJoinState)) == Entry(8, done=True)


def test_the_table_counts_the_bytes_it_holds():
    table = JoinTable()
    staged = table.stage()
    staged.add(b"a", SCORED, ROW, 1)  # 16 + 16 feature and score bytes, "red"
    staged.add(b"b", FEEDBACK, b"f" * 7, 1, (0, 1))
    assert table.size == 0  # nothing applied before the commit
    table.commit(staged)
    assert table.size == 35 + 7
    staged = table.stage()
    staged.add(b"a", FEEDBACK, b"f" * 9, 2, (0, 2))  # complete: a marker remains
    table.commit(staged)
    assert table.size == 7 and table.entries[b"a"].done
    staged = table.stage()
    staged.expire(now_ms=100, ttl_ms=10)
    table.commit(staged)
    assert table.size == 0 and not table.entries
    for request_id, entry in ((b"c", Entry(1, feedback=b"xyz")), (b"c", None)):
        table.restore(request_id, entry)
        assert table.size == (3 if entry is not None else 0)
