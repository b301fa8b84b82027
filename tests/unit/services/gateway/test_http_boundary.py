"""The gateway's HTTP boundary without a broker: every route behind the real middlewares,
with the Kafka round trip replaced by an answering double (``_call``), so what is tested is
what the gateway makes of paths, headers and bodies.

The property of the fuzz tests: a mutated body of either protocol (JSON, and the binary
tensor extension) becomes rows or a 4xx with a reason, never anything else."""

from __future__ import annotations

import asyncio
import json
import random
import struct
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from modelstream.services.gateway.app import REQUEST_IDS_HEADER, GatewayApp, new_request_ids
from modelstream.services.gateway.logic import (
    CallError,
    ModelInfo,
    Rows,
    oip_body,
    oip_rows,
    tf_rows,
)
from modelstream.services.gateway.settings import GatewaySettings
from modelstream.settings import load
from tests.support.http_corpus import fuzzed_body, hostile_calls, mutate_bytes, mutate_structure
from tests.unit.services.gateway.test_logic import BC, tensor_model

FUZZ_CASES = 10_000


class AnsweringGateway(GatewayApp):
    """The HTTP side of the real gateway; each row is answered at once, class "1"."""

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        self.release_calls: asyncio.Event | None = None  # set: calls wait for it
        self.calls = 0
        self.timeouts: list[float] = []

    async def _call(
        self, model: ModelInfo, version: int | None, rows: Rows, timeout_s: float
    ) -> tuple[list[str], list[Any]]:
        if not self.owned:
            raise CallError(503, "the gateway owns no reply partition yet")
        self.calls += 1
        self.timeouts.append(timeout_s)
        if self.release_calls is not None:
            await self.release_calls.wait()
        ids = new_request_ids(len(rows))
        answers = [
            {"prediction": "1", "scores": {"0": 0.25, "1": 0.75}, "version": model.version}
            for _ in ids
        ]
        return ids, answers


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[AnsweringGateway, TestClient]]:
    settings = load(
        GatewaySettings,
        bootstrap_servers="127.0.0.1:1",
        gateway_max_in_flight=4,
        gateway_max_body_bytes=1 << 20,
    )
    app = AnsweringGateway(settings)
    app.models = {"bc": BC, "img": tensor_model()}
    app.versions = {"bc": {3}, "img": {2}}
    app.owned = [0]
    app.predictors_live = True
    client = TestClient(TestServer(app.web_app()))
    await client.start_server()
    try:
        yield app, client
    finally:
        await client.close()


ROW = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}


async def test_callers_may_reuse_an_id_concurrently(gateway):  # type: ignore[no-untyped-def]
    app, client = gateway
    app.settings.gateway_max_in_flight = 100

    async def one() -> tuple[int, dict[str, Any], str]:
        r = await client.post("/v2/models/bc/infer", json={**ROW, "id": "1"})
        return r.status, await r.json(), r.headers[REQUEST_IDS_HEADER]

    answers = await asyncio.gather(*(one() for _ in range(60)))
    assert {status for status, _, _ in answers} == {200}
    assert {body["id"] for _, body, _ in answers} == {"1"}
    issued = [body["parameters"]["request_ids"][0] for _, body, _ in answers]
    assert len(set(issued)) == 60 and [h for _, _, h in answers] == issued
    two = new_request_ids(2)  # rows of one call share nothing but the row number
    assert two[0][:32] != two[1][:32] and [i[-2:] for i in two] == ["-0", "-1"]
    r = await client.post("/v2/models/bc/infer", json=ROW)
    assert "id" not in await r.json()


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        (f"/v2/models/bc/versions/{2**70}/infer", 400, "not a version number"),
        ("/v2/models/bc/versions/4294967296/infer", 400, "outside 1.."),
        ("/v2/models/bc/versions/0/infer", 400, "outside 1.."),
        ("/v2/models/bc/versions/-1/infer", 400, "not a version number"),
        ("/v2/models/bc/versions/%C3%A9/infer", 400, "not a version number"),
        ("/v1/models/bc/versions/99999999999999999999:predict", 400, "not a version number"),
        ("/v2/models/nope/infer", 404, "no production version"),
        ("/v2/models/bc/infer/extra", 404, "Not Found"),
    ],
)
async def test_bad_paths_are_4xx_with_a_reason(gateway, path, status, reason):  # type: ignore[no-untyped-def]
    _, client = gateway
    r = await client.post(path, json=ROW)
    assert r.status == status
    assert reason in (await r.json())["error"]


