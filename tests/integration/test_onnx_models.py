"""Bring your own model: scikit-learn -> skl2onnx -> import -> gate -> publish -> serve;
and the served model exported to ONNX scores like the predictor in onnxruntime."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import onnxruntime as ort
from river import datasets
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelstream.contracts.client import RequestEncoder
from modelstream.registry.artifact import generate_keys, load_public_key
from modelstream.registry.follower import load_production
from modelstream.registry.onnx_model import describe, onnx_candidate
from modelstream.services.monitor.app import MonitorApp
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import load
from tests.support import onnx_models
from tests.support.helpers import (
    consume_until,
    decoded,
    define,
    eventually,
    produce,
    produce_records,
    read_all,
    run_cli,
    running,
    service_settings,
)
from tests.support.models import dataset, feedback_records, predictor_settings, publish

BC = "breast-cancer"


async def cli(base, keys, *args):  # type: ignore[no-untyped-def]
    return await run_cli(base, *args, MODELSTREAM_PUBLIC_KEY_FILE=str(keys / "modelstream.pub"))


async def test_scikit_learn_model_imported_gated_served_and_exported(topics, tmp_path):  # type: ignore[no-untyped-def]
    base = topics
    generate_keys(tmp_path / "keys")
    keys = tmp_path / "keys"
    X, y, names, _ = dataset(BC)
    sklearn_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    onnx_path = tmp_path / "sklearn.onnx"
    onnx_path.write_bytes(to_onnx(sklearn_model, X[:1].astype(np.float32)).SerializeToString())

    await define(
        base,
        BC,
        "BINARY",
        feature_names=tuple(names),
        classes=("0", "1"),
        thresholds={"min_accuracy": 0.9},
    )
    # recent labelled data for the holdout gate
    await produce_records(
        base,
        "training",
        "TrainingExample",
        [
            {
                "model": BC,
                "features": dict(zip(names, row.tolist(), strict=True)),
                "label": str(int(label)),
            }
            for row, label in zip(X, y, strict=True)
        ],
        key=lambda r: r["model"],
    )
    common = {
        "bootstrap_servers": base.bootstrap,
        "topic_prefix": base.topic_prefix,
        "public_key_file": keys / "modelstream.pub",
    }
    async with (
        running(ValidatorApp(load(ValidatorSettings, **common))),
        running(
            PublisherApp(
                load(PublisherSettings, **common, private_key_file=keys / "modelstream.key")
            )
        ),
    ):
        imported = await cli(
            base, keys, "models", "import", BC, str(onnx_path), "--features", ",".join(names)
        )
        assert imported.returncode == 0, imported.stderr
        (report,) = decoded(
            await consume_until(base, "validations", lambda r: len(r) >= 1), "ValidationReport"
        )
        assert report["passed"] and report["method"] == "holdout", report["reasons"]
        public = load_public_key(keys / "modelstream.pub")
        deadline = asyncio.get_running_loop().time() + 60
        while BC not in await load_production(base, public):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.3)

    encoder = RequestEncoder(names)
    async with running(PredictorApp(load(PredictorSettings, **common))):
        await produce(
            base,
            "requests",
            [
                (f"o{i}".encode(), encoder.encode(f"o{i}", BC, X[i], packed=True))
                for i in range(len(y))
            ],
        )
        records = await consume_until(base, "predictions", lambda r: len(r) >= len(y))
    served = {p["request_id"]: p for p in decoded(records, "Prediction")}
    ours = np.array([served[f"o{i}"]["scores"]["1"] for i in range(len(y))])
    assert np.allclose(ours, sklearn_model.predict_proba(X)[:, 1], atol=1e-5)
    assert (
        np.array([int(served[f"o{i}"]["prediction"]) for i in range(len(y))])
        == sklearn_model.predict(X)
    ).all()

    exported_path = tmp_path / "served.onnx"
    exported = await cli(
        base, keys, "models", "export", BC, "--format", "onnx", "-o", str(exported_path)
    )
    assert exported.returncode == 0, exported.stderr
    session = ort.InferenceSession(exported_path.read_bytes(), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"features": X.astype(np.float32)})
    assert np.allclose(probabilities[:, 1], ours, atol=1e-5)


# -- any graph: trees, pipelines, networks ---------------------------------------------------
GRAPHS = ("xgboost", "lightgbm", "pipeline", "mlp")


def _bundles() -> dict[str, onnx_models.Bundle]:
    return {
        "xgboost": onnx_models.xgboost_model(),
        "lightgbm": onnx_models.lightgbm_model(),
        "pipeline": onnx_models.pipeline_model(),
        "mlp": onnx_models.mlp_graph(),
        "lookup": onnx_models.failing_graph(),
    }


def _import_flags(name: str, bundle: onnx_models.Bundle) -> list[str]:
    """What a user passes: XGBoost and LightGBM graphs name their columns f0..fN, the
    network's labels are not in its graph; the pipeline's inputs name themselves."""
    if name in ("xgboost", "lightgbm", "lookup"):
        return ["--features", ",".join(bundle.feature_names)]
    if name == "mlp":
        return ["--features", ",".join(bundle.feature_names), "--classes", ",".join(bundle.classes)]
    return []


def _reference_scores(bundle: onnx_models.Bundle, graph_inputs: list[dict]) -> np.ndarray:
    """onnxruntime on the graph exactly as exported, fed as its inputs declare."""
    session = ort.InferenceSession(bundle.graph, providers=["CPUExecutionProvider"])
    feeds = {}
    for spec in graph_inputs:
        if spec["element_type"] == "string":
            feeds[spec["name"]] = np.array(
                [[row[f] for f in spec["features"]] for row in bundle.categories], dtype=object
            )
        else:
            columns = [bundle.feature_names.index(f) for f in spec["features"]]
            feeds[spec["name"]] = bundle.X[:, columns].astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, feeds), strict=True))
    for value in outputs.values():
        if isinstance(value, list):  # ZipMap: one {class: probability} per row
            return np.array([[row[k] for k in sorted(row)] for row in value])
    floats = [v for v in outputs.values() if np.asarray(v).dtype == np.float32]
    return np.asarray(floats[-1], dtype=np.float64)


async def test_each_libraries_graph_is_imported_gated_signed_and_served_exactly(topics, tmp_path):  # type: ignore[no-untyped-def]
    base = topics
    generate_keys(tmp_path / "keys")
    keys = tmp_path / "keys"
    bundles = _bundles()
    for name, bundle in bundles.items():
        regression = not bundle.classes
        await define(
            base,
            name,
            "REGRESSION" if regression else "MULTICLASS" if len(bundle.classes) > 2 else "BINARY",
            feature_names=tuple(bundle.feature_names),
            classes=tuple(bundle.classes),
            thresholds={} if regression else {"min_accuracy": 0.8},
        )
        await produce_records(  # recent labelled data on `training`: the holdout gate's rows
            base,
            "training",
            "TrainingExample",
            [
                {
                    "model": name,
                    "features": dict(zip(bundle.feature_names, row.tolist(), strict=True)),
                    "label": float(label) if regression else label,
                    "categories": bundle.categories[i] if bundle.categories else {},
                }
                for i, (row, label) in enumerate(zip(bundle.X[:300], bundle.y[:300], strict=True))
            ],
            key=lambda r: r["model"],
        )
    common = {
        "bootstrap_servers": base.bootstrap,
        "topic_prefix": base.topic_prefix,
        "public_key_file": keys / "modelstream.pub",
    }
    public = load_public_key(keys / "modelstream.pub")
    async with (
        running(ValidatorApp(load(ValidatorSettings, **common))),
        running(
            PublisherApp(
                load(PublisherSettings, **common, private_key_file=keys / "modelstream.key")
            )
        ),
    ):
        for name, bundle in bundles.items():
            path = tmp_path / f"{name}.onnx"
            path.write_bytes(bundle.graph)
            imported = await cli(
                base, keys, "models", "import", name, str(path), *_import_flags(name, bundle)
            )
            assert imported.returncode == 0, imported.stderr
            assert "(onnx," in imported.stdout, imported.stdout
        reports = decoded(
            await consume_until(base, "validations", lambda r: len(r) >= len(bundles)),
            "ValidationReport",
        )
        for report in reports:
            assert report["passed"] and report["method"] == "holdout", report
        deadline = asyncio.get_running_loop().time() + 60
        while len(await load_production(base, public)) < len(bundles):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.3)
    production = await load_production(base, public)
    assert all(production[n].signed and production[n].body["onnx"] for n in bundles)

    # requests for every model, packed, and a batch the lookup graph fails on
    requests, expected = [], {}
    for name, bundle in bundles.items():
        encoder = RequestEncoder(bundle.feature_names)
        for i in range(len(bundle.X)):
            rid = f"{name}-{i}"
            categories = bundle.categories[i] if bundle.categories else None
            requests.append(
                (
                    rid.encode(),
                    encoder.encode(rid, name, bundle.X[i], packed=True, categories=categories),
                )
            )
        expected[name] = _reference_scores(bundle, production[name].body["onnx"]["inputs"])
    lookup = RequestEncoder(bundles["lookup"].feature_names)
    poisoned = [
        (f"bad-{i}".encode(), lookup.encode(f"bad-{i}", "lookup", [9.0, 0.0, 0.0], packed=True))
        for i in range(5)
    ]
    answered = len(requests)
    # scored in a worker thread (off by default): the path a predictor with a core to spare takes
    threaded = load(PredictorSettings, **common, predictor_scoring_threads=1)
    async with running(PredictorApp(threaded)):
        await produce(base, "requests", requests)
        records = await consume_until(base, "predictions", lambda r: len(r) >= answered)
        await produce(base, "requests", poisoned)  # Gather out of bounds at run time
        dead = await consume_until(base, "deadletter", lambda r: len(r) >= len(poisoned))
        again = [  # the lookup model still serves after its failure
            (f"again-{i}".encode(), lookup.encode(f"again-{i}", "lookup", row, packed=True))
            for i, row in enumerate(bundles["lookup"].X[:3])
        ]
        await produce(base, "requests", again)
        records = await consume_until(base, "predictions", lambda r: len(r) >= answered + 3)
    served = {p["request_id"]: p for p in decoded(records, "Prediction")}
    assert len(served) == answered + 3 and not any(k.startswith("bad-") for k in served)
    for name, bundle in bundles.items():
        rows = [served[f"{name}-{i}"] for i in range(len(bundle.X))]
        assert {p["version"] for p in rows} == {1}
        if bundle.classes:
            ours = np.array([[p["scores"][c] for c in bundle.classes] for p in rows])
            predicted = [p["prediction"] for p in rows]
            assert predicted == [bundle.classes[k] for k in ours.argmax(axis=1)]
        else:
            ours = np.array([p["prediction"] for p in rows])
        np.testing.assert_allclose(ours, expected[name].reshape(ours.shape), atol=1e-5)
    assert sorted(r.key for r in dead) == sorted(k for k, _ in poisoned)
    assert {dict(r.headers)["reason"] for r in dead} == {b"model-failed"}

    # export gives back the exact bytes that were imported
    exported_path = tmp_path / "exported.onnx"
    exported = await cli(base, keys, "models", "export", "pipeline", "-o", str(exported_path))
    assert exported.returncode == 0, exported.stderr
    assert exported_path.read_bytes() == bundles["pipeline"].graph


async def test_unmappable_graph_is_refused_with_its_reason(topics, tmp_path):  # type: ignore[no-untyped-def]
    mlp = onnx_models.mlp_graph()
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp.graph)
    refused = await run_cli(topics, "models", "import", "digits", str(path))
    assert refused.returncode == 2
    assert refused.stderr == (
        "modelstream: error: output 'output' has 10 columns: pass --classes for a classifier "
        "or --task regression\n"
    )
    too_large = tmp_path / "huge.onnx"
    too_large.write_bytes(onnx_models.lookup_graph(130).graph)  # over the 128 MiB a record takes
    refused = await run_cli(
        topics, "models", "import", "huge", str(too_large), "--features", "x0,x1,x2"
    )
    assert refused.returncode == 2
    assert "output-too-large" in refused.stderr or "the topic takes" in refused.stderr, (
        refused.stderr
    )
    image = tmp_path / "cnn.onnx"
    image.write_bytes(_image_graph())
    refused = await run_cli(topics, "models", "import", "cnn", str(image))
    assert refused.returncode == 2
    # an image graph is a tensor model: without a spec or --classes its answer has no meaning
    assert "output 'mean'" in refused.stderr and "--preprocess spec" in refused.stderr, (
        refused.stderr
    )
    assert not await read_all(topics, "candidates")


def _image_graph() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0)],
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 224, 224])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


# -- large artifacts ---------------------------------------------------------------------------
def _graph_body(name: str, bundle: onnx_models.Bundle):  # type: ignore[no-untyped-def]
    signature = describe(bundle.graph, features=bundle.feature_names)
    return onnx_candidate(name, signature)


async def test_a_100_mib_graph_publishes_verifies_and_hot_swaps_under_load(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    small, large = onnx_models.lookup_graph(0.001), onnx_models.lookup_graph(100, seed=7)
    assert len(large.graph) > 100 * 2**20
    name, chunk = "lookup", 250
    await publish(base, keys, _graph_body(name, small), 1)
    encoder = RequestEncoder(small.feature_names)
    rows = np.column_stack([np.arange(40_000) % 4, np.ones((40_000, 2))])
    sent = 0

    async def load(chunks: int) -> None:
        nonlocal sent
        for _ in range(chunks):
            batch = [
                (f"r-{i}".encode(), encoder.encode(f"r-{i}", name, rows[i], packed=True))
                for i in range(sent, sent + chunk)
            ]
            await produce(base, "requests", batch)
            sent += chunk
            await asyncio.sleep(0.05)

    async with running(app := PredictorApp(predictor_settings(base, keys))):
        await load(8)
        swapped_at = time.time()
        publishing = asyncio.create_task(publish(base, keys, _graph_body(name, large), 2))
        deadline = time.monotonic() + 90
        while app.logic.production.get(name) != 2:  # load goes on while v2 travels
            assert time.monotonic() < deadline, "v2 was never installed"
            await load(1)
        v2 = await publishing
        await load(8)
        records = await consume_until(base, "predictions", lambda r: len(r) >= sent, timeout_s=120)
    counts = Counter(r.key for r in records)
    assert len(counts) == sent and max(counts.values()) == 1  # nothing lost, nothing twice
    predictions = decoded(records, "Prediction")
    assert {p["digest_prefix"] for p in predictions if p["version"] == 2} == {v2["digest"][:12]}
    by_time = sorted((p["predicted_at_ms"], p["request_id"], p["version"]) for p in predictions)
    versions = [v for _, _, v in by_time]
    first = versions.index(2)
    assert set(versions[:first]) == {1} and set(versions[first:]) == {2}  # one switch
    table = {1: small, 2: large}
    values = {v: _lookup_values(table[v], rows[:4]) for v in table}
    for p in predictions:  # each answer is its version's graph's value for that row
        i = int(p["request_id"][2:])
        assert abs(p["prediction"] - values[p["version"]][i % 4]) < 1e-4
    swap_s = by_time[first][0] / 1000 - swapped_at
    print(f"\n100 MiB artifact: first prediction by it {swap_s:.2f} s after publishing")


def _lookup_values(bundle: onnx_models.Bundle, rows: np.ndarray) -> list[float]:
    session = ort.InferenceSession(bundle.graph, providers=["CPUExecutionProvider"])
    (values,) = session.run(None, {"x": rows.astype(np.float32)})
    return [float(v) for v in values]


async def test_a_graph_with_one_flipped_byte_is_never_served(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    bundle = onnx_models.lightgbm_model()
    name = "wine"
    signature = describe(bundle.graph, features=bundle.feature_names)
    v1 = await publish(base, keys, onnx_candidate(name, signature), 1)
    tampered = dict(onnx_candidate(name, signature))
    await publish(base, keys, tampered, 2, tamper_bytes=bundle.graph[1000:1064])
    encoder = RequestEncoder(bundle.feature_names)
    async with running(app := PredictorApp(predictor_settings(base, keys))):
        await produce(
            base,
            "requests",
            [
                (f"w{i}".encode(), encoder.encode(f"w{i}", name, bundle.X[i], packed=True))
                for i in range(50)
            ],
        )
        records = await consume_until(base, "predictions", lambda r: len(r) >= 50)
        assert app.logic.production[name] == 1 and 2 not in app.logic.versions[name]
    served = decoded(records, "Prediction")
    assert {(p["version"], p["digest_prefix"]) for p in served} == {(1, v1["digest"][:12])}
    audit = decoded(await consume_until(base, "audit", lambda r: len(r) >= 1), "AuditEvent")
    assert any(e["event"] == "artifact_refused" and "digest mismatch" in e["reason"] for e in audit)


# -- the monitor's native challenger of an imported champion ---------------------------------
SEA_NAMES = ["x0", "x1", "x2"]


def _sea(variant: int, seed: int, n: int) -> tuple[np.ndarray, list[str]]:
    rows = list(datasets.synth.SEA(variant=variant, seed=seed).take(n))
    return np.array([[x[0], x[1], x[2]] for x, _ in rows]), [str(int(y)) for _, y in rows]


async def test_an_imported_champion_is_challenged_by_the_monitors_native_learner(
    topics, keys, tmp_path
):  # type: ignore[no-untyped-def]
    """XGBoost trained on SEA concept 0 is imported and published; the stream moves to
    concept 3; the monitor learns a native challenger from zero on the labelled stream and
    exports it; the gate compares it with the imported graph on the same held-out rows."""
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    base, name = topics, "sea-xgb"
    X_train, y_train = _sea(0, 1, 2000)
    await define(
        base,
        name,
        "BINARY",
        feature_names=tuple(SEA_NAMES),
        classes=("0", "1"),
        tolerance=0.01,
    )
    await produce_records(
        base,
        "training",
        "TrainingExample",
        [
            {
                "model": name,
                "features": dict(zip(SEA_NAMES, row.tolist(), strict=True)),
                "label": label,
                "example_id": f"e{i}",
            }
            for i, (row, label) in enumerate(zip(X_train, y_train, strict=True))
        ],
        key=lambda r: r["model"],
    )
    booster = xgboost.XGBClassifier(n_estimators=40, max_depth=4, n_jobs=1, random_state=0)
    booster.fit(X_train, np.array(y_train, dtype=int))
    graph = convert_xgboost(
        booster, initial_types=[("features", FloatTensorType([None, 3]))], target_opset=15
    )
    path = tmp_path / "sea.onnx"
    path.write_bytes(graph.SerializeToString())
    validator_settings = service_settings(ValidatorSettings, base, keys, holdout_size=300)
    async with (
        running(ValidatorApp(validator_settings)),
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
    ):
        imported = await cli(
            base, keys, "models", "import", name, str(path), "--features", ",".join(SEA_NAMES)
        )
        assert imported.returncode == 0, imported.stderr
        await consume_until(base, "models", lambda r: len(r) >= 1, timeout_s=60)

    monitor = MonitorApp(
        service_settings(
            MonitorSettings,
            base,
            keys,
            export_every_labels=400,
            export_min_labels=200,
            export_min_gain=0.01,
            online_learning_rate=0.03,
            monitor_batch_max_records=500,
        )
    )
    X, y = _sea(3, 3, 6000)
    encoder = RequestEncoder(SEA_NAMES)

    async with (
        running(ValidatorApp(validator_settings)),
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
        running(PredictorApp(service_settings(PredictorSettings, base, keys))),
        running(monitor),
    ):
        chunk = 500
        for start in range(0, len(y), chunk):
            ids = [f"s-{i}" for i in range(start, start + chunk)]
            await produce(
                base,
                "requests",
                [
                    (rid.encode(), encoder.encode(rid, name, X[i], packed=True))
                    for rid, i in zip(ids, range(start, start + chunk), strict=True)
                ],
            )
            labelled = list(zip(ids, y[start : start + chunk], strict=True))
            await produce(base, "feedback", feedback_records(name, labelled))
            await eventually(
                lambda n=start + chunk: monitor.joined_total(name) >= n, 60, "labels not joined"
            )
        reports = decoded(
            await consume_until(
                base,
                "validations",
                lambda r: any(v["champion_version"] == 1 for v in decoded(r, "ValidationReport")),
                timeout_s=90,
            ),
            "ValidationReport",
        )
    judged = [r for r in reports if r["champion_version"] == 1]
    assert judged and judged[0]["method"] == "holdout"
    challenge = judged[0]
    fresh = challenge["champion_metrics"].get("fresh_examples", 0)
    ours = challenge["metrics"]["accuracy_mean"]
    theirs = challenge["champion_metrics"]["accuracy_mean"]
    print(
        f"\nimported XGBoost v1 vs the monitor's native challenger on the same {fresh:.0f} "
        f"rows: {theirs:.4f} vs {ours:.4f}; passed={challenge['passed']}"
    )
    assert fresh >= 30  # compared on rows neither trained on, not on recorded estimates
    # the gate's verdict follows the comparison, whichever model wins on this stream
    assert challenge["passed"] == (ours >= theirs - 0.01), challenge["reasons"]
    candidates = [
        c["body"]
        for c in decoded(await read_all(base, "candidates"), "ModelArtifact")
        if c["digest"] == challenge["candidate_digest"]
    ]
    assert len(candidates) == 1
    assert candidates[0]["onnx"] is None and candidates[0]["layers"] is None  # native linear
    assert candidates[0]["lineage"]["origin"] == "ONLINE"
    assert candidates[0]["parent_version"] == 1
