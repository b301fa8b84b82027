"""Tensor models: a spec checked against its graph at import (one line naming what does
not fit), and served: preprocessing, batching, pooling, scores and labels."""

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelstream.contracts import tensors
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import ModelArtifact, Task
from modelstream.errors import InvalidEventError
from modelstream.registry.artifact import decrypt_tensors, encrypt_tensors, seal, verify_bytes
from modelstream.registry.onnx_model import UnmappableGraphError
from modelstream.registry.tensor_model import (
    TensorScorer,
    decode_spec,
    describe,
    parse_spec,
    spec_json,
    takes_tensors,
    tensor_candidate,
    with_spec_metadata,
)
from tests.support.tensor_models import (
    bytes_graph,
    image_graph,
    png,
    softmax,
    spec,
    text_pipeline,
    token_graph,
    tokenizer_json,
    wordpiece_input,
)

IMAGE, W, B = image_graph()
RNG = np.random.default_rng(5)
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": 4 + i for i in range(30)}}
TOKENIZER = tokenizer_json(VOCAB)


def scorer(graph: bytes, spec_text: str, **options: Any) -> TensorScorer:
    signature = describe(graph, parse_spec(spec_text), **options)
    return TensorScorer(tensor_candidate("m", signature, created_by="test"))


def image_rows(n: int) -> tuple[list[bytes], np.ndarray]:
    pixels = RNG.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return [png(p) for p in pixels], pixels


def test_an_image_model_scores_what_numpy_computes():
    model = scorer(IMAGE, spec())
    assert model.task == Task.MULTICLASS and model.classes == ["a", "b", "c"]
    encoded, pixels = image_rows(5)
    out = model.infer([model.prepare([tensors.from_elements("image", [e])]) for e in encoded])
    x = (pixels.astype(np.float32) / 255).transpose(0, 3, 1, 2).reshape(5, -1)
    np.testing.assert_allclose(out.scores, softmax(x @ W + B), atol=1e-5)
    assert model.labels(out.scores) == [["a", "b", "c"][i] for i in out.scores.argmax(1)]
    # raw pixels take the same path as an encoded image
    raw = model.prepare([tensors.from_array("image", pixels[0])])
    np.testing.assert_allclose(model.infer([raw]).scores[0], out.scores[0], atol=1e-6)


def test_batches_of_max_batch_size_give_the_same_answers_as_one_by_one():
    model = scorer(IMAGE, spec(max_batch_size=2))
    encoded, _ = image_rows(7)
    rows = [model.prepare([tensors.from_elements("image", [e])]) for e in encoded]
    together = model.infer(rows).scores
    alone = np.vstack([model.infer([row]).scores for row in rows])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_threshold_and_top_k():
    model = scorer(
        IMAGE,
        spec(
            scores={
                "graph_output": "probs",
                "labels": ["a", "b", "c"],
                "threshold": 0.9,
                "below_threshold_label": "unsure",
                "top_k": 2,
            }
        ),
    )
    scores = np.asarray([[0.95, 0.03, 0.02], [0.5, 0.3, 0.2]])
    assert model.labels(scores) == ["a", "unsure"] and model.top_k == 2


def text_spec(**text: Any) -> str:
    return json.dumps(
        {
            "inputs": [wordpiece_input("text", TOKENIZER, **text)],
            "outputs": [
                {"name": "mean", "graph_output": "hidden", "pool": "mean", "normalize": "l2"},
                {"name": "cls", "graph_output": "hidden", "pool": "cls"},
                {"name": "max", "graph_output": "hidden", "pool": "max"},
            ],
            "max_batch_size": 3,
        }
    )


def test_text_is_tokenized_sorted_padded_and_pooled_over_its_mask():
    graph, E = token_graph()
    model = scorer(graph, text_spec(max_length=6))
    assert model.task == Task.EMBEDDING
    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11", "w1 w1", "w2 w3 w4 w5", "", "w9"]
    out = model.infer([model.prepare([tensors.from_elements("text", [t])]) for t in texts])
    for i, text in enumerate(texts):
        ids = [2, *[4 + int(w[1:]) for w in text.split()][:4], 3]  # max_length 6
        vectors = E[ids]
        mean = vectors.mean(axis=0)
        np.testing.assert_allclose(out.outputs["mean"][i], mean / np.linalg.norm(mean), atol=1e-5)
        np.testing.assert_allclose(out.outputs["cls"][i], E[2], atol=1e-6)
        np.testing.assert_allclose(out.outputs["max"][i], vectors.max(axis=0), atol=1e-6)