async def test_bodies_deep_huge_or_not_json_are_4xx(gateway):  # type: ignore[no-untyped-def]
    _, client = gateway
    deep = b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    for path in ("/v2/models/bc/infer", "/v1/models/bc:predict"):
        r = await client.post(path, data=deep)
        assert (r.status, "nested too deeply") == (400, (await r.json())["error"][-17:])
        r = await client.post(path, data=b"\xff\xfe" * 10)
        assert r.status == 400 and "not JSON" in (await r.json())["error"]
        r = await client.post(path, data=b"0" * (2 << 20))
        assert r.status == 413 and "error" in await r.json()
    r = await client.get("/v2/models/bc/infer")
    assert r.status == 405 and "error" in await r.json()
    numbers = {
        "inputs": [{"name": "x", "shape": [1, 2**70], "datatype": "FP64", "data": [1, 2, 3]}]
    }
    r = await client.post("/v2/models/bc/infer", json=numbers)
    assert r.status == 400


async def test_a_deadline_is_read_and_checked(gateway):  # type: ignore[no-untyped-def]
    app, client = gateway
    for headers, body, status in [
        ({"Modelstream-Timeout-Ms": "250"}, ROW, 200),
        ({"Modelstream-Timeout-Ms": "soon"}, ROW, 400),
        ({"Modelstream-Timeout-Ms": "-5"}, ROW, 400),
        ({"Modelstream-Timeout-Ms": "inf"}, ROW, 400),
        ({}, {**ROW, "parameters": {"timeout": 250_000}}, 200),
        ({}, {**ROW, "parameters": {"timeout": 60_000_000}}, 200),
        ({}, ROW, 200),
        ({}, {**ROW, "parameters": {"timeout": "1"}}, 400),
        ({}, {**ROW, "parameters": {"timeout": int("9" * 400)}}, 400),
    ]:
        r = await client.post("/v2/models/bc/infer", json=body, headers=headers)
        assert r.status == status, (headers, body)
    # milliseconds and Triton's microseconds; never past the gateway's own timeout (5 s)
    assert app.timeouts == [0.25, 0.25, 5.0, 5.0]


async def test_calls_past_the_bound_in_flight_are_refused_at_once(gateway):  # type: ignore[no-untyped-def]
    app, client = gateway
    app.release_calls = asyncio.Event()
    waiting = [asyncio.create_task(client.post("/v2/models/bc/infer", json=ROW)) for _ in range(4)]
    while app.in_flight < 4:  # noqa: ASYNC110 - the calls are in another task's hands
        await asyncio.sleep(0.01)
    refused = await client.post("/v2/models/bc/infer", json=ROW)
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert "in flight" in (await refused.json())["error"]
    app.release_calls.set()
    assert [r.status for r in await asyncio.gather(*waiting)] == [200] * 4
    assert app.in_flight == 0


async def test_readiness_as_the_protocol_says(gateway):  # type: ignore[no-untyped-def]
    app, client = gateway
    r = await client.get("/v2")
    assert (await r.json())["name"] == "modelstream"
    assert (await client.get("/v2/health/ready")).status == 200
    assert (await client.get("/v2/models/bc/ready")).status == 200
    assert (await client.get("/v2/models/bc/versions/3/ready")).status == 200
    assert (await client.get("/v2/models/bc/versions/4/ready")).status == 503
    assert (await client.get("/v2/models/nope/ready")).status == 404
    app.predictors_live = False
    r = await client.get("/v2/models/bc/ready")
    assert r.status == 503 and (await r.json())["reason"] == "no predictor is consuming requests"
    assert (await client.get("/v2/health/ready")).status == 503
    app.owned = []
    r = await client.post("/v2/models/bc/infer", json=ROW)
    assert r.status == 503 and "reply partition" in (await r.json())["error"]


# -- fuzz ------------------------------------------------------------------------------------
def _json_seeds() -> list[bytes]:
    bodies: list[Any] = [
        ROW,
        {"inputs": [{"name": n, "shape": [2], "datatype": "FP32", "data": [1, 2]} for n in "abc"]},
        {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]},
        {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": [{"b64": "QQ=="}]}
            ]
        },
        {"id": "1", "parameters": {"timeout": 5}, **ROW},
    ]
    return [json.dumps(b).encode() for b in bodies]


