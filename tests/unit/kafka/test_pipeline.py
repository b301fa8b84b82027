"""The pipeline's handover rules, step by step, with the Kafka clients replaced by recorders.

The integration tests (test_predictor_processes.py, test_monitor_scaleout.py) run the real
thing; these pin the order of the steps that close the two handover holes, which a real
broker exposes only in narrow races."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from modelstream.kafka.in_flight import SHARED
from modelstream.kafka.pipeline import FRAMING_BYTES, BatchPipeline, Outgoing, Stateless, Written
from modelstream.settings import load

TOPIC = "t.requests"


class Recorder:
    """Consumer and producers that only write down what was asked of them."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.log: list[tuple[Any, ...]] = []
        self._committed = committed
        self.assigned: set[TopicPartition] = set(committed)

    # consumer
    def pause(self, *tps: TopicPartition) -> None:
        self.log.append(("pause", *sorted(tp.partition for tp in tps)))

    def resume(self, *tps: TopicPartition) -> None:
        self.log.append(("resume", *sorted(tp.partition for tp in tps)))

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def committed(self, tp: TopicPartition) -> int | None:
        self.log.append(("committed", tp.partition))
        return self._committed[tp]

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.log.append(("seek", tp.partition, offset))


class Producer:
    def __init__(self, log: list[tuple[Any, ...]], task: int) -> None:
        self.log, self.task = log, task

    async def stop(self) -> None:
        self.log.append(("producer stopped", self.task))


class Transactional(Producer):
    """A transactional producer that writes down its transactions' steps."""

    async def begin_transaction(self) -> None:
        self.log.append(("begin", self.task))

    async def send_offsets_to_transaction(self, offsets: Any, group: str) -> None:
        self.log.append(("offsets", {tp.partition: o for tp, o in offsets.items()}))

    async def commit_transaction(self) -> None:
        self.log.append(("commit", self.task))

    async def abort_transaction(self) -> None:
        self.log.append(("abort", self.task))

    @contextlib.asynccontextmanager
    async def transaction(self) -> Any:
        await self.begin_transaction()
        yield
        await self.commit_transaction()


class Processor(Stateless):
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    def process(self, task: int, records: list[ConsumerRecord]) -> list[Outgoing]:
        if any(r.value == b"poison" for r in records):
            raise ValueError("cannot handle this one")
        return [Outgoing("t.out", r.key, r.value, source=r) for r in records]

    async def assigned(self, tasks: set[int]) -> None:
        self.log.append(("processor assigned", *sorted(tasks)))

    def aborted(self, task: int) -> None:
        self.log.append(("processor aborted", task))

    def committed(self, task: int, written: Written) -> None:
        self.log.append(("processor committed", task))


def pipeline(committed: dict[TopicPartition, int | None]) -> tuple[BatchPipeline, Recorder]:
    recorder = Recorder(committed)
    pipe = BatchPipeline(
        load(bootstrap_servers="127.0.0.1:1"),
        "test",
        TOPIC,
        Processor(recorder.log),
        deadletter_topic="t.deadletter",
    )
    pipe.consumer = recorder  # type: ignore[assignment]

    async def producer_for(task: int) -> Any:
        recorder.log.append(("producer started", task))  # InitProducerId: fences the old owner
        return Producer(recorder.log, task)

    pipe._producer_for = producer_for  # type: ignore[method-assign]
    return pipe, recorder


async def test_an_assignment_fences_the_old_owners_before_it_reads_committed_offsets():
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    pipe, recorder = pipeline({tp0: 42, tp1: None})
    await pipe._assigned([tp0, tp1])
    steps = [entry[0] for entry in recorder.log]
    assert steps[0] == "pause" and steps[-1] == "resume"
    last_fence = max(i for i, s in enumerate(steps) if s == "producer started")
    first_read = min(i for i, s in enumerate(steps) if s == "committed")
    assert last_fence < first_read  # offsets read only once the old transactions are over
    assert steps.index("processor assigned") < first_read
    assert ("seek", 0, 42) in recorder.log  # the committed offset read now, not aiokafka's
    assert ("seek", 1, 0) in recorder.log  # never committed: from the beginning


async def test_a_fenced_task_still_assigned_reads_on_from_its_committed_offset():
    tp = TopicPartition(TOPIC, 3)
    pipe, recorder = pipeline({tp: 1000})
    pipe._pending[3] = {tp: [record(1500, b"fetched from the old position")]}
    await pipe._fenced(3, Producer(recorder.log, 3), [tp])  # type: ignore[arg-type]
    assert recorder.log == [
        ("processor aborted", 3),
        ("producer stopped", 3),
        ("pause", 3),
        ("committed", 3),
        ("seek", 3, 1000),  # not past the batch whose transaction was lost
        ("resume", 3),
    ]
    # what was fetched from the old position is void, and so is what is being handed out
    assert 3 not in pipe._pending and pipe._seeks[tp] == 1


