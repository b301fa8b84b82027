"""Workarounds for aiokafka bugs and gaps, in one place. Each names what it works around
and is pinned by a test in ``tests/unit/kafka/test_compat.py`` that fails once upstream
changes, so the workaround can be dropped."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer


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