def _binary_seed() -> tuple[bytes, int]:
    values = np.arange(6, dtype="<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(values)},
            }
        ]
    }
    text = json.dumps(header).encode()
    return text + values, len(text)


def _rows(raw: bytes, header: str | None, model: ModelInfo, tf: bool = False) -> None:
    try:
        body = oip_body(raw, header)
        (tf_rows if tf else oip_rows)(body, model, 1000)
    except CallError as exc:
        assert 400 <= exc.status < 500 and exc.message


def test_fuzzed_json_bodies_become_rows_or_4xx():
    rng = random.Random(20)
    seeds = _json_seeds()
    models = [BC, tensor_model()]
    for i in range(FUZZ_CASES):
        raw = fuzzed_body(rng.choice(seeds), rng)
        _rows(raw, None, models[i % 2])


def test_fuzzed_tf_serving_bodies_become_rows_or_4xx():
    rng = random.Random(21)
    seeds = [
        json.dumps(b).encode()
        for b in (
            {"instances": [[1, 2, 3], [4, 5, 6]]},
            {"instances": [{"a": 1, "b": 2, "c": 3}]},
            {"inputs": {"a": [1], "b": [2], "c": [3]}},
            {"instances": [{"b64": "QUJD"}]},
        )
    ]
    models = [BC, tensor_model()]
    for i in range(FUZZ_CASES):
        _rows(fuzzed_body(rng.choice(seeds), rng), None, models[i % 2], tf=True)


def test_fuzzed_binary_extension_bodies_become_rows_or_4xx():
    rng = random.Random(22)
    seed, length = _binary_seed()
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"abc", b"\x89PNG"))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(strings)},
                }
            ]
        }
    ).encode()
    seeds = [(seed, length, BC), (header + strings, len(header), tensor_model())]
    for _ in range(FUZZ_CASES):
        raw, size, model = rng.choice(seeds)
        if rng.random() < 0.5:  # the header's JSON, its sizes and shapes
            header = json.dumps(mutate_structure(json.loads(raw[:size]), rng)).encode()
            mutated, size = header + raw[size:], len(header)
        else:  # the bytes, the header's length included
            mutated = mutate_bytes(raw, rng)
        declared = rng.choice([str(size)] * 3 + [str(size + rng.randint(-9, 9)), "x", "9" * 30])
        _rows(mutated, declared, model)


async def test_hostile_calls_through_the_routes_are_never_a_500(gateway):  # type: ignore[no-untyped-def]
    app, client = gateway
    app.settings.gateway_max_in_flight = 1000
    statuses: dict[int, int] = {}
    rows = np.arange(6, dtype=float).reshape(2, 3)
    for method, path, headers, body in hostile_calls("bc", rows, random.Random(23), 500):
        r = await client.request(method, path, data=body, headers=headers)
        statuses[r.status] = statuses.get(r.status, 0) + 1
        if r.status != 200:
            assert 400 <= r.status < 500 and (await r.json())["error"], (path, r.status)
    assert 200 in statuses and any(s >= 400 for s in statuses)


async def test_requests_that_are_not_http_are_a_400_and_one_log_line_per_kind(caplog):  # type: ignore[no-untyped-def]
    """aiohttp answers them before any middleware (a plain-text 400 with its reason); its
    ERROR line with a traceback per request becomes one WARNING per kind and a count."""
    import logging

    from aiohttp import web

    from modelstream.services.gateway.app import http_runner

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/", ok)
    runner = http_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    not_http = [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS on the plain port
        b"GET /\x00 HTTP/1.1\r\n\r\n",
    ]
    statuses = []
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    try:
        for i in range(60):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(not_http[i % len(not_http)])
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            statuses.append(answer.split(b"\r\n", 1)[0].split(b" ")[1])
            writer.close()
    finally:
        await runner.cleanup()
    assert statuses == [b"400"] * 60
    errors = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= 40]
    assert errors == []
    first = [r.getMessage() for r in caplog.records if "unparseable request" in r.getMessage()]
    assert 1 <= len(first) <= len(not_http)  # one per kind (TLS is logged at DEBUG by aiohttp)
    runner_log = [h for h in caplog.records if "gateway refused" in h.getMessage()]
    from modelstream.kafka.quiet import quiet_log

    quiet_log(logging.getLogger("aiohttp.server"), "gateway refused", "requests").flush()
    summary = [r.getMessage() for r in caplog.records if "gateway refused" in r.getMessage()]
    assert len(summary) == len(runner_log) + 1 and "requests in the last" in summary[-1]
