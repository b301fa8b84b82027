"""Workarounds for aiokafka bugs and gaps, in one place. Each names what it works around
and is pinned by a test in ``tests/unit/kafka/test_compat.py`` that fails once upstream
changes, so the workaround can be dropped."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import IllegalOperation, KafkaError

log = logging.getLogger(__name__)


def fix_describe_groups_decoding() -> None:
    """aiokafka 0.14 pairs the DescribeGroups v3 request with the v2 response schema, which
    lacks v3's ``authorized_operations`` field, so decoding any v3 answer (Kafka >= 2.3)
    underruns. Point the request at its own response schema; a no-op once fixed upstream."""
    from aiokafka.protocol import admin as protocol

    if protocol.DescribeGroupsRequest_v3.RESPONSE_TYPE is protocol.DescribeGroupsResponse_v2:
        protocol.DescribeGroupsRequest_v3.RESPONSE_TYPE = protocol.DescribeGroupsResponse_v3


async def wait_for_metadata(consumer: AIOKafkaConsumer, topic: str) -> None:
    """A consumer that was never subscribed to ``topic`` has no partition metadata for it,
    and aiokafka has no public call that fetches it (``partitions_for_topic`` only reads the
    cache). Its client's private ``_wait_on_metadata`` does; pinned by a test."""
    await consumer._client._wait_on_metadata(topic)


async def fresh_partition_count(client_of: AIOKafkaConsumer | AIOKafkaProducer, topic: str) -> int:
    """How many partitions ``topic`` has now, asked of the cluster (0 if it does not
    exist). aiokafka's public ``partitions_for_topic`` reads a cache refreshed only for
    topics the consumer reads, ``topics()`` returns names only, and a producer's
    ``partitions_for`` waits for a missing topic; their client's ``fetch_all_metadata``
    answers with partitions. Pinned by a test."""
    client = client_of._client if isinstance(client_of, AIOKafkaConsumer) else client_of.client
    cluster = await client.fetch_all_metadata()
    return len(cluster.partitions_for_topic(topic) or ())


async def retire_producer(producer: AIOKafkaProducer, timeout_s: float = 10.0) -> None:
    """Stop a transactional producer whose transaction failed; its task starts a new one.

    aiokafka 0.14's sender retries a coordinator lookup only on CoordinatorNotAvailable,
    NodeNotReady and RequestTimedOut (the fix of aio-libs/aiokafka#1151, #1153). When the
    broker it asks is killed mid-request, the lookup raises KafkaConnectionError, the
    sender routine ends ("Unexpected error during batch delivery") and every later
    transaction on that producer waits forever. A new producer's InitProducerId fences the
    old one and aborts its open transaction, so nothing the old one sent becomes visible."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except Exception as exc:  # a producer whose sender died may fail to stop cleanly
        log.warning("stopping a failed producer: %s: %s", type(exc).__name__, exc)
        try:  # stop() cancelled before it closed the connections: close them here
            await asyncio.wait_for(producer.client.close(), timeout_s)
        except Exception as again:
            log.warning("closing a failed producer's connections: %s", again)


# How long a transactional producer waits before asking again to add a partition to a new
# transaction the coordinator still answers CONCURRENT_TRANSACTIONS for (its markers of the
# previous transaction are being written, about a millisecond on one broker).
CONCURRENT_TRANSACTIONS_BACKOFF_S = 0.0005


def shorten_concurrent_transactions_backoff() -> None:
    """aiokafka 0.14's sender waits a fixed ``BACKOFF_OVERRIDE`` of 20 ms (not the
    producer's ``retry_backoff_ms``) when AddPartitionsToTxn of a transaction's first
    partitions is answered CONCURRENT_TRANSACTIONS (KAFKA-5477): right after EndTxn, so
    every transaction that follows another closely paid 20 ms for markers that take about
    one. The module global is read at each answer; a retry every 0.5 ms costs one small
    request on a connection that is idle meanwhile. See aio-libs/aiokafka
    ``producer/sender.py`` (``AddPartitionsToTxnHandler.handle_response``); pinned by
    ``tests/unit/kafka/test_compat.py`` and measured by
    ``tests/integration/test_predictor.py::test_the_next_transaction_starts_within_milliseconds``."""
    from aiokafka.producer import sender

    if getattr(sender, "BACKOFF_OVERRIDE", None) is None:
        raise RuntimeError("aiokafka's sender has no BACKOFF_OVERRIDE: review compat")
    sender.BACKOFF_OVERRIDE = CONCURRENT_TRANSACTIONS_BACKOFF_S


# What a transaction that cannot go on raises. aiokafka 0.14's sender ends with
# ProducerFenced when a producer paused past its session wakes up to find its transaction
# fenced (AddPartitionsToTxn); the producer then leaves its transaction behind, and the
# next send raises IllegalOperation ("Can't send messages while not in transaction"),
# which is not a KafkaError, and beginning a new one fails the transaction manager's state
# assertion. Each is a failed transaction for the pipeline (retire the producer, read
# again from the committed offset), not a crash. Pinned by tests/unit/kafka/test_compat.py.
TRANSACTION_ERRORS: tuple[type[Exception], ...] = (KafkaError, IllegalOperation, AssertionError)