def test_a_graph_that_tokenizes_takes_strings():
    graph, pipeline, texts, _ = text_pipeline()
    plain = {
        "inputs": [{"name": "review", "kind": "text", "graph_input": "text", "text": {}}],
        "scores": {"graph_output": "probabilities", "labels": ["bad", "good"]},
    }
    model = scorer(graph, json.dumps(plain))
    out = model.infer([model.prepare([tensors.from_elements("review", [t])]) for t in texts])
    np.testing.assert_allclose(out.scores, pipeline.predict_proba(texts), atol=1e-6)


def test_bytes_are_windowed_into_the_graph():
    graph, W16 = bytes_graph()
    plain = {
        "inputs": [
            {
                "name": "file",
                "kind": "bytes",
                "graph_input": "bytes",
                "bytes": {"beg_size": 8, "end_size": 8, "block_size": 64},
            }
        ],
        "scores": {"graph_output": "scores", "labels": ["p", "q", "r", "s"], "top_k": 2},
    }
    model = scorer(graph, json.dumps(plain))
    data = b"  hello, content-type model\n" * 5
    out = model.infer([model.prepare([tensors.from_elements("file", [data])])])
    first, last = data.lstrip()[:8], data.rstrip()[-8:]
    x = np.frombuffer(first + last, np.uint8).astype(np.float32)
    np.testing.assert_allclose(out.scores[0], softmax((x @ W16)[None])[0], atol=1e-6)


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ([], "missing-tensors"),
        (
            [tensors.from_elements("image", [b"x"]), tensors.from_elements("other", [b"y"])],
            "unknown-tensors",
        ),
        ([tensors.from_elements("image", [b"not a png"])], "invalid-image"),
        ([tensors.from_elements("image", [b"a", b"b"])], "wrong-tensor"),
        ([tensors.from_array("image", np.zeros((2, 2, 4), np.uint8))], "wrong-tensor"),
        ([tensors.from_array("image", np.zeros((8, 8, 3), np.float32))], "wrong-tensor"),
        (
            [{"name": "image", "datatype": "BYTES", "shape": [1], "data": b"\x09\x00\x00\x00ab"}],
            "invalid-tensor",
        ),
        (
            [{"name": "image", "datatype": "UINT8", "shape": [8, -8, 3], "data": b""}],
            "invalid-tensor",
        ),
    ],
)
def test_rows_that_cannot_be_prepared_say_why(given, reason):
    model = scorer(IMAGE, spec())
    with pytest.raises(InvalidEventError) as caught:
        model.prepare(given)
    assert caught.value.reason == reason


def test_text_over_the_limit_and_non_utf8():
    graph, _ = token_graph()
    model = scorer(graph, text_spec(max_chars=20))
    with pytest.raises(InvalidEventError) as caught:
        model.prepare([tensors.from_elements("text", ["w1 " * 10])])
    assert caught.value.reason == "too-long"
    with pytest.raises(InvalidEventError) as caught:
        model.prepare([tensors.from_elements("text", [b"w1 \xff"])])
    assert caught.value.reason == "invalid-text"


def test_tensor_inputs_are_checked_against_the_graph():
    """Without a spec, every graph input is a request tensor of its own datatype and shape."""
    signature = describe(IMAGE, None, classes=["a", "b", "c"])
    (item,) = signature.spec["inputs"]
    assert (item["name"], item["kind"], item["datatype"], item["shape"]) == (
        "x",
        "TENSOR",
        "FP32",
        [3, 8, 8],
    )
    model = TensorScorer(tensor_candidate("m", signature, created_by="test"))
    x = RNG.random((3, 8, 8)).astype(np.float32)
    out = model.infer([model.prepare([tensors.from_array("x", x)])])
    np.testing.assert_allclose(out.scores[0], softmax(x.reshape(1, -1) @ W + B)[0], atol=1e-5)
    batched = model.prepare([tensors.from_array("x", x[None])])  # a leading axis of 1 is fine
    np.testing.assert_allclose(model.infer([batched]).scores[0], out.scores[0])
    with pytest.raises(InvalidEventError, match="one row of the model's input is"):
        model.prepare([tensors.from_array("x", x[:, :4])])
    with pytest.raises(InvalidEventError, match="the model takes FP32"):
        model.prepare([tensors.from_array("x", x.astype(np.float64))])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"image": {"height": 8, "width": 9, "layout": "nchw"}},
            "has shape ['?', 3, 8, 8]; a NCHW colour image of 8x9 is [N, 3, 8, 9]",
        ),
        ({"image": {"height": 8, "width": 8, "layout": "nhwc"}}, "a NHWC colour image"),
        ({"image": {"height": 8, "width": 8, "color": "l"}}, "a NCHW grey image"),
        ({"graph_input": "y"}, "the graph has no input 'y'"),
    ],
)
def test_an_image_spec_that_does_not_fit_the_graph_says_where(changes, message):
    plain = json.loads(spec())
    plain["inputs"][0].update(changes)
    with pytest.raises(UnmappableGraphError, match=re.escape(message)):
        describe(IMAGE, parse_spec(json.dumps(plain)))


