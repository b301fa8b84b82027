"""The hand-specialized Avro of the predictor produces and reads exactly fastavro's bytes."""

import numpy as np
import pytest

from modelstream.contracts import tensors
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction, PredictionRequest
from modelstream.contracts.wire import zigzag
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.services.predictor.fastpath import PredictionWriter, RequestReader

CODEC = default_codec()
RNG = np.random.default_rng(7)


@pytest.mark.parametrize("value", [0, 1, -1, 63, 64, -65, 2**31, 1_790_000_000_123, -(2**62)])
def test_zigzag_matches_fastavro(value):
    record = {
        "request_id": "r",
        "model": "m",
        "version": 1,
        "digest_prefix": "d",
        "prediction": "x",
        "scores": {},
        "route": "p",
        "requested_at_ms": value,
        "predicted_at_ms": 0,
    }
    encoded = CODEC.encode(Prediction, record)
    assert zigzag(value) + b"\x00\x00" == encoded[-len(zigzag(value)) - 2 :]


@pytest.mark.parametrize("classes", [["0", "1"], [str(c) for c in range(10)], ["ünï", "b"], []])
def test_prediction_writer_is_byte_identical(classes):
    n = 50
    output = RNG.dirichlet(np.ones(len(classes)), size=n) if classes else RNG.normal(size=n) * 100
    ids = [f"req-{i}-{'é' * (i % 3)}".encode() for i in range(n)]
    requested = [1_790_000_000_000 + int(RNG.integers(0, 10**6)) for _ in range(n)]
    writer = PredictionWriter(
        CODEC.schema(Prediction).fingerprint,
        "model-ä",
        123456,
        "abcdef012345",
        classes,
        "challenger",
    )
    fast = writer.encode(ids, output, requested, 1_790_000_000_999)
    for i in range(n):
        if classes:
            prediction = classes[int(output[i].argmax())]
            scores = dict(zip(classes, output[i].tolist(), strict=True))
        else:
            prediction, scores = float(output[i]), {}
        expected = CODEC.encode(
            Prediction,
            {
                "request_id": ids[i].decode(),
                "model": "model-ä",
                "version": 123456,
                "digest_prefix": "abcdef012345",
                "prediction": prediction,
                "scores": scores,
                "route": "challenger",
                "requested_at_ms": requested[i],
                "predicted_at_ms": 1_790_000_000_999,
            },
        )
        assert fast[i] == expected


@pytest.mark.parametrize("top_k", [0, 1, 3])
def test_tensor_predictions_are_byte_identical(top_k):
    """Rows with a label, (top) scores and output tensors, as a tensor model writes them."""
    from modelstream.services.predictor.fastpath import encode_outputs

    classes = ["cat", "dög", "bird", "fish"]
    n = 20
    output = RNG.dirichlet(np.ones(len(classes)), size=n)
    writer = PredictionWriter(
        CODEC.schema(Prediction).fingerprint, "m", 3, "abcdef012345", classes, "production"
    )
    labels = [classes[i] if i % 5 else "unknown" for i in output.argmax(axis=1).tolist()]
    sections = writer.top_sections(output, top_k) if top_k else writer.score_sections(output)
    embeddings = RNG.normal(size=(n, 6)).astype(np.float32)
    outputs = [
        [tensors.from_array("embedding", embeddings[i]), tensors.from_elements("tags", ["a", "b"])]
        for i in range(n)
    ]
    ids = [f"r-{i}".encode() for i in range(n)]
    fast = writer.encode_rows(
        ids,
        writer.label_sections(labels),
        sections,
        [encode_outputs(o) for o in outputs],
        [7] * n,
        9,
    )
    for i in range(n):
        order = np.argsort(-output[i], kind="stable")[: top_k or len(classes)]
        scores = {classes[j]: float(output[i, j]) for j in (order if top_k else range(4))}
        expected = CODEC.encode(
            Prediction,
            {
                "request_id": f"r-{i}",
                "model": "m",
                "version": 3,
                "digest_prefix": "abcdef012345",
                "prediction": labels[i],
                "scores": scores,
                "route": "production",
                "requested_at_ms": 7,
                "predicted_at_ms": 9,
                "outputs": outputs[i],
            },
        )
        assert fast[i] == expected
        assert list(CODEC.decode(fast[i], Prediction)["scores"]) == list(scores)


