"""Quiet under attack: a flood of rejected records is a few log lines with counts, while the
metrics still count every record."""

import logging
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from modelstream.kafka import quiet
from modelstream.kafka.boundary import Boundary, Failure
from modelstream.kafka.quiet import QuietLog

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()
LOGGER = logging.getLogger("modelstream.kafka.boundary")
TOPICS = ("modelstream.requests", "modelstream.feedback")
REASONS = ("invalid-json", "too-deep", "unknown-model")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def caplog(caplog):
    caplog.set_level(logging.WARNING, logger="modelstream")
    return caplog


def boundary(service: str, clock: Clock) -> Boundary:
    return Boundary(service, QuietLog(LOGGER, f"{service} rejected", interval_s=10.0, clock=clock))


def rejected(service: str, topic: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "modelstream_records_rejected_total",
        {"service": service, "topic": topic, "reason": reason},
    )
    return value or 0.0


def flood(b: Boundary, clock: Clock, n: int, start_s: float = 0.0, span_s: float = 9.0) -> dict:
    """n rejections spread over ``span_s``, cycling through the topics and reasons."""
    expected: dict[tuple[str, str], int] = {}
    base = clock.now
    for i in range(n):
        clock.now = base + start_s + span_s * i / n
        topic, reason = TOPICS[i % 2], REASONS[i % 3]
        b.reject(topic, i % 4, i, Failure(reason, f"bad record {i}"))
        key = (topic.rsplit(".", 1)[-1], reason)
        expected[key] = expected.get(key, 0) + 1
    return expected


def summaries(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if " records in the last " in r.getMessage()]


def parse(summary: str) -> dict[tuple[str, str], int]:
    counts = {}
    for part in summary.split(": ", 1)[1].split("; "):
        topic, reasons = part.split(": ", 1)
        for item in reasons.split(", "):
            reason, n = item.rsplit(" ", 1)
            counts[(topic, reason)] = int(n.replace(",", ""))
    return counts


def test_ten_thousand_rejections_are_first_occurrences_and_one_summary(caplog, clock):
    service = "quiet-flood"
    before = {(t, r): rejected(service, t.rsplit(".", 1)[-1], r) for t in TOPICS for r in REASONS}
    b = boundary(service, clock)
    expected = flood(b, clock, 10_000)
    # the counters kept the per-record truth
    for (topic, reason), n in expected.items():
        assert rejected(service, topic, reason) - before[(f"modelstream.{topic}", reason)] == n
    assert sum(expected.values()) == 10_000
    clock.now += 1.5  # past the interval: the next call brings the summary
    b.reject(TOPICS[0], 0, 10_000, Failure("too-deep", "one more"))

    firsts = [r for r in caplog.records if " rejected: " in r.getMessage()]
    assert len(firsts) == 6 + 1  # one per (topic, reason), and the next interval's first
    assert "bad record 0" in firsts[0].getMessage()  # its error text, at once
    (summary,) = summaries(caplog)
    assert len(caplog.records) == 6 + 1 + 1
    assert summary.startswith("quiet-flood rejected 10,000 records in the last 10 s: ")
    assert parse(summary) == expected


def test_a_new_interval_starts_from_zero_and_flush_emits_the_remainder(caplog, clock):
    b = boundary("quiet-again", clock)
    flood(b, clock, 600)
    clock.now += 5.0
    flood(b, clock, 60, span_s=2.0)  # the first call logs the first interval's summary
    first_summary = summaries(caplog)
    assert len(first_summary) == 1
    assert sum(parse(first_summary[0]).values()) == 600
    caplog.clear()

    b._rejections.flush()
    (remainder,) = summaries(caplog)
    assert remainder.startswith("quiet-again rejected 60 records in the last 2 s: ")
    assert all(n == 10 for n in parse(remainder).values())
    caplog.clear()
    b._rejections.flush()
    assert caplog.records == []  # nothing left


def test_one_bad_record_is_one_line(caplog, clock):
    b = boundary("quiet-one", clock)
    b.reject("modelstream.requests", 3, 42, Failure("invalid-json", "expected an object"))
    clock.now += 60.0
    b._rejections.flush()
    b._rejections.flush(if_due=True)
    assert [r.getMessage() for r in caplog.records] == [
        "modelstream.requests[3]@42 rejected: invalid-json: expected an object"
    ]


def test_flush_if_due_waits_for_the_interval(caplog, clock):
    log = QuietLog(LOGGER, "quiet-due rejected", interval_s=10.0, clock=clock)
    for _ in range(3):
        log.warn("requests", "too-deep", "first")
    clock.now += 9.9
    log.flush(if_due=True)
    assert [r.getMessage() for r in caplog.records] == ["first"]
    clock.now += 0.1
    log.flush(if_due=True)
    assert summaries(caplog) == [
        "quiet-due rejected 3 records in the last 10 s: requests: too-deep 3"
    ]


def test_the_process_logs_share_one_interval_setting_and_one_flush(caplog, monkeypatch):
    monkeypatch.setattr(quiet, "_logs", {})
    monkeypatch.setattr(quiet, "_interval_s", quiet.DEFAULT_INTERVAL_S)
    one = quiet.quiet_log(LOGGER, "quiet-shared rejected")
    assert quiet.quiet_log(LOGGER, "quiet-shared rejected") is one
    quiet.set_interval(2.5)
    assert one.interval_s == 2.5 and quiet.quiet_log(LOGGER, "quiet-other").interval_s == 2.5
    one.warn("requests", "too-deep", "first")
    one.warn("requests", "too-deep", "second")
    quiet.flush_all()
    assert [r.getMessage() for r in caplog.records][-1].startswith(
        "quiet-shared rejected 2 records in the last "
    )


def test_an_unexpected_error_shows_its_traceback_once_per_place(caplog, monkeypatch):
    monkeypatch.setattr(Boundary, "_last_traceback", {})
    b = boundary("quiet-tracebacks", Clock())

    def handle(value: str) -> None:
        raise KeyError(value)  # its text quotes the record: one traceback all the same

    for i in range(1000):
        try:
            handle(f"key-{i}")
        except KeyError as exc:
            assert b.failure(exc).reason == "internal-error"
    assert len([r for r in caplog.records if r.exc_info]) == 1


def test_the_readme_example_is_what_the_log_says(clock):
    log = QuietLog(LOGGER, "predictor rejected", interval_s=10.0, clock=clock)
    for reason, n in (("invalid-json", 1000), ("too-deep", 234)):
        for _ in range(n):
            log.warn("requests", reason, "first")
    clock.now += 10.0
    line = log._take(clock.now)
    assert line is not None and line in re.sub(r"\s+", " ", README)