@pytest.mark.parametrize(
    ("spec_text", "message"),
    [
        (spec(scores={"graph_output": "nope", "labels": ["a", "b", "c"]}), "no output 'nope'"),
        (spec(scores={"graph_output": "probs", "labels": ["a", "b"]}), "3 columns for 2 labels"),
        (spec(scores={"graph_output": "probs", "labels": []}), "has no labels"),
        (spec(inputs=[]), "no inputs"),
        (spec(scores=None), "answer nothing"),
        (spec(max_batch_size=0), "max_batch_size"),
        ("[1, 2]", "JSON object"),
        ("{", "not JSON"),
        (spec(extra=1), "unknown field"),
    ],
)
def test_bad_specs_are_one_line(spec_text, message):
    with pytest.raises(UnmappableGraphError, match=message):
        describe(IMAGE, parse_spec(spec_text))


def test_a_wordpiece_spec_names_what_it_cannot_read():
    graph, _ = token_graph()
    plain = json.loads(text_spec())
    plain["inputs"][0]["text"]["tokenizer_json"] = json.dumps({"model": {"type": "Unigram"}})
    with pytest.raises(UnmappableGraphError, match="'Unigram' is not WordPiece"):
        parse_spec(json.dumps(plain))
    plain = json.loads(text_spec())
    plain["inputs"][0]["text"]["attention_mask_input"] = ""
    with pytest.raises(UnmappableGraphError, match="need the graph's attention mask"):
        describe(graph, parse_spec(json.dumps(plain)))  # padded rows would change answers
    plain["max_batch_size"] = 1
    with pytest.raises(
        UnmappableGraphError, match=r"graph inputs \['attention_mask'\] are not filled"
    ):
        describe(graph, parse_spec(json.dumps(plain)))


def test_spec_files_are_read_beside_the_spec(tmp_path: Path):
    (tmp_path / "tokenizer.json").write_text(TOKENIZER)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    plain = json.loads(text_spec())
    del plain["inputs"][0]["text"]["tokenizer_json"]
    plain["inputs"][0]["text"]["tokenizer_file"] = "tokenizer.json"
    read = parse_spec(json.dumps(plain), base=tmp_path)
    assert read["inputs"][0]["text"]["tokenizer_json"] == TOKENIZER
    image = json.loads(spec())
    image["scores"] = {"graph_output": "probs", "labels_file": "labels.txt"}
    assert parse_spec(json.dumps(image), base=tmp_path)["scores"]["labels"] == ["a", "b", "c"]


def test_the_spec_travels_signed_in_the_artifact_and_round_trips_through_export():
    body = tensor_candidate("m", describe(IMAGE, parse_spec(spec())), created_by="test")
    record = seal(body)
    data = default_codec().encode(ModelArtifact, record)
    verified = verify_bytes(data, None, allow_unsigned=True)
    assert decode_spec(verified.body["onnx"]["spec"]) == decode_spec(body["onnx"]["spec"])
    # the spec is covered by the digest
    tampered = data.replace(b"probs", b"prubs")
    with pytest.raises(Exception, match="digest"):
        verify_bytes(tampered, None, allow_unsigned=True)
    # encryption covers the graph; the spec stays readable (the gateway describes the model)
    key = bytes(range(32))
    sealed = encrypt_tensors(body, key, "k1")
    assert sealed["onnx"]["graph"] != body["onnx"]["graph"]
    assert sealed["onnx"]["spec"] == body["onnx"]["spec"]
    assert decrypt_tensors(sealed, key)["onnx"]["graph"] == IMAGE
    # export writes the spec into the graph's metadata; import reads it back without a flag
    exported = with_spec_metadata(IMAGE, decode_spec(body["onnx"]["spec"]))
    assert takes_tensors(exported)
    again = describe(exported, None)
    assert again.spec == decode_spec(body["onnx"]["spec"]) and again.classes == ["a", "b", "c"]
    assert json.loads(spec_json(again.spec))["inputs"][0]["image"]["height"] == 8


