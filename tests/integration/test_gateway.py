"""Synchronous callers through the gateway, on the real broker, with independent clients:
tritonclient.http (Open Inference Protocol) and plain HTTP JSON as TensorFlow Serving's
REST documentation writes it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
from pydantic import SecretStr

from modelstream.learn.linear import LinearModel
from modelstream.ops.security import generate_tls
from modelstream.services.gateway.app import GatewayApp
from modelstream.services.gateway.settings import GatewaySettings
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from tests.support.helpers import eventually, running, service_settings
from tests.support.models import BC, dataset, publish, trained_body
from tests.support.processes import Predictor


@contextlib.asynccontextmanager
async def gateway(base, keys, **extra: Any) -> AsyncIterator[GatewayApp]:  # type: ignore[no-untyped-def]
    options = {"gateway_port": 0, "gateway_timeout_s": 10, **extra}
    app = GatewayApp(service_settings(GatewaySettings, base, keys, **options))
    async with running(app):
        await eventually(lambda: bool(app.owned), 30, "the gateway owns no reply partition")
        yield app


def _triton_infer(port: int, X: np.ndarray, version: str = "") -> dict[str, np.ndarray]:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    tensor = triton.InferInput("input-0", list(X.shape), "FP64")
    tensor.set_data_from_numpy(X)  # the binary tensor extension, tritonclient's default
    result = client.infer(
        BC,
        [tensor],
        model_version=version,
        outputs=[triton.InferRequestedOutput(n) for n in ("predict", "scores", "version")],
    )
    client.close()
    return {n: result.as_numpy(n) for n in ("predict", "scores", "version")}


async def test_both_protocols_answer_what_the_predictor_computes(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    v1 = await publish(base, keys, trained_body(BC), 1, production=False)
    v2 = await publish(base, keys, trained_body(BC, seed=9), 2)
    X, _, names, _ = dataset(BC)
    models = {1: LinearModel.from_body(v1["body"]), 2: LinearModel.from_body(v2["body"])}
    async with (
        running(PredictorApp(service_settings(PredictorSettings, base, keys))),
        gateway(base, keys) as gw,
    ):
        assert gw.models[BC].version == 2
        # Open Inference Protocol through tritonclient: 20 rows in one call
        out = await asyncio.to_thread(_triton_infer, gw.port, X[:20])
        np.testing.assert_allclose(out["scores"], models[2].proba(X[:20]), atol=1e-12)
        assert list(out["version"]) == [2] * 20
        assert [p if isinstance(p, str) else p.decode() for p in out["predict"]] == [
            str(c) for c in models[2].proba(X[:20]).argmax(axis=1)
        ]
        # a pinned version
        pinned = await asyncio.to_thread(_triton_infer, gw.port, X[:5], "1")
        np.testing.assert_allclose(pinned["scores"], models[1].proba(X[:5]), atol=1e-12)

        url = f"http://127.0.0.1:{gw.port}"
        async with aiohttp.ClientSession() as http:
            # TensorFlow Serving REST: rows as objects of named features, and columnar inputs
            instances = [dict(zip(names, row.tolist(), strict=True)) for row in X[20:23]]
            async with http.post(
                f"{url}/v1/models/{BC}:predict", json={"instances": instances}
            ) as r:
                assert r.status == 200, await r.text()
                predictions = (await r.json())["predictions"]
            np.testing.assert_allclose(
                [p["scores"] for p in predictions], models[2].proba(X[20:23]), atol=1e-12
            )
            columnar = {n: X[23:25, i].tolist() for i, n in enumerate(names)}
            async with http.post(
                f"{url}/v1/models/{BC}/versions/1:predict", json={"inputs": columnar}
            ) as r:
                assert [p["version"] for p in (await r.json())["predictions"]] == [1, 1]
            # metadata and status
            async with http.get(f"{url}/v2/models/{BC}") as r:
                metadata = await r.json()
            assert [i["name"] for i in metadata["inputs"]] == names
            async with http.get(f"{url}/v1/models/{BC}") as r:
                assert (await r.json())["model_version_status"][0]["state"] == "AVAILABLE"
            # errors: unknown model 404, malformed body 400, unknown feature 400, a row the
            # predictor dead-letters 400 with its reason, an unknown version 404
            async with http.post(f"{url}/v2/models/nope/infer", json={"inputs": []}) as r:
                assert r.status == 404 and "nope" in (await r.json())["error"]
            async with http.post(f"{url}/v2/models/{BC}/infer", data=b"{not json") as r:
                assert r.status == 400 and "not JSON" in (await r.json())["error"]
            bad = {"instances": [{**instances[0], "colour": 1.0}]}
            async with http.post(f"{url}/v1/models/{BC}:predict", json=bad) as r:
                assert r.status == 400 and "unknown feature 'colour'" in (await r.json())["error"]
            overflow = {"instances": [[1e308] * len(names)]}  # finite, but not for the model
            async with http.post(f"{url}/v1/models/{BC}:predict", json=overflow) as r:
                body = await r.json()
                assert r.status == 400 and "non-finite-score" in body["error"], body
            async with http.post(
                f"{url}/v1/models/{BC}/versions/7:predict", json={"instances": [X[0].tolist()]}
            ) as r:
                assert r.status == 404 and "unknown-version" in (await r.json())["error"]
            async with http.get(f"{url}/metrics") as r:
                assert "modelstream_gateway_calls_total" in await r.text()


async def test_two_copies_under_load_each_get_only_their_own_replies(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    v1 = await publish(base, keys, trained_body(BC), 1)
    model = LinearModel.from_body(v1["body"])
    X, _, _, _ = dataset(BC)
    async with (
        running(PredictorApp(service_settings(PredictorSettings, base, keys))),
        gateway(base, keys) as first,
        gateway(base, keys) as second,
    ):
        # both copies in the group, each with its own partitions
        await eventually(
            lambda: (
                bool(first.owned)
                and bool(second.owned)
                and not set(first.owned) & set(second.owned)
            ),
            30,
            "the two copies do not split the reply partitions",
        )
        first.unclaimed_replies = second.unclaimed_replies = 0

        async def call(http: aiohttp.ClientSession, port: int, i: int) -> None:
            rows = X[i % 500 : i % 500 + 4]
            body = {"instances": rows.tolist()}
            async with http.post(f"http://127.0.0.1:{port}/v1/models/{BC}:predict", json=body) as r:
                assert r.status == 200, await r.text()
                scores = [p["scores"] for p in (await r.json())["predictions"]]
            np.testing.assert_allclose(scores, model.proba(rows), atol=1e-12)

        async with aiohttp.ClientSession() as http:
            await asyncio.gather(
                *(call(http, (first if i % 2 else second).port, i) for i in range(400))
            )
    assert first.unclaimed_replies == 0 and second.unclaimed_replies == 0


async def test_a_token_is_required_when_set(topics, keys):  # type: ignore[no-untyped-def]
    await publish(topics, keys, trained_body(BC), 1)
    X, _, _, _ = dataset(BC)
    async with (
        running(PredictorApp(service_settings(PredictorSettings, topics, keys))),
        gateway(topics, keys, gateway_token=SecretStr("s3cret")) as gw,
        aiohttp.ClientSession() as http,
    ):
        url = f"http://127.0.0.1:{gw.port}/v1/models/{BC}:predict"
        body = {"instances": [X[0].tolist()]}
        async with http.post(url, json=body) as r:
            assert r.status == 401
        async with http.post(url, json=body, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with http.post(url, json=body, headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200
        async with http.get(f"http://127.0.0.1:{gw.port}/v2/health/ready") as r:
            assert r.status == 200  # health checks stay open


async def test_a_killed_predictor_leaves_calls_answered_or_timed_out_never_wrong(  # type: ignore[no-untyped-def]
    topics, keys, tmp_path
):
    base = topics
    v1 = await publish(base, keys, trained_body(BC), 1)
    model = LinearModel.from_body(v1["body"])
    X, _, _, _ = dataset(BC)
    # two predictor processes share `requests`; one is killed mid-load
    predictors = [
        Predictor(base, keys, str(i), tmp_path, MODELSTREAM_STATE_DIR=str(tmp_path))
        for i in range(2)
    ]
    statuses: list[int] = []
    try:
        async with gateway(base, keys, gateway_timeout_s=4) as gw, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{gw.port}/v1/models/{BC}:predict"

            async def call(i: int) -> None:
                rows = X[i % 500 : i % 500 + 2]
                async with http.post(url, json={"instances": rows.tolist()}) as r:
                    statuses.append(r.status)
                    if r.status == 200:  # an answer is always the right one
                        scores = [p["scores"] for p in (await r.json())["predictions"]]
                        np.testing.assert_allclose(scores, model.proba(rows), atol=1e-12)
                    else:
                        assert r.status == 504, await r.text()

            async def load(start: int, n: int) -> None:
                for j in range(0, n, 20):
                    await asyncio.gather(*(call(start + j + k) for k in range(20)))

            async def settled(what: str) -> None:
                """Until 40 calls in a row are answered (the group has settled)."""
                deadline = asyncio.get_running_loop().time() + 90
                while True:
                    mark = len(statuses)
                    await load(10_000, 40)
                    if statuses[mark:] == [200] * 40:
                        return
                    assert asyncio.get_running_loop().time() < deadline, what

            await settled("the two predictors never answered")
            deadline = asyncio.get_running_loop().time() + 90
            while not all(p.consumed() > 0 for p in predictors):  # both hold partitions
                assert asyncio.get_running_loop().time() < deadline, "a predictor idles"
                await settled("the group of two never settled")
            mark = len(statuses)
            await load(0, 100)  # both predictors up and answering
            assert set(statuses[mark:]) == {200}
            predictors[0].process.send_signal(signal.SIGKILL)
            await load(100, 300)  # through the rebalance: answered, or 504, never wrong
            await settled("the survivor never took over")
            mark = len(statuses)
            await load(400, 100)  # after it: the survivor answers everything
            assert statuses[mark:] == [200] * 100
    finally:
        for p in predictors:
            p.stop()
    print(f"\nkilled predictor: {statuses.count(200)} answered, {statuses.count(504)} timed out")


async def test_mtls_refuses_clients_without_a_certificate(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    tls = generate_tls(tmp_path / "tls")
    async with gateway(
        topics,
        keys,
        gateway_tls_cert_file=tls.broker,
        gateway_tls_key_file=tls.broker,
        gateway_tls_client_ca_file=tls.ca,
    ) as gw:
        url = f"https://127.0.0.1:{gw.port}/v2/health/live"
        anonymous = ssl.create_default_context(cafile=str(tls.ca))
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(url, ssl=anonymous) as r:
                    await r.read()
            known = ssl.create_default_context(cafile=str(tls.ca))
            known.load_cert_chain(tls.broker)  # a certificate the gateway's CA signed
            async with http.get(url, ssl=known) as r:
                assert r.status == 200


# -- trust boundaries ---------------------------------------------------------------------
def _oip_row(row: np.ndarray, call_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row.tolist()}]
    }
    if call_id is not None:
        body["id"] = call_id
    return body


def _triton_ready(port: int) -> tuple[dict[str, Any], bool, bool, bool]:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        return (
            client.get_server_metadata(),
            client.is_server_ready(),
            client.is_model_ready(BC),
            client.is_model_ready(BC, "1"),
        )
    finally:
        client.close()


async def test_ids_are_the_gateways_own_and_readiness_needs_a_predictor(topics, keys):  # type: ignore[no-untyped-def]
    from aiokafka import AIOKafkaProducer

    from modelstream.kafka.clients import client_options

    base = topics
    v1 = await publish(base, keys, trained_body(BC), 1)
    model = LinearModel.from_body(v1["body"])
    X, _, _, _ = dataset(BC)
    async with gateway(base, keys) as gw, aiohttp.ClientSession() as http:
        metadata, server, model_ready, _ = await asyncio.to_thread(_triton_ready, gw.port)
        assert metadata["name"] == "modelstream" and not server and not model_ready
        async with running(PredictorApp(service_settings(PredictorSettings, base, keys))):
            await eventually(lambda: gw.predictors_live, 30, "no predictor seen")
            _, server, model_ready, version_ready = await asyncio.to_thread(_triton_ready, gw.port)
            assert server and model_ready and version_ready

            # sixty concurrent callers all say "id": "1": each gets its own answer
            url = f"http://127.0.0.1:{gw.port}/v2/models/{BC}/infer"

            async def call(i: int) -> tuple[int, dict[str, Any]]:
                async with http.post(url, json=_oip_row(X[i], "1")) as r:
                    return r.status, await r.json()

            answers = await asyncio.gather(*(call(i) for i in range(60)))
            assert [status for status, _ in answers] == [200] * 60, answers[:3]
            assert {body["id"] for _, body in answers} == {"1"}
            issued = {body["parameters"]["request_ids"][0] for _, body in answers}
            assert len(issued) == 60 and all(len(i) == 34 for i in issued)  # 128 bits + "-0"
            for i, (_, body) in enumerate(answers):
                scores = next(o for o in body["outputs"] if o["name"] == "scores")["data"]
                np.testing.assert_allclose(scores, model.proba(X[i : i + 1])[0], atol=1e-12)
            # TensorFlow Serving callers get the ids in a header
            tf_url = f"http://127.0.0.1:{gw.port}/v1/models/{BC}:predict"
            async with http.post(tf_url, json={"instances": X[:3].tolist()}) as r:
                assert len(r.headers["Modelstream-Request-Ids"].split(",")) == 3

            # a reply nobody asked for (a forgery, or a late one) is dropped and counted
            before = gw.unclaimed_replies
            producer = AIOKafkaProducer(**client_options(base))
            await producer.start()
            try:
                for partition in gw.owned:
                    await producer.send_and_wait(
                        base.topic("replies"), b"forged", key=b"1-0", partition=partition
                    )
            finally:
                await producer.stop()
            await eventually(
                lambda: gw.unclaimed_replies - before == len(gw.owned), 30, "forgeries unseen"
            )
        await eventually(lambda: not gw.predictors_live, 30, "a stopped predictor still seen")
        _, server, model_ready, _ = await asyncio.to_thread(_triton_ready, gw.port)
        assert not server and not model_ready


GROWING = {"gateway_metadata_refresh_s": 2, "gateway_new_partition_grace_s": 5}


async def test_calls_on_moved_or_added_reply_partitions_are_answered(topics, keys):  # type: ignore[no-untyped-def]
    from aiokafka.admin import NewPartitions

    from modelstream.kafka.clients import admin_client

    base = topics
    await publish(base, keys, trained_body(BC), 1)
    X, _, _, _ = dataset(BC)
    async with (
        gateway(base, keys, gateway_timeout_s=60, **GROWING) as first,
        aiohttp.ClientSession() as http,
    ):
        assert len(first.owned) == 6  # alone: every partition
        url = f"http://127.0.0.1:{first.port}/v2/models/{BC}/infer"

        async def call(i: int) -> int:
            async with http.post(url, json=_oip_row(X[i])) as r:
                return r.status

        # calls wait on all six partitions while no predictor runs ...
        waiting = [asyncio.create_task(call(i)) for i in range(24)]
        await eventually(lambda: len(first.pending) == 24, 30, "calls not sent")
        # ... a second copy joins and takes some of those partitions ...
        async with gateway(base, keys, **GROWING) as second:
            await eventually(
                lambda: bool(first.owned) and len(first.owned) + len(second.owned) == 6,
                60,
                "the copies do not split the partitions",
            )
            assert first.stray_partitions, "no partition with waiting calls moved"
            # ... and the predictor answers on the partitions the calls named
            predictor = PredictorApp(service_settings(PredictorSettings, base, keys))
            async with running(predictor):
                assert await asyncio.gather(*waiting) == [200] * 24
                assert not first.stray_partitions  # read until its calls were answered
                # the moved partitions' answers, read by the copy that owns them now (it
                # may poll after the first copy's stray reading answered every call)
                await eventually(
                    lambda: second.unclaimed_replies > 0, 30, "moved partitions' answers unseen"
                )

                # partitions added to `replies` are assigned and answered on
                async with admin_client(base) as admin:
                    await admin.create_partitions({base.topic("replies"): NewPartitions(8)})
                await eventually(
                    lambda: len(first.owned) + len(second.owned) == 8, 60, "8 partitions unseen"
                )
                await eventually(
                    lambda: predictor.processor.reply_partitions == 8,
                    30,
                    f"the predictor answers on {predictor.processor.reply_partitions} partitions",
                )
                await asyncio.sleep(GROWING["gateway_new_partition_grace_s"])
                # calls go round the owned partitions: each copy's next calls name
                # every partition it owns, the added ones included
                for copy in (first, second):
                    copy_url = f"http://127.0.0.1:{copy.port}/v2/models/{BC}/infer"
                    for i in range(2 * len(copy.owned)):
                        async with http.post(copy_url, json=_oip_row(X[i])) as r:
                            assert r.status == 200, await r.text()