@pytest.mark.parametrize("version", [None, 0, 7, 2**30])
@pytest.mark.parametrize("sent_at", [None, 1_790_000_000_000])
@pytest.mark.parametrize("categories", [{}, {"centre": "north", "ü": "é" * 300}])
@pytest.mark.parametrize("with_tensors", [False, True])
def test_request_reader_matches_fastavro(version, sent_at, categories, with_tensors):
    reader = RequestReader(CODEC.schema(PredictionRequest).fingerprint)
    features = RNG.normal(size=30).astype("<f8").tobytes()
    named = (
        [
            tensors.from_elements("image", [b"\x89PNG" + bytes(range(256)) * 4]),
            tensors.from_array("ids", RNG.integers(-(2**40), 2**40, size=(1, 70))),
            tensors.from_array("empty", np.zeros((0, 3), np.float32)),
        ]
        if with_tensors
        else []
    )
    data = CODEC.encode(
        PredictionRequest,
        {
            "request_id": "r-ü",
            "model": "breast-cancer",
            "features": features,
            "version": version,
            "sent_at_ms": sent_at,
            "categories": categories,
            "tensors": named,
        },
    )
    assert reader.read(data) == (
        "r-ü".encode(),
        "breast-cancer",
        features,
        version,
        sent_at,
        categories or None,
        named or None,
    )
    decoded = CODEC.decode(data, PredictionRequest)
    assert decoded["categories"] == categories and decoded["tensors"] == named


def test_request_reader_refuses_broken_tensors():
    reader = RequestReader(CODEC.schema(PredictionRequest).fingerprint)
    data = CODEC.encode(
        PredictionRequest,
        {
            "request_id": "r",
            "model": "m",
            "tensors": [tensors.from_elements("text", ["héllo"])],
        },
    )
    with pytest.raises(DecodeError):
        reader.read(data[:-2])  # truncated inside the tensor's bytes
    with pytest.raises(DecodeError):
        reader.read(data + b"\x00")
    bad_type = data.replace(b"\x08text\x18", b"\x08text\x7e")  # datatype index 63
    with pytest.raises(DecodeError, match="datatype"):
        reader.read(bad_type)


def test_request_reader_refuses_broken_categories():
    reader = RequestReader(CODEC.schema(PredictionRequest).fingerprint)
    data = CODEC.encode(
        PredictionRequest,
        {
            "request_id": "r",
            "model": "m",
            "features": b"\0" * 8,
            "version": None,
            "sent_at_ms": None,
            "categories": {"centre": "north"},
        },
    )
    with pytest.raises(DecodeError):
        reader.read(data[:-3])  # truncated inside the map
    with pytest.raises(DecodeError):
        reader.read(data.replace(b"north", b"n\xffrth"))  # not UTF-8


def test_request_reader_defers_and_refuses():
    reader = RequestReader(CODEC.schema(PredictionRequest).fingerprint)
    mapped = CODEC.encode(
        PredictionRequest, {"request_id": "r", "model": "m", "features": {"a": 1.0}}
    )
    assert reader.read(mapped) is None  # map features: generic decoder
    assert reader.read(b'{"request_id": "r"}') is None
    packed = CODEC.encode(
        PredictionRequest, {"request_id": "r", "model": "m", "features": b"\0" * 16}
    )
    for broken in (packed[:-3], packed + b"\0", packed[:10] + b"\x7f" + packed[11:]):
        with pytest.raises(DecodeError):
            reader.read(broken)
    bad_utf8 = packed[:10] + b"\x02\xff" + packed[12:]
    with pytest.raises(DecodeError, match="UTF-8"):
        reader.read(bad_utf8)


def test_map_template_reads_ordered_maps_and_flags_others():
    from modelstream.services.predictor.fastpath import MapSection, MapTemplate

    names = ["mean radius", "mean texture", "é"]
    reader = RequestReader(CODEC.schema(PredictionRequest).fingerprint)
    reader.expect_maps("m", names)
    template = MapTemplate(names)

    def request(features):  # type: ignore[no-untyped-def]
        return reader.read(
            CODEC.encode(
                PredictionRequest,
                {"request_id": "r", "model": "m", "features": features, "version": 2},
            )
        )

    ordered = request({"mean radius": 1.5, "mean texture": -2.0, "é": 3.25})
    swapped = request({"mean texture": -2.0, "mean radius": 1.5, "é": 3.25})
    assert isinstance(ordered[2], MapSection) and ordered[3] == 2
    values, matches = template.matrix([ordered[2].raw, swapped[2].raw])
    assert values[0].tolist() == [1.5, -2.0, 3.25]
    assert matches.tolist() == [True, False]  # same length, other key order: re-decoded
    assert request({"mean radius": 1.0}) is None  # other length: the generic decoder
    assert request({"mean radius": 1.0, "mean texture": 2.0, "x": 3.0, "y": 4.0}) is None


