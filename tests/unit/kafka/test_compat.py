"""The aiokafka workarounds in kafka/compat.py are still needed: each test fails once the
library changes, so the workaround can be dropped or rewritten."""

import asyncio
import subprocess
import sys

from aiokafka import AIOKafkaConsumer


def test_describe_groups_v3_still_decodes_with_the_v2_response():
    # A fresh interpreter: the workaround itself patches the module once applied.
    probe = (
        "from aiokafka.protocol import admin as p; "
        "print(p.DescribeGroupsRequest_v3.RESPONSE_TYPE is p.DescribeGroupsResponse_v2)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True", "aiokafka fixed DescribeGroups v3: drop the patch"


def test_the_patch_points_v3_at_its_own_response():
    from aiokafka.protocol import admin as protocol

    from modelstream.kafka.compat import fix_describe_groups_decoding

    fix_describe_groups_decoding()
    assert protocol.DescribeGroupsRequest_v3.RESPONSE_TYPE is protocol.DescribeGroupsResponse_v3


async def test_metadata_for_an_unsubscribed_topic_still_needs_the_private_call():
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started
    wait = getattr(consumer._client, "_wait_on_metadata", None)
    assert wait is not None and asyncio.iscoroutinefunction(wait), (
        "aiokafka's client lost _wait_on_metadata: rewrite compat.wait_for_metadata"
    )


async def test_partition_counts_still_need_the_private_metadata_call():
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started
    fetch = getattr(consumer._client, "fetch_all_metadata", None)
    assert fetch is not None and asyncio.iscoroutinefunction(fetch), (
        "aiokafka's client lost fetch_all_metadata: rewrite compat.fresh_partition_count"
    )
    assert not hasattr(consumer, "partition_count"), "a public call exists now: use it"
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started
    assert asyncio.iscoroutinefunction(producer.client.fetch_all_metadata)
    await producer.client.close()


async def test_a_lost_connection_during_a_coordinator_lookup_still_ends_the_sender():
    """aiokafka's sender retries a coordinator lookup on CoordinatorNotAvailable,
    NodeNotReady and RequestTimedOut, not on KafkaConnectionError: the pipeline replaces a
    producer whose transaction failed (compat.retire_producer). Once this lookup is
    retried upstream, the replacement is no longer needed for this case."""
    from aiokafka.client import CoordinationType
    from aiokafka.errors import KafkaConnectionError, KafkaError
    from aiokafka.producer.sender import Sender
    from aiokafka.producer.transaction_manager import TransactionManager

    class Client:
        lookups = 0

        async def coordinator_lookup(self, kind, key):  # type: ignore[no-untyped-def]
            Client.lookups += 1
            if Client.lookups == 1:
                raise KafkaConnectionError("Connection at 127.0.0.1:1 closed")
            return 0

        async def ready(self, node_id, group=None):  # type: ignore[no-untyped-def]
            return True

        async def force_metadata_update(self):  # type: ignore[no-untyped-def]
            return True

    sender = Sender(
        Client(),
        acks=-1,
        txn_manager=TransactionManager("t", 60_000),
        message_accumulator=None,
        retry_backoff_ms=1,
        request_timeout_ms=1000,
    )
    try:
        await sender._find_coordinator(CoordinationType.GROUP, "group")
    except KafkaError as exc:
        assert "KafkaConnectionError" in str(exc)
    else:
        raise AssertionError("aiokafka retries the lookup now: see compat.retire_producer")
    assert Client.lookups == 1


def test_the_sender_still_waits_a_fixed_20_ms_after_concurrent_transactions():
    """aiokafka answers CONCURRENT_TRANSACTIONS on a transaction's first AddPartitionsToTxn
    with its module's BACKOFF_OVERRIDE (20 ms), not retry_backoff_ms: the reason for
    compat.shorten_concurrent_transactions_backoff. A fresh interpreter: the patch is applied
    in this one as soon as a transactional producer is made."""
    probe = "from aiokafka.producer import sender; print(sender.BACKOFF_OVERRIDE)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert float(result.stdout) == 0.02, "aiokafka changed its backoff: review compat"


def test_a_concurrent_transactions_answer_is_retried_after_the_shortened_backoff():
    from aiokafka import TopicPartition
    from aiokafka.errors import ConcurrentTransactions
    from aiokafka.producer.sender import AddPartitionsToTxnHandler
    from aiokafka.protocol.transaction import AddPartitionsToTxnResponse_v0

    from modelstream.kafka.compat import (
        CONCURRENT_TRANSACTIONS_BACKOFF_S,
        shorten_concurrent_transactions_backoff,
    )

    class TransactionManager:
        txn_partitions = frozenset[TopicPartition]()  # the transaction's first partitions

    class Sender:
        _retry_backoff = 0.1
        _txn_manager = TransactionManager()

    shorten_concurrent_transactions_backoff()
    handler = AddPartitionsToTxnHandler(Sender(), [TopicPartition("t", 0)])
    answer = AddPartitionsToTxnResponse_v0(
        throttle_time_ms=0, errors=[("t", [(0, ConcurrentTransactions.errno)])]
    )
    assert handler.handle_response(answer) == CONCURRENT_TRANSACTIONS_BACKOFF_S


def test_sending_outside_a_transaction_still_raises_an_error_that_is_not_a_kafka_error():
    """Why compat.TRANSACTION_ERRORS lists IllegalOperation beside KafkaError."""
    from aiokafka.errors import IllegalOperation, KafkaError

    from modelstream.kafka.compat import TRANSACTION_ERRORS

    assert not issubclass(IllegalOperation, KafkaError), "aiokafka made it a KafkaError"
    assert IllegalOperation in TRANSACTION_ERRORS