def test_feature_graphs_are_not_tensor_models():
    from tests.support.onnx_models import mlp_graph

    assert not takes_tensors(mlp_graph().graph)
    assert takes_tensors(IMAGE)


def test_a_per_token_output_keeps_each_texts_own_tokens():
    graph, E = token_graph()
    plain = json.loads(text_spec(max_length=8))
    plain["outputs"] = [{"name": "tokens", "graph_output": "hidden"}]
    plain["max_batch_size"] = 2
    model = scorer(graph, json.dumps(plain))
    texts = ["w1 w2 w3", "w4", "w5 w6", "w7 w8 w9 w10 w11 w12 w13 w14"]
    out = model.infer([model.prepare([tensors.from_elements("text", [t])]) for t in texts])
    for row, text in zip(out.outputs["tokens"], texts, strict=True):
        ids = [2, *[4 + int(w[1:]) for w in text.split()][:6], 3]
        np.testing.assert_allclose(row, E[ids], atol=1e-6)  # no padding positions


def extensions_graph() -> bytes:
    """Text lowered by onnxruntime-extensions' StringLower, looked up in a vocabulary
    (ai.onnx.ml LabelEncoder), one-hot scores: a graph with its own string operators."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("StringLower", ["text"], ["lower"], domain="ai.onnx.contrib"),
        helper.make_node(
            "LabelEncoder",
            ["lower"],
            ["index"],
            domain="ai.onnx.ml",
            keys_strings=["cat", "dog"],
            values_int64s=[0, 1],
            default_int64=2,
        ),
        helper.make_node("OneHot", ["index", "depth", "values"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "ext",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor("depth", TensorProto.INT64, [], [3]),
            helper.make_tensor("values", TensorProto.FLOAT, [2], [0.0, 1.0]),
        ],
    )
    opsets = [
        helper.make_opsetid(d, v) for d, v in (("", 17), ("ai.onnx.ml", 3), ("ai.onnx.contrib", 1))
    ]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    serialized: bytes = model.SerializeToString()
    return serialized


EXTENSIONS_SPEC = json.dumps(
    {
        "inputs": [{"name": "text", "kind": "text", "graph_input": "text", "text": {}}],
        "scores": {"graph_output": "probs", "labels": ["cat", "dog", "other"]},
    }
)


def test_a_graph_with_onnxruntime_extensions_operators_is_served():
    model = scorer(extensions_graph(), EXTENSIONS_SPEC)
    out = model.infer(
        [model.prepare([tensors.from_elements("text", [t])]) for t in ("CAT", "Dog", "eel")]
    )
    assert model.labels(out.scores) == ["cat", "dog", "other"]


def test_without_onnxruntime_extensions_the_import_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)
    with pytest.raises(UnmappableGraphError, match=r"pip install 'modelstream\[extensions\]'"):
        scorer(extensions_graph(), EXTENSIONS_SPEC)


def test_graphs_with_a_zipmap_output_are_over_features():
    """A classifier whose probabilities come out as a ZipMap (a sequence of maps) is read by
    the mapping over features, not refused for its output."""
    from tests.support.onnx_models import lightgbm_model, pipeline_model

    for bundle in (lightgbm_model(trees=5), pipeline_model()):
        assert not takes_tensors(bundle.graph)


def _summing_graph() -> bytes:
    """Three scores from the sum of an input ``x`` of [N, L]: a dynamic row length."""
    from onnx import helper

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=1),
        helper.make_node("Concat", ["total", "total", "total"], ["z"], axis=1),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "summing",
        [helper.make_tensor_value_info("x", 1, ["N", "L"])],
        [helper.make_tensor_value_info("probs", 1, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return bytes(model.SerializeToString())


def _linear_graph(row: list[int], elem: int = 1) -> bytes:
    """Flatten, a linear map to three classes and a softmax over an input ``x`` of
    [N, *row] (``elem``: the ONNX element type)."""
    from onnx import helper, numpy_helper

    d = int(np.prod(row))
    weights = (np.random.default_rng(d).normal(size=(d, 3)) / np.sqrt(d)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=1),
        helper.make_node("Flatten", ["xf"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", elem, ["N", *row])],
        [helper.make_tensor_value_info("probs", 1, ["N", 3])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("layout", "color", "row", "normalise"),
    [
        ("nchw", "rgb", [3, 8, 8], {}),
        ("nhwc", "bgr", [8, 8, 3], {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}),
        ("flat", "l", [64], {"mean": [0.5], "std": [0.25]}),
        ("nchw", "l", [1, 8, 8], {}),
    ],
)
def test_raw_pixels_of_the_models_size_are_read_into_one_column(layout, color, row, normalise):
    """Raw pixels already of the model's size and colour skip the per-row path: the column
    holds, to the bit, what preparing each row gives, and scores the same; any other form
    is left to the per-row path, which says why it cannot be served."""
    image = {"height": 8, "width": 8, "scale": 1 / 255, "layout": layout, "color": color}
    spec_text = spec(inputs=[{**json.loads(spec())["inputs"][0], "image": {**image, **normalise}}])
    model = scorer(_linear_graph(row), spec_text)
    channels = 1 if color == "l" else 3
    pixels = RNG.integers(0, 256, (6, 8, 8, channels), dtype=np.uint8)
    rows = [[tensors.from_array("image", p)] for p in pixels]
    rows[1] = [tensors.from_array("image", pixels[1][None])]  # a leading batch axis of 1
    if channels == 1:
        rows[2] = [tensors.from_array("image", pixels[2][:, :, 0])]  # grey as [H, W]
    others = [
        [tensors.from_elements("image", [png(pixels[3].squeeze())])],  # encoded: decoded per row
        [tensors.from_array("image", pixels[4, :4])],  # another size: resized per row
        [tensors.from_array("image", pixels[5].astype(np.float32))],  # not UINT8: refused
        [tensors.from_array("picture", pixels[0])],  # another name: refused
        [tensors.from_array("image", pixels[0]), tensors.from_array("image2", pixels[0])],
        [],
    ]
    stacked, rest = model.stack(rows + others)
    assert stacked is not None and len(stacked) == 6
    assert rest == list(range(6, 6 + len(others)))
    one_by_one = np.stack([model.prepare(r).values["image"] for r in rows])
    assert stacked.values["image"].dtype == one_by_one.dtype == np.float32
    assert np.array_equal(stacked.values["image"], one_by_one)
    np.testing.assert_allclose(
        model.infer(stacked).scores,
        model.infer([model.prepare(r) for r in rows]).scores,
        rtol=1e-6,
    )
    assert model.infer(stacked.rows([4])).scores.shape == (1, 3)


def test_numeric_tensors_of_the_graphs_row_shape_are_read_into_one_column():
    def plain(graph: bytes, name: str = "m") -> TensorScorer:  # every input a request tensor
        signature = describe(graph, None, classes=["a", "b", "c"])
        return TensorScorer(tensor_candidate(name, signature, created_by="t"))

    model = plain(_linear_graph([2, 5], elem=7))  # INT64
    values = RNG.integers(-100, 100, (5, 2, 5))
    rows = [[tensors.from_array("x", v)] for v in values]
    rows[0] = [tensors.from_array("x", values[0][None])]
    wrong = [
        [tensors.from_array("x", values[1][:, :4])],
        [tensors.from_array("x", values[1].astype(np.int32))],
        [tensors.from_array("x", np.stack([values[1], values[2]]))],
    ]
    stacked, rest = model.stack(rows + wrong)
    assert stacked is not None and np.array_equal(stacked.values["x"], values)
    assert rest == [5, 6, 7]
    for row in wrong:  # the per-row path names the problem
        with pytest.raises(InvalidEventError, match=r"has shape|takes INT64"):
            model.prepare(row)
    np.testing.assert_allclose(
        model.infer(stacked).scores, model.infer([model.prepare(r) for r in rows]).scores
    )
    # inputs a column cannot hold: text, encoded bytes, dynamic dimensions
    assert plain(_linear_graph([2, 5])).stack_plans is not None
    dynamic = plain(_summing_graph())
    assert dynamic.stack_plans is None
    assert dynamic.stack([[tensors.from_array("x", np.zeros((1, 3), np.float32))]]) == (None, [0])


def test_a_column_takes_no_shape_the_per_row_path_refuses():
    """A row of rank 8 with a leading 1 is rank 9, over the tensors' bound: left to the
    per-row path, which refuses it with its reason."""
    signature = describe(_linear_graph([1, 1, 1, 1, 1, 1, 1, 2]), None, classes=["a", "b", "c"])
    model = TensorScorer(tensor_candidate("deep", signature, created_by="t"))
    row = np.ones((1, 1, 1, 1, 1, 1, 1, 2), np.float32)
    stacked, rest = model.stack(
        [[tensors.from_array("x", row)], [tensors.from_array("x", row[None])]]
    )
    assert stacked is not None and len(stacked) == 1 and rest == [1]
    with pytest.raises(InvalidEventError, match="rank 9 is over 8"):
        model.prepare([tensors.from_array("x", row[None])])