async def test_a_failed_transaction_replaces_its_producer_and_reads_on_from_the_committed_offset():
    """After a KafkaError the producer may be unusable (its sender routine ended: see
    compat.retire_producer); the task's next transaction starts a new one, which fences
    the old one and aborts whatever it had open."""
    tp = TopicPartition(TOPIC, 2)
    pipe, recorder = pipeline({tp: 500})
    failed = Producer(recorder.log, 2)
    pipe._producers[2] = failed  # type: ignore[assignment]
    error = KafkaError("Unexpected error during batch delivery")
    await pipe._failed(2, failed, [tp], ("batch", TOPIC, 2, 500), error)  # type: ignore[arg-type]
    assert 2 not in pipe._producers
    assert recorder.log == [
        ("processor aborted", 2),
        ("producer stopped", 2),
        ("pause", 2),
        ("committed", 2),
        ("seek", 2, 500),
        ("resume", 2),
    ]


async def test_a_fenced_task_already_revoked_is_left_to_its_new_owner():
    tp = TopicPartition(TOPIC, 3)
    pipe, recorder = pipeline({tp: 1000})
    recorder.assigned = set()
    await pipe._fenced(3, Producer(recorder.log, 3), [tp])  # type: ignore[arg-type]
    assert ("seek", 3, 1000) not in recorder.log


def record(offset: int, value: bytes, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, b"k", value, None, 1, len(value), [])


async def test_records_handed_out_after_a_rebalance_seek_are_processed_not_dropped():
    """A fetch under way while the assignment callback seeks hands out records from the new
    position: they are the task's next records. (Dropping them lost them: the consumer had
    moved past them and the next transaction committed offsets beyond them.)"""
    tp = TopicPartition(TOPIC, 2)
    pipe, _recorder = pipeline({tp: 5315})
    await pipe._assigned([tp])
    batch = {tp: [record(o, b"new", 2) for o in range(5315, 5358)]}
    pipe._queue(batch, {tp: pipe._seeks[tp]})  # handed out after the seek
    assert [r.offset for r in pipe._pending[2][tp]] == list(range(5315, 5358))
    pipe._lanes[2].cancel()


async def test_records_handed_out_before_a_seek_are_read_again_from_it():
    tp = TopicPartition(TOPIC, 2)
    pipe, _recorder = pipeline({tp: 5315})
    handed_out_at = {tp: pipe._seeks[tp]}  # then the rebalance seeks while they wait
    await pipe._assigned([tp])
    pipe._queue({tp: [record(o, b"old", 2) for o in range(5400, 5500)]}, handed_out_at)
    assert 2 not in pipe._pending


async def test_records_of_a_partition_no_longer_assigned_are_left_to_its_new_owner():
    tp = TopicPartition(TOPIC, 2)
    pipe, recorder = pipeline({tp: 5315})
    recorder.assigned = set()
    pipe._queue({tp: [record(o, b"late", 2) for o in range(5315, 5320)]}, {tp: 0})
    assert 2 not in pipe._pending


async def test_a_record_the_processor_cannot_handle_is_dead_lettered_alone():
    pipe, recorder = pipeline({})
    out = pipe._process(0, [record(7, b"a"), record(8, b"poison"), record(9, b"b")])
    assert [(o.topic, o.value) for o in out] == [
        ("t.out", b"a"),
        ("t.deadletter", b"poison"),
        ("t.out", b"b"),
    ]
    headers = dict(out[1].headers or [])
    assert headers["reason"] == b"internal-error" and headers["source.offset"] == b"8"
    assert ("processor aborted", 0) in recorder.log  # the failed batch's changes are dropped


class Answering(Processor):
    """Two outputs per record (a prediction and a reply), and a reply of its own for each
    record the pipeline dead-letters."""

    def process(self, task: int, records: list[ConsumerRecord]) -> list[Outgoing]:
        out = super().process(task, records)
        return out + [Outgoing("t.replies", r.key, r.value, 0, source=r) for r in records]

    def dead_lettered(self, record: ConsumerRecord, failure: Any) -> list[Outgoing]:
        return [Outgoing("t.replies", record.key, None, 0, [("reason", failure.reason.encode())])]


async def test_a_dead_letter_the_pipeline_writes_carries_the_processors_reply():
    pipe, recorder = pipeline({})
    pipe.processor = Answering(recorder.log)
    out = pipe._process(0, [record(7, b"a"), record(8, b"poison")])
    assert [(o.topic, o.value) for o in out] == [
        ("t.out", b"a"),
        ("t.replies", b"a"),
        ("t.deadletter", b"poison"),
        ("t.replies", None),
    ]
    assert dict(out[3].headers or [])["reason"] == b"internal-error"