def test_categories_in_the_models_order_are_read_into_columns():
    """The clients' form (one block, the model's order) goes straight into the batch's
    columns; any other form is read as a map, exactly as fastavro reads it."""
    reader = RequestReader(CODEC.schema(PredictionRequest).fingerprint)
    reader.expect_categories("m", ["colour", "size", "ü"])
    columns = reader.columns()

    def data(categories: dict[str, str], model: str = "m") -> bytes:
        return CODEC.encode(
            PredictionRequest,
            {"request_id": "r", "model": model, "features": b"", "categories": categories},
        )

    ordered = {"colour": "red", "size": "", "ü": "é" * 200}
    first = reader.read(data(ordered), columns)
    second = reader.read(data({"colour": "blue", "size": "xl", "ü": "-"}), columns)
    assert first is not None and second is not None
    assert (first[5], second[5]) == (0, 3)
    assert columns.matrix([second[5], first[5]], 3).tolist() == [
        ["blue", "xl", "-"],
        ["red", "", "é" * 200],
    ]
    assert columns.row("m", 0) == ordered
    for other, model in (
        ({"size": "xl", "colour": "blue", "ü": "-"}, "m"),  # another order
        ({"colour": "red", "size": "s"}, "m"),  # one missing
        ({**ordered, "extra": "x"}, "m"),  # one more
        ({"colour": "red", "size": "s", "u": "x"}, "m"),  # a name of the same length
        (ordered, "another-model"),
    ):
        request = reader.read(data(other, model), columns)
        assert request is not None and request[5] == other
    assert len(columns.values) == 6  # a map that stopped matching left nothing behind
    # without columns (or an expectation) the reader keeps maps
    assert RequestReader(reader.header[2:]).read(data(ordered), reader.columns()) is not None
    assert reader.read(data(ordered))[5] == ordered  # type: ignore[index]


def test_mutated_ordered_categories_read_as_fastavro_reads_them():
    """Every single-byte change of a request in the clients' form: the reader's values
    (columns or map) equal fastavro's, or both refuse it."""
    reader = RequestReader(CODEC.schema(PredictionRequest).fingerprint)
    reader.expect_categories("m", ["a", "bb"])
    good = CODEC.encode(
        PredictionRequest,
        {"request_id": "r", "model": "m", "features": b"", "categories": {"a": "x", "bb": "yz"}},
    )
    start = good.index(b"\x04\x02a")  # two entries, then the key "a"
    for at in range(start, len(good)):
        for byte in (0x00, 0x01, 0x02, 0x04, 0x7F, 0x80, 0xFF, good[at] ^ 0x01):
            mutated = good[:at] + bytes([byte]) + good[at + 1 :]
            columns = reader.columns()
            try:
                ours = reader.read(mutated, columns)
            except (DecodeError, InvalidEventError):
                ours = "refused"
            try:
                theirs = CODEC.decode(mutated, PredictionRequest)["categories"]
            except Exception:
                theirs = "refused"
            if ours is None:  # left to the generic decoder: nothing to compare
                continue
            if ours == "refused":
                assert theirs == "refused", (at, byte)
                continue
            assert not isinstance(ours, str)
            values = columns.row("m", ours[5]) if isinstance(ours[5], int) else ours[5] or {}
            assert values == theirs, (at, byte)


def test_the_client_writes_categories_in_the_models_order():
    from modelstream.contracts.client import RequestEncoder

    reader = RequestReader(CODEC.schema(PredictionRequest).fingerprint)
    reader.expect_categories("m", ["colour", "size"])
    given = {"size": "xl", "colour": "blue"}
    columns = reader.columns()
    plain = reader.read(
        RequestEncoder().encode("r", "m", [], packed=True, categories=given), columns
    )
    assert plain is not None and plain[5] == given  # the caller's order: read as a map
    encoder = RequestEncoder(categorical=["colour", "size"])
    ordered = reader.read(encoder.encode("r", "m", [], packed=True, categories=given), columns)
    assert ordered is not None and columns.row("m", ordered[5]) == given  # type: ignore[arg-type]
    extra = {**given, "shape": "round"}  # unknown ones follow, for the predictor to refuse
    assert CODEC.decode(
        encoder.encode("r", "m", [], packed=True, categories=extra), PredictionRequest
    )["categories"] == {"colour": "blue", "size": "xl", "shape": "round"}
