"""SASL/SCRAM-SHA-512 over TLS with per-service ACLs, on a broker of this module's own."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from modelstream.contracts.client import RequestEncoder
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Feedback, ModelArtifact
from modelstream.kafka.clients import client_options
from modelstream.kafka.topology import create_topics
from modelstream.ops.broker import EmbeddedCluster, ensure_jars, fetch_broker_ids
from modelstream.ops.security import BrokerSecurity, generate_tls, grant_service
from modelstream.registry.artifact import generate_keys, load_private_key
from modelstream.services.gateway.app import GatewayApp
from modelstream.services.gateway.settings import GatewaySettings
from modelstream.services.monitor.app import MonitorApp
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.services.publisher.logic import history_key, publishable
from modelstream.settings import load
from tests.support.helpers import running
from tests.support.models import dataset, trained_body
from tests.support.ports import free_port_block

USERS = {
    "admin": "admin-secret",
    "predictor": "predictor-secret",
    "monitor": "monitor-secret",
    "gateway": "gateway-secret",
}


@pytest.fixture(scope="module")
def secure(tmp_path_factory):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("secure")
    security = BrokerSecurity(generate_tls(state / "tls"), USERS)
    cluster = EmbeddedCluster(
        load(state_dir=state, broker_port=free_port_block(1)), node_count=1, security=security
    )
    cluster.start()
    try:
        yield cluster, security
    finally:
        cluster.stop()


def as_principal(cluster, security, user, prefix, cls=None, **extra):  # type: ignore[no-untyped-def]
    from modelstream.settings import Settings

    return load(
        cls or Settings,
        bootstrap_servers=cluster.bootstrap,
        topic_prefix=prefix,
        security_protocol="SASL_SSL",
        sasl_username=user,
        sasl_password=USERS[user],
        ssl_ca_file=security.tls.ca,
        **extra,
    )


async def test_principals_acls_and_authentication(secure, tmp_path):  # type: ignore[no-untyped-def]
    cluster, security = secure
    prefix = f"sec{uuid.uuid4().hex[:6]}."
    admin = as_principal(cluster, security, "admin", prefix)
    await create_topics(admin)
    for service in ("predictor", "monitor", "gateway"):  # each its own principal
        await asyncio.to_thread(
            grant_service,
            cluster._java(),
            ensure_jars(admin),
            cluster.bootstrap,
            security,
            service,
            service,
            prefix,
            tmp_path,
        )
    predictor = as_principal(cluster, security, "predictor", prefix)

    # The predictor principal may write predictions but not the registry; only the
    # predictor answers calls: the gateway principal may write requests, not forge a reply.
    for user, allowed, refused_topic in (
        ("predictor", "predictions", "models"),
        ("gateway", "requests", "replies"),
    ):
        producer = AIOKafkaProducer(
            **client_options(as_principal(cluster, security, user, prefix)), acks="all"
        )
        await producer.start()
        try:
            await producer.send_and_wait(predictor.topic(allowed), b"allowed", key=b"k")
            with pytest.raises(KafkaError) as refused:
                await producer.send_and_wait(predictor.topic(refused_topic), b"forged", key=b"m")
            assert "Authorization" in type(refused.value).__name__
        finally:
            await producer.stop()

    # Unauthenticated clients are refused entirely; so is a wrong password.
    with pytest.raises(Exception):  # noqa: B017 - plaintext against a TLS listener fails
        await fetch_broker_ids(cluster.bootstrap, timeout_s=5)
    wrong = as_principal(cluster, security, "predictor", prefix)
    wrong_options = {**client_options(wrong), "sasl_plain_password": "not-the-password"}
    wrong_options.pop("bootstrap_servers")
    wrong_options.pop("client_id")
    with pytest.raises(Exception):  # noqa: B017 - SCRAM authentication failure
        await fetch_broker_ids(cluster.bootstrap, timeout_s=5, **wrong_options)

    # End to end: the real predictor, as its own principal with only its ACLs, serves a
    # model the admin published, transactions and consumer group included.
    generate_keys(tmp_path / "keys")
    body = trained_body("breast-cancer")
    artifact = publishable(
        body, 1, None, load_private_key(tmp_path / "keys" / "modelstream.key"), None
    )
    codec = default_codec()
    X, _, names, _ = dataset("breast-cancer")
    encoder = RequestEncoder(names)
    admin_producer = AIOKafkaProducer(**client_options(admin))
    await admin_producer.start()
    try:
        value = codec.encode(ModelArtifact, artifact)
        await admin_producer.send_and_wait(
            admin.topic("model-history"), history_key("breast-cancer", 1), value
        )
        await admin_producer.send_and_wait(admin.topic("models"), value, key=b"breast-cancer")
        app = PredictorApp(
            as_principal(
                cluster,
                security,
                "predictor",
                prefix,
                PredictorSettings,
                public_key_file=tmp_path / "keys" / "modelstream.pub",
            )
        )
        async with running(app):
            for i in range(50):
                await admin_producer.send(
                    admin.topic("requests"),
                    key=f"s{i}".encode(),
                    value=encoder.encode(f"s{i}", "breast-cancer", X[i], packed=True),
                )
            await admin_producer.flush()
            # A call through the gateway, as its own principal: the predictor's
            # transactions carry the reply (WRITE on `replies`), the gateway sees a live
            # predictor (DESCRIBE on its group) and reads the answer.
            await _call_through_the_gateway(cluster, security, prefix, tmp_path, X[0])
            consumer = AIOKafkaConsumer(
                admin.topic("predictions"),
                **client_options(admin),
                group_id=None,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
            )
            await consumer.start()
            seen: set[bytes] = set()
            try:
                deadline = asyncio.get_running_loop().time() + 60
                while len(seen) < 52 and asyncio.get_running_loop().time() < deadline:
                    batch = await consumer.getmany(timeout_ms=500)
                    seen.update(r.key for recs in batch.values() for r in recs)
            finally:
                await consumer.stop()
        # The monitor (faust) as its own principal: it joins the predictions with labels.
        monitor = MonitorApp(
            as_principal(
                cluster,
                security,
                "monitor",
                prefix,
                MonitorSettings,
                state_dir=tmp_path / "monitor",
                public_key_file=tmp_path / "keys" / "modelstream.pub",
            )
        )
        async with running(monitor):
            for i in range(50):
                await admin_producer.send(
                    admin.topic("feedback"),
                    key=f"s{i}".encode(),
                    value=codec.encode(
                        Feedback,
                        {
                            "request_id": f"s{i}",
                            "model": "breast-cancer",
                            "label": "1",
                            "timestamp_ms": None,
                        },
                    ),
                )
            await admin_producer.flush()
            deadline = asyncio.get_running_loop().time() + 60
            while (
                "breast-cancer" not in monitor.watches or monitor.joined_total("breast-cancer") < 50
            ):
                assert asyncio.get_running_loop().time() < deadline, "monitor joined nothing"
                await asyncio.sleep(0.2)
    finally:
        await admin_producer.stop()
    assert {f"s{i}".encode() for i in range(50)} <= seen
    assert len(seen) == 52  # "allowed", 50 requests and the gateway's call


async def _call_through_the_gateway(cluster, security, prefix, tmp_path, row) -> None:  # type: ignore[no-untyped-def]
    settings = as_principal(
        cluster,
        security,
        "gateway",
        prefix,
        GatewaySettings,
        gateway_port=0,
        gateway_timeout_s=20,
        public_key_file=tmp_path / "keys" / "modelstream.pub",
    )
    async with running(GatewayApp(settings)) as gateway, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{gateway.port}"
        deadline = asyncio.get_running_loop().time() + 60
        while (await http.get(f"{base}/v2/models/breast-cancer/ready")).status != 200:
            assert asyncio.get_running_loop().time() < deadline, "the gateway never got ready"
            await asyncio.sleep(0.5)
        body = {
            "id": "1",
            "inputs": [
                {"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row.tolist()}
            ],
        }
        r = await http.post(f"{base}/v2/models/breast-cancer/infer", json=body)
        answer = await r.json()
        assert r.status == 200, answer
        assert answer["id"] == "1" and len(answer["parameters"]["request_ids"]) == 1