async def test_a_record_with_any_output_too_large_is_one_dead_letter_and_no_outputs():
    pipe, recorder = pipeline({})
    pipe.processor = Answering(recorder.log)
    limit = FRAMING_BYTES + 100  # the same value goes to both topics
    pipe.topic_limits = {"t.out": limit, "t.replies": limit}
    out = pipe._process(0, [record(7, b"small"), record(8, b"x" * 200), record(9, b"fine")])
    assert [(o.topic, (o.value or b"")[:5]) for o in out] == [
        ("t.out", b"small"),
        ("t.out", b"fine"),
        ("t.replies", b"small"),
        ("t.replies", b"fine"),
        ("t.deadletter", b"xxxxx"),
        ("t.replies", b""),
    ]
    assert dict(out[4].headers or [])["reason"] == b"output-too-large"
    assert dict(out[5].headers or [])["reason"] == b"output-too-large"


async def test_the_crash_guard_brackets_the_processing_itself():
    """A native crash inside scoring kills the process between begin and end: the batch
    must already be marked in flight (in Kafka, acknowledged) when the processor runs."""
    tp = TopicPartition(TOPIC, 0)
    pipe, recorder = pipeline({tp: 7})
    marks: list[tuple[str, Any]] = []

    class Guard:
        bound = 2

        def crashes(self, topic: str, partition: int, offset: int) -> int:
            return 0

        def suspect(self, topic: str, partition: int, offset: int) -> None:
            return None

        async def begin(self, topic: str, partition: int, first: int, last: int, mode: str) -> None:
            marks.append(("begin", (first, last, mode)))

        def done(self, topic: str, partition: int, last: int) -> None:
            marks.append(("done", last))

    class Noting(Processor):
        def process(self, task: int, records: list[ConsumerRecord]) -> list[Outgoing]:
            marks.append(("process", [r.offset for r in records]))
            return super().process(task, records)

    async def producer_for(task: int) -> Any:
        return Transactional(recorder.log, task)

    async def send(producer: Any, outgoing: list[Outgoing]) -> list[Any]:
        return []

    pipe.crash_guard = Guard()  # type: ignore[assignment]
    pipe.processor = Noting(recorder.log)
    pipe._producer_for = producer_for  # type: ignore[method-assign]
    pipe._send = send  # type: ignore[method-assign]
    pipe.commit_interval_s = 60.0  # two batches in one open transaction
    await pipe._transact(0, {tp: [record(7, b"a"), record(8, b"b")]})
    await pipe._transact(0, {tp: [record(9, b"c")]})
    await pipe._commit(0)
    # one record alone (the path of a batch that crashed before) is bracketed too
    await pipe._transact_one(0, tp, record(10, b"d"))
    assert marks == [
        ("begin", (7, 8, SHARED)),
        ("process", [7, 8]),
        ("begin", (7, 9, SHARED)),  # from the open transaction's first record on
        ("process", [9]),
        ("done", 9),
        ("begin", (10, 10, SHARED)),
        ("process", [10]),
        ("done", 10),
    ]


def transactional(
    committed: dict[TopicPartition, int | None], interval_s: float
) -> tuple[BatchPipeline, Recorder]:
    """A pipeline whose tasks' producers write their transactions down, outputs included."""
    pipe, recorder = pipeline(committed)
    pipe.commit_interval_s = interval_s
    producers: dict[int, Transactional] = {}

    async def producer_for(task: int) -> Any:
        producer = producers.setdefault(task, Transactional(recorder.log, task))
        pipe._producers[task] = producer  # type: ignore[assignment]
        return producer

    async def send(producer: Any, outgoing: list[Outgoing]) -> list[Any]:
        recorder.log.append(("send", [o.value for o in outgoing]))
        return []

    pipe._producer_for = producer_for  # type: ignore[method-assign]
    pipe._send = send  # type: ignore[method-assign]
    return pipe, recorder


async def test_batches_within_the_commit_interval_share_one_transaction_sent_at_once():
    tp = TopicPartition(TOPIC, 0)
    pipe, recorder = transactional({tp: 7}, interval_s=60.0)
    await pipe._transact(0, {tp: [record(7, b"a"), record(8, b"b")]})
    await pipe._transact(0, {tp: [record(9, b"c")]})
    # each batch's outputs are sent as soon as it is processed; nothing is committed yet
    assert recorder.log == [("begin", 0), ("send", [b"a", b"b"]), ("send", [b"c"])]
    assert pipe.records_in == 0
    await pipe._commit(0)
    assert recorder.log[3:] == [("offsets", {0: 10}), ("commit", 0), ("processor committed", 0)]
    assert pipe.records_in == 3 and 0 not in pipe._open


