"""Real predictor processes: scale-out in one group, SIGKILL mid-stream, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest

from tests.support.helpers import consume_until, eventually, produce, read_all
from tests.support.models import BC, publish, requests_for, trained_body
from tests.support.processes import Predictor


async def test_two_predictors_share_partitions_and_survive_sigkill(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    a = Predictor(base, keys, "a", tmp_path)
    b = Predictor(base, keys, "b", tmp_path)
    try:
        # Warm up until both members own partitions (the second may join a little later).
        warmup, rounds = 0, 0
        while not (a.consumed() > 0 and b.consumed() > 0):
            assert rounds < 30, "both predictors should own partitions"
            await produce(
                base, "requests", requests_for(BC, 300, warmup, packed=True, prefix="warm")
            )
            warmup += 300
            rounds += 1
            await consume_until(
                base, "predictions", lambda r, n=warmup: len({x.key for x in r}) >= n, timeout_s=90
            )
            await asyncio.sleep(1.0)
        await eventually(
            lambda: a.consumed() + b.consumed() == warmup,
            10,
            "every warm-up request consumed exactly once",
        )

        total, chunk, killed_at = 20000, 500, 6000
        for start in range(0, total, chunk):
            await produce(base, "requests", requests_for(BC, chunk, start, packed=True))
            if start == killed_at:
                b.process.send_signal(signal.SIGKILL)  # mid-stream, transactions in flight
            await asyncio.sleep(0.1)
        expected = total + warmup
        records = await consume_until(
            base, "predictions", lambda r: len({x.key for x in r}) >= expected, timeout_s=120
        )
        await asyncio.sleep(2)  # anything duplicated would arrive right behind
        records = await consume_until(base, "predictions", lambda r: len(r) >= len(records))
        counts = Counter(r.key for r in records)
        duplicated = sum(c - 1 for c in counts.values() if c > 1)
        lost = expected - len(counts)
        print(f"sent {expected}, answered {len(counts)}, lost {lost}, duplicated {duplicated}")
        assert lost == 0 and duplicated == 0
        assert b.process.poll() == -signal.SIGKILL

        a.process.send_signal(signal.SIGTERM)
        assert a.process.wait(timeout=30) == 0, a.output()
        assert "predictor stopped" in a.output()
    except BaseException:
        print(a.output(), b.output())
        raise
    finally:
        a.stop()
        b.stop()


@pytest.mark.faults
async def test_a_predictor_killed_inside_an_open_transaction_loses_and_repeats_nothing(  # type: ignore[no-untyped-def]
    topics, keys, tmp_path
):
    """A predictor whose transactions stay open for seconds (many batches each, their
    predictions already sent) is SIGKILLed while one is open: a read_uncommitted reader has
    seen predictions no commit covers. The next owner fences the dead one's producers (its
    transactions abort) and answers from the committed offsets: read_committed readers get
    every request exactly once."""
    from aiokafka import AIOKafkaConsumer

    base = topics
    await publish(base, keys, trained_body(BC), 1)
    slow = Predictor(base, keys, "slow", tmp_path, MODELSTREAM_PREDICTOR_COMMIT_INTERVAL_MS="60000")
    successor: Predictor | None = None
    uncommitted = AIOKafkaConsumer(
        base.topic("predictions"),
        bootstrap_servers=base.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_uncommitted",
    )
    await uncommitted.start()
    seen_uncommitted: Counter[bytes] = Counter()

    async def read_uncommitted(until: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(seen_uncommitted) < until:
            assert time.monotonic() < deadline, f"{len(seen_uncommitted)} of {until} seen"
            for records in (await uncommitted.getmany(timeout_ms=200)).values():
                seen_uncommitted.update(r.key for r in records)

    try:
        total, chunk = 6000, 500
        for start in range(0, total // 2, chunk):
            await produce(base, "requests", requests_for(BC, chunk, start, packed=True))
            await asyncio.sleep(0.1)
        await read_uncommitted(total // 2, 90)  # sent in transactions still open
        committed_before = len(await read_all(base, "predictions"))
        slow.process.send_signal(signal.SIGKILL)
        assert slow.process.wait(timeout=10) == -signal.SIGKILL
        for start in range(total // 2, total, chunk):
            await produce(base, "requests", requests_for(BC, chunk, start, packed=True))
        successor = Predictor(base, keys, "successor", tmp_path)
        records = await consume_until(
            base, "predictions", lambda r: len({x.key for x in r}) >= total, timeout_s=120
        )
        await asyncio.sleep(2)  # anything duplicated would arrive right behind
        records = await consume_until(base, "predictions", lambda r: len(r) >= len(records))
        counts = Counter(r.key for r in records)
        duplicated = sum(c - 1 for c in counts.values() if c > 1)
        lost = total - len(counts)
        await read_uncommitted(total, 30)
        repeated_uncommitted = sum(c - 1 for c in seen_uncommitted.values() if c > 1)
        print(
            f"\nkilled inside an open transaction: {committed_before} committed of "
            f"{total // 2} sent before the kill; read_committed: {len(counts)} answered, lost "
            f"{lost}, duplicated {duplicated}; read_uncommitted saw {repeated_uncommitted} "
            "aborted predictions answered again"
        )
        assert committed_before < total // 2  # the kill came inside an open transaction
        assert repeated_uncommitted > 0  # its sent predictions were aborted, not committed
        assert lost == 0 and duplicated == 0
    except BaseException:
        print(slow.output(), successor.output() if successor else "")
        raise
    finally:
        await uncommitted.stop()
        slow.stop()
        if successor is not None:
            successor.stop()


async def test_a_predictor_paused_past_its_session_hands_over_exactly(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    """SIGSTOP one of two predictors for longer than its session timeout, twice, while 50,000
    requests stream: its partitions move to the other (which fences its producers); when it
    wakes up its open transactions are fenced and it must neither commit past a batch it lost
    nor answer what the other already answered."""
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    a = Predictor(base, keys, "a", tmp_path)
    b = Predictor(base, keys, "b", tmp_path)
    try:
        warmup = 0
        while not (a.consumed() > 0 and b.consumed() > 0):
            assert warmup < 9000, "both predictors should own partitions"
            await produce(base, "requests", requests_for(BC, 300, warmup, prefix="warm"))
            warmup += 300
            await asyncio.sleep(1.0)
        total, per_s, chunk = 50_000, 2_500, 250
        pauses = {
            3.0: signal.SIGSTOP,
            11.0: signal.SIGCONT,
            13.0: signal.SIGSTOP,
            21.0: signal.SIGCONT,
        }
        started = time.monotonic()
        for start in range(0, total, chunk):
            await produce(base, "requests", requests_for(BC, chunk, start, packed=True))
            for at in [at for at in pauses if time.monotonic() - started >= at]:
                b.process.send_signal(pauses.pop(at))
            await asyncio.sleep(max(0.0, started + (start + chunk) / per_s - time.monotonic()))
        for sig in pauses.values():
            b.process.send_signal(sig)
        b.process.send_signal(signal.SIGCONT)
        expected = total + warmup
        records = await consume_until(
            base, "predictions", lambda r: len({x.key for x in r}) >= expected, timeout_s=180
        )
        await asyncio.sleep(3)  # anything duplicated would arrive right behind
        records = await consume_until(base, "predictions", lambda r: len(r) >= len(records))
        counts = Counter(r.key for r in records)
        duplicated = sum(c - 1 for c in counts.values() if c > 1)
        lost = expected - len(counts)
        fenced = b.output().count("fenced on task")
        print(
            f"\npredictor handover: b paused twice for 8 s (session 6 s); sent {expected}, "
            f"answered {len(counts)}, lost {lost}, duplicated {duplicated}; b was fenced "
            f"{fenced} time(s)"
        )
        assert lost == 0 and duplicated == 0
        assert a.process.poll() is None and b.process.poll() is None  # both still serve
    except BaseException:
        print(a.output(), b.output())
        raise
    finally:
        a.stop()
        b.stop()


@pytest.mark.faults
async def test_a_request_that_crashes_the_process_is_dead_lettered_once_by_any_copy(  # type: ignore[no-untyped-def]
    topics, keys, tmp_path
):
    """A request that aborts the process (a native crash inside scoring) with two copies:
    the crash count follows its partition from copy to copy (kept in Kafka), so after the
    bound it is dead-lettered once as crashed-service, and nothing else is lost or repeated."""
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    poison = "r-777"
    hook = {"MODELSTREAM_PREDICTOR_TEST_ABORT_ON": poison}
    copies = {name: Predictor(base, keys, name, tmp_path, **hook) for name in "ab"}
    crashes: Counter[str] = Counter()
    total = 2000
    try:
        await produce(base, "requests", requests_for(BC, total, 0, packed=True))
        deadline = time.monotonic() + 240
        answered: set[bytes] = set()
        dead: list = []
        while len(answered) < total - 1 or not dead:
            missing = sorted(
                k for k, _ in requests_for(BC, total, 0, packed=True) if k not in answered
            )[:10]
            assert time.monotonic() < deadline, (len(answered), missing, dead, dict(crashes))
            for name, copy in list(copies.items()):
                code = copy.process.poll()
                if code is not None:  # the supervisor's part: restart it
                    assert code == -signal.SIGABRT, copy.output()
                    crashes[name] += 1
                    copy.stop()
                    copies[name] = Predictor(base, keys, name, tmp_path, **hook)
            answered = {r.key for r in await read_all(base, "predictions")}
            dead = [
                r
                for r in await read_all(base, "deadletter")
                if dict(r.headers).get("source.topic") == base.topic("requests").encode()
            ]
            await asyncio.sleep(1.0)
        await asyncio.sleep(3)  # a repeat would land right behind
        predictions = await read_all(base, "predictions")
        counts = Counter(r.key for r in predictions)
        dead = [
            r
            for r in await read_all(base, "deadletter")
            if dict(r.headers).get("source.topic") == base.topic("requests").encode()
        ]
        print(
            f"\nnative crash: {sum(crashes.values())} crashes {dict(crashes)}, "
            f"{len(counts)} of {total - 1} answered, dead letters {len(dead)}"
        )
        assert [r.key for r in dead] == [poison.encode()]
        assert dict(dead[0].headers)["reason"] == b"crashed-service"
        assert poison.encode() not in counts and len(counts) == total - 1
        assert max(counts.values()) == 1
        assert sum(crashes.values()) == 4  # beside others, its batch alone, twice alone
        # both copies serve again
        await produce(base, "requests", requests_for(BC, 200, total, packed=True, prefix="after"))
        await consume_until(
            base,
            "predictions",
            lambda r: len({x.key for x in r if x.key.startswith(b"after")}) == 200,
            timeout_s=90,
        )
        assert all(copy.process.poll() is None for copy in copies.values())
    except BaseException:
        for copy in copies.values():
            print(copy.output())
        raise
    finally:
        for copy in copies.values():
            copy.stop()