async def test_an_idle_lane_commits_when_its_interval_runs_out_not_before():
    tp = TopicPartition(TOPIC, 0)
    pipe, recorder = transactional({tp: 7}, interval_s=0.2)
    pipe._pending[0] = {tp: [record(7, b"a")]}
    lane = asyncio.create_task(pipe._lane(0))
    await asyncio.sleep(0.05)
    assert ("send", [b"a"]) in recorder.log and ("commit", 0) not in recorder.log
    pipe._pending[0] = {tp: [record(8, b"b")]}  # arrives within the interval: same transaction
    pipe._arrived[0].set()
    await asyncio.wait_for(lane, 2.0)
    assert [e for e in recorder.log if e[0] in ("begin", "commit", "offsets")] == [
        ("begin", 0),
        ("offsets", {0: 9}),
        ("commit", 0),
    ]


async def test_a_revoked_task_commits_its_open_transaction_before_it_is_released():
    tp = TopicPartition(TOPIC, 0)
    pipe, recorder = transactional({tp: 7}, interval_s=60.0)
    pipe._pending[0] = {tp: [record(7, b"a")]}
    pipe._lanes[0] = asyncio.create_task(pipe._lane(0))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(pipe._revoked([tp]), 2.0)  # does not wait out the minute
    steps = [e[0] for e in recorder.log]
    assert steps.index("commit") < steps.index("producer stopped")


async def test_a_batch_failing_after_the_first_aborts_and_reads_again_from_the_commit():
    """Isolating the failing record would drop the processor's pending state of the earlier
    batches, whose outputs are in the transaction: the whole transaction is read again, the
    failing batch then comes first and is isolated as usual."""
    tp = TopicPartition(TOPIC, 0)
    pipe, recorder = transactional({tp: 7}, interval_s=60.0)
    await pipe._transact(0, {tp: [record(7, b"a")]})
    await pipe._transact(0, {tp: [record(8, b"b"), record(9, b"poison")]})
    assert recorder.log[2:] == [
        ("processor aborted", 0),
        ("abort", 0),
        ("pause", 0),
        ("committed", 0),
        ("seek", 0, 7),
        ("resume", 0),
    ]
    assert 0 not in pipe._open
    recorder.log.clear()
    await pipe._transact(0, {tp: [record(7, b"a"), record(8, b"b"), record(9, b"poison")]})
    await pipe._commit(0)
    sent = [e for e in recorder.log if e[0] == "send"]
    assert sent == [("send", [b"a", b"b", b"poison"])]  # the last is its dead letter
    assert ("offsets", {0: 10}) in recorder.log


async def test_at_least_once_acknowledges_offsets_in_order_whatever_order_acks_come_in():
    from modelstream.kafka import pipeline as module

    tp = TopicPartition(TOPIC, 0)
    pipe, recorder = pipeline({tp: 0})
    pipe.exactly_once = False
    pipe._shared = object()  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    acks = [loop.create_future(), loop.create_future()]

    async def send(producer: Any, outgoing: list[Outgoing]) -> list[Any]:
        return [module._Sent(acks[len(pipe._unacknowledged.get(0, ()))], "t.out", 0, 1)]

    pipe._send = send  # type: ignore[method-assign]
    await pipe._at_least_once(0, {tp: [record(0, b"a")]})
    await pipe._at_least_once(0, {tp: [record(1, b"b")]})  # sent before the first is acked
    acks[1].set_result(_Metadata(5))
    assert pipe._acknowledged == {}  # the second is acked, the first is not: nothing yet
    acks[0].set_result(_Metadata(4))
    await pipe._acknowledge_oldest(0)
    await pipe._acknowledge_oldest(0)
    assert pipe._acknowledged == {tp: 2}
    assert recorder.log.count(("processor committed", 0)) == 2


class _Metadata:
    def __init__(self, offset: int) -> None:
        self.offset = offset


async def test_a_producer_left_outside_its_transaction_fails_the_batch_not_the_service():
    """A producer whose sender ended fenced (paused past its session) raises IllegalOperation
    on the next send, not a KafkaError: the transaction fails, the producer is retired and
    the task reads on from its committed offset."""
    from aiokafka.errors import IllegalOperation

    tp = TopicPartition(TOPIC, 0)
    pipe, recorder = transactional({tp: 7}, interval_s=60.0)

    async def send(producer: Any, outgoing: list[Outgoing]) -> list[Any]:
        raise IllegalOperation("Can't send messages while not in transaction")

    pipe._send = send  # type: ignore[method-assign]
    await pipe._transact(0, {tp: [record(7, b"a")]})
    assert 0 not in pipe._open and 0 not in pipe._producers
    assert ("producer stopped", 0) in recorder.log and ("seek", 0, 7) in recorder.log
