"""Models that take tensors: images, text, token ids, a file's bytes, any ONNX signature.

A *tensor model* is an imported ONNX graph with a :class:`ServingSpec` (``schemas/
ServingSpec.avsc``): which request tensors fill which graph inputs and how they are
preprocessed (an image decoded, resized and normalized; a text tokenized; a file windowed;
a tensor passed as sent), which graph output holds the class scores and which others are
returned as named output tensors (an embedding, pooled over the attention mask and
normalized). The spec is data: it travels inside the signed artifact
(``OnnxGraph.spec``), is shown by ``models show`` and written into an exported graph's
metadata (``modelstream.serving_spec``), so export and import round-trip.

:func:`describe` checks a spec against a graph at import and names the input or output that
does not fit. :class:`TensorScorer` serves a verified artifact: :meth:`~TensorScorer.prepare`
turns one request's tensors into graph-ready values (or raises with the reason its dead
letter carries), :meth:`~TensorScorer.infer` runs prepared rows in batches of at most
``max_batch_size`` (text sorted by length and padded per batch to its longest), and the
post-processing gives class probabilities and output tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from modelstream.contracts import tensors
from modelstream.contracts.codec import default_codec
from modelstream.contracts.limits import Limits, check_record
from modelstream.contracts.records import (
    ImageSpec,
    InputSpec,
    ModelBody,
    NamedTensor,
    OnnxGraph,
    OutputSpec,
    ScoresSpec,
    ServingSpec,
    Task,
)
from modelstream.errors import ArtifactVerificationError, DecodeError, InvalidEventError
from modelstream.learn.objectives import sigmoid, softmax
from modelstream.preprocess import image as images
from modelstream.preprocess import text as texts
from modelstream.preprocess import window
from modelstream.registry.onnx_model import UnmappableGraphError

SPEC_METADATA_KEY = "modelstream.serving_spec"
# A spec carries a whole tokenizer.json (a BERT vocabulary is ~0.5 MB of text) and may list
# thousands of labels; it comes from the user's own files or a verified artifact.
SPEC_LIMITS = Limits(max_bytes=1 << 28, max_string_chars=1 << 26, max_items=1 << 20)
DEFAULT_MAX_CHARS = 65_536
# ONNX TensorProto element types by the Open Inference Protocol's names
ELEMENT_DATATYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
INTEGER_DATATYPES = frozenset({"INT32", "INT64"})


# -- the spec ---------------------------------------------------------------------------
def parse_spec(text: str | bytes, *, base: Path | None = None) -> ServingSpec:
    """A ServingSpec from its JSON form. Fields with defaults may be left out; enums take
    any case. Two conveniences read files relative to ``base`` (the spec's folder):
    ``text.tokenizer_file`` (a tokenizer.json) and ``scores.labels_file`` (one label per
    line, or a JSON list). Raises UnmappableGraphError naming what is wrong."""
    try:
        plain = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UnmappableGraphError(f"the spec is not JSON: {exc}") from None
    if not isinstance(plain, dict):
        raise UnmappableGraphError("the spec must be a JSON object")
    for i, item in enumerate(plain.get("inputs") or []):
        if isinstance(item, dict) and isinstance(item.get("text"), dict):
            path = item["text"].pop("tokenizer_file", None)
            if path is not None:
                item["text"]["tokenizer_json"] = _read(base, path, f"inputs[{i}].text")
    scores = plain.get("scores")
    if isinstance(scores, dict) and "labels_file" in scores:
        raw = _read(base, scores.pop("labels_file"), "scores")
        scores["labels"] = (
            json.loads(raw) if raw.lstrip().startswith("[") else [s for s in raw.splitlines() if s]
        )
    codec = default_codec()
    try:
        spec = cast(ServingSpec, codec.json_form(ServingSpec).from_plain(plain))
        check_record(spec, codec.schema(ServingSpec).parsed, SPEC_LIMITS)
    except InvalidEventError as exc:
        raise UnmappableGraphError(f"spec: {exc}") from None
    check_spec(spec)
    return spec


def _read(base: Path | None, path: Any, where: str) -> str:
    if not isinstance(path, str):
        raise UnmappableGraphError(f"spec {where}: a file name must be a string")
    full = (base or Path.cwd()) / path
    try:
        return full.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnmappableGraphError(f"spec {where}: cannot read {full}: {exc}") from None


def check_spec(spec: ServingSpec) -> None:
    """What a spec must say on its own, before it meets a graph."""
    if not spec["inputs"]:
        raise UnmappableGraphError("spec: no inputs")
    names = [i["name"] for i in spec["inputs"]]
    if len(set(names)) != len(names):
        raise UnmappableGraphError(f"spec: input names repeat: {names}")
    for item in spec["inputs"]:
        where = f"spec input {item['name']!r}"
        kind = item["kind"]
        part = {"IMAGE": item["image"], "TEXT": item["text"], "BYTES": item["bytes"]}.get(kind)
        if kind != "TENSOR" and part is None:
            raise UnmappableGraphError(f"{where}: kind {kind} needs its '{kind.lower()}' part")
        if item["image"] is not None:
            image = item["image"]
            if not (0 < image["height"] <= 16384 and 0 < image["width"] <= 16384):
                raise UnmappableGraphError(f"{where}: height and width must be 1..16384")
            if image["resize"] == "SHORTER_SIDE" and image["resize_shorter_to"] < min(
                image["height"], image["width"]
            ):
                raise UnmappableGraphError(
                    f"{where}: resize_shorter_to must be at least the crop's height and width"
                )
            for what in ("mean", "std"):
                if len(image[what]) not in (0, 1, 1 if image["color"] == "L" else 3):
                    raise UnmappableGraphError(f"{where}: {what} has {len(image[what])} values")
            if any(v == 0 for v in image["std"]):
                raise UnmappableGraphError(f"{where}: std has a zero")
            if not all(math.isfinite(v) for v in (image["scale"], image["pad_value"])):
                raise UnmappableGraphError(f"{where}: scale and pad_value must be finite")
            unknown = [f for f in image["formats"] if f not in images.KNOWN_FORMATS]
            if unknown:
                raise UnmappableGraphError(
                    f"{where}: formats {unknown} are not among {sorted(images.KNOWN_FORMATS)}"
                )
            if image["max_pixels"] < image["height"] * image["width"]:
                raise UnmappableGraphError(f"{where}: max_pixels is below height x width")
        if item["text"] is not None:
            text = item["text"]
            if text["tokenizer"] == "WORDPIECE":
                try:
                    texts.WordPiece.from_json(text["tokenizer_json"])
                except texts.UnsupportedTokenizerError as exc:
                    raise UnmappableGraphError(f"{where}: {exc}") from None
                if not 3 <= text["max_length"] <= 1_000_000:
                    raise UnmappableGraphError(f"{where}: max_length must be 3..1000000")
            if text["max_chars"] < 0:
                raise UnmappableGraphError(f"{where}: max_chars must be >= 0")
        if item["bytes"] is not None:
            part_bytes = item["bytes"]
            sizes = (part_bytes["beg_size"], part_bytes["mid_size"], part_bytes["end_size"])
            if min(sizes) < 0 or sum(sizes) == 0 or sum(sizes) > 1 << 20:
                raise UnmappableGraphError(f"{where}: beg, mid and end sizes must add to 1..1 MiB")
            if part_bytes["block_size"] < max(part_bytes["beg_size"], part_bytes["end_size"]):
                raise UnmappableGraphError(f"{where}: block_size is below beg_size or end_size")
    scores = spec["scores"]
    if scores is not None:
        if len(set(scores["labels"])) != len(scores["labels"]):
            raise UnmappableGraphError("spec scores: labels repeat")
        if scores["top_k"] < 0:
            raise UnmappableGraphError("spec scores: top_k must be >= 0")
    outputs = [o["name"] for o in spec["outputs"]]
    if len(set(outputs)) != len(outputs):
        raise UnmappableGraphError(f"spec: output names repeat: {outputs}")
    if scores is None and not outputs:
        raise UnmappableGraphError("spec: no scores and no outputs: the model would answer nothing")
    if not 1 <= spec["max_batch_size"] <= 65536:
        raise UnmappableGraphError("spec: max_batch_size must be 1..65536")
    if not 0 <= spec["max_queue_delay_ms"] <= 60_000:
        raise UnmappableGraphError("spec: max_queue_delay_ms must be 0..60000")


def encode_spec(spec: ServingSpec) -> bytes:
    return default_codec().encode(ServingSpec, spec)


def decode_spec(data: bytes) -> ServingSpec:
    try:
        return default_codec().decode(data, ServingSpec, SPEC_LIMITS)
    except (DecodeError, InvalidEventError) as exc:
        raise ArtifactVerificationError(f"the serving spec does not decode: {exc}") from None


def spec_json(spec: ServingSpec) -> str:
    """The spec's JSON form (what ``parse_spec`` reads back)."""
    return json.dumps(default_codec().json_form(ServingSpec).to_plain(spec), indent=2)


# -- the graph --------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphTensor:
    name: str
    datatype: str  # the Open Inference Protocol's name
    shape: tuple[int | None, ...]  # None: a dynamic dimension


@dataclass(frozen=True)
class TensorSignature:
    """What an imported tensor graph means in modelstream's terms."""

    task: Task
    classes: list[str]
    spec: ServingSpec
    onnx: OnnxGraph


def graph_tensors(values: Any, *, tensors_only: bool = True) -> list[GraphTensor]:
    """The tensors among a graph's inputs or outputs; another kind (a ZipMap's sequence of
    maps) is refused, or skipped with ``tensors_only=False``."""
    out = []
    for value in values:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            if not tensors_only:
                continue
            raise UnmappableGraphError(f"{value.name!r} is a {kind}, not a tensor")
        tensor = value.type.tensor_type
        datatype = ELEMENT_DATATYPES.get(tensor.elem_type)
        if datatype is None:
            raise UnmappableGraphError(
                f"{value.name!r} has ONNX element type {tensor.elem_type}, which no request "
                "tensor can fill"
            )
        dims = tensor.shape.dim if tensor.HasField("shape") else []
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        out.append(GraphTensor(value.name, datatype, shape))
    return out


def graph_signature(data: bytes) -> tuple[Any, list[GraphTensor], list[GraphTensor]]:
    """The parsed model, its inputs (initializers excluded) and outputs."""
    from modelstream.registry.onnx_model import _external_data, _load

    model = _load(data)
    if _external_data(model):
        raise UnmappableGraphError(
            "the graph keeps its weights in external files; save it with "
            "onnx.save_model(model, path, save_as_external_data=False)"
        )
    initialized = {t.name for t in model.graph.initializer}
    inputs = graph_tensors([i for i in model.graph.input if i.name not in initialized])
    return model, inputs, graph_tensors(model.graph.output, tensors_only=False)


def passthrough_spec(
    inputs: Sequence[GraphTensor],
    outputs: Sequence[GraphTensor],
    classes: Sequence[str] | None,
    task: Task | None,
) -> ServingSpec:
    """The spec of a graph imported without one: every graph input is a request tensor of
    the same name, datatype and shape; the first float output gives the class scores
    (``classes``), or, for an embedding model, every float output is returned."""
    floats = [o for o in outputs if o.datatype in FLOAT_DATATYPES]
    if not floats:
        raise UnmappableGraphError(
            f"no float output to read scores or values from (outputs: {[o.name for o in outputs]})"
        )
    spec_inputs: list[InputSpec] = [
        {
            "name": i.name,
            "kind": cast(Any, "TENSOR"),
            "graph_input": i.name,
            "datatype": None,
            "shape": [],
            "image": None,
            "text": None,
            "bytes": None,
        }
        for i in inputs
    ]
    scores: ScoresSpec | None = None
    outs: list[OutputSpec] = []
    if task == Task.EMBEDDING:
        outs = [_output_spec(o.name, o.name) for o in floats]
    elif task == Task.REGRESSION or classes:
        scores = _scores_spec(floats[0].name, list(classes or []))
    else:
        width = floats[0].shape[-1] if floats[0].shape else None
        raise UnmappableGraphError(
            f"output {floats[0].name!r} has {width or '?'} columns: pass --classes for a "
            "classifier, --task regression or --task embedding, or a --preprocess spec"
        )
    return {
        "inputs": spec_inputs,
        "scores": scores,
        "outputs": outs,
        "max_batch_size": 32,
        "max_queue_delay_ms": 0,
    }


def _scores_spec(output: str, labels: list[str]) -> ScoresSpec:
    return {
        "graph_output": output,
        "labels": labels,
        "activation": cast(Any, "NONE"),
        "threshold": 0.0,
        "below_threshold_label": "",
        "top_k": 0,
    }


def _output_spec(name: str, output: str) -> OutputSpec:
    return {
        "name": name,
        "graph_output": output,
        "pool": cast(Any, "NONE"),
        "normalize": cast(Any, "NONE"),
        "datatype": cast(Any, "FP32"),
    }


def describe(
    data: bytes,
    spec: ServingSpec | None,
    *,
    classes: Sequence[str] | None = None,
    task: Task | None = None,
) -> TensorSignature:
    """Check ``spec`` (or the graph's own ``modelstream.serving_spec`` metadata, or a
    pass-through spec) against the graph; UnmappableGraphError names the input or output
    that does not fit and why."""
    model, inputs, outputs = graph_signature(data)
    if spec is None:
        props = {p.key: p.value for p in model.metadata_props}
        if SPEC_METADATA_KEY in props:
            spec = parse_spec(props[SPEC_METADATA_KEY])
        else:
            spec = passthrough_spec(inputs, outputs, classes, task)
    spec = cast(ServingSpec, json.loads(json.dumps(spec)))  # a copy we may complete
    scores = spec["scores"]
    if scores is not None and classes:
        scores["labels"] = list(classes)
    if task is None:
        if scores is None:
            task = Task.EMBEDDING
        elif len(scores["labels"]) == 2:
            task = Task.BINARY
        elif len(scores["labels"]) > 2:
            task = Task.MULTICLASS
        else:
            raise UnmappableGraphError(
                f"scores output {scores['graph_output']!r} has no labels: give them in the "
                "spec (scores.labels) or with --classes"
            )
    if task == Task.EMBEDDING and scores is not None:
        raise UnmappableGraphError("an embedding model has no scores: drop spec.scores")
    if task == Task.REGRESSION and scores is not None:
        scores["labels"] = []
    if task in (Task.BINARY, Task.MULTICLASS):
        if scores is None:
            raise UnmappableGraphError(f"a {task.lower()} model needs spec.scores")
        if (task == Task.BINARY) != (len(scores["labels"]) == 2) or len(scores["labels"]) < 2:
            raise UnmappableGraphError(f"{len(scores['labels'])} labels for a {task.lower()} model")
    check_spec(spec)
    _check_against_graph(spec, inputs, outputs, task)
    record: OnnxGraph = {
        "graph": data,
        "graph_sha256": hashlib.sha256(data).hexdigest(),
        "inputs": [],
        "scores_output": scores["graph_output"] if scores else "",
        "zipmap_input": None,
        "spec": encode_spec(spec),
    }
    labels = list(scores["labels"]) if scores else []
    return TensorSignature(task, labels, spec, record)


def _check_against_graph(
    spec: ServingSpec, inputs: list[GraphTensor], outputs: list[GraphTensor], task: Task
) -> None:
    by_name = {i.name: i for i in inputs}
    filled: dict[str, str] = {}

    def fill(graph_input: str, by: str) -> GraphTensor:
        target = by_name.get(graph_input)
        if target is None:
            raise UnmappableGraphError(
                f"{by}: the graph has no input {graph_input!r} (inputs: {sorted(by_name)})"
            )
        if graph_input in filled:
            raise UnmappableGraphError(
                f"graph input {graph_input!r} is filled twice ({filled[graph_input]}, {by})"
            )
        filled[graph_input] = by
        return target

    for item in spec["inputs"]:
        where = f"spec input {item['name']!r}"
        target = fill(item["graph_input"], where)
        rank = len(target.shape)
        kind = item["kind"]
        if kind == "IMAGE":
            assert item["image"] is not None
            _check_image(item["image"], target, where)
        elif kind == "TEXT":
            text = item["text"]
            assert text is not None
            if text["tokenizer"] == "GRAPH":
                if target.datatype != "BYTES" or rank not in (1, 2):
                    raise UnmappableGraphError(
                        f"{where}: graph input {target.name!r} is {target.datatype} of rank "
                        f"{rank}; a text the graph tokenizes fills a string tensor [N] or [N, 1]"
                    )
            else:
                if not text["attention_mask_input"] and spec["max_batch_size"] > 1:
                    raise UnmappableGraphError(
                        f"{where}: texts padded into one batch need the graph's attention mask "
                        "(attention_mask_input), else set max_batch_size to 1"
                    )
                tokens = [target]
                for extra in (text["attention_mask_input"], text["token_type_ids_input"]):
                    if extra:
                        tokens.append(fill(extra, where))
                for t in tokens:
                    if t.datatype not in INTEGER_DATATYPES or len(t.shape) != 2:
                        raise UnmappableGraphError(
                            f"{where}: graph input {t.name!r} is {t.datatype} {list(t.shape)}; "
                            "token ids, masks and type ids are INT64 or INT32 [N, S]"
                        )
        elif kind == "BYTES":
            part = item["bytes"]
            assert part is not None
            width = part["beg_size"] + part["mid_size"] + part["end_size"]
            if target.datatype not in INTEGER_DATATYPES or len(target.shape) != 2:
                raise UnmappableGraphError(
                    f"{where}: graph input {target.name!r} is {target.datatype} "
                    f"{list(target.shape)}; byte features fill INT32 or INT64 [N, {width}]"
                )
            if target.shape[1] not in (None, width):
                raise UnmappableGraphError(
                    f"{where}: graph input {target.name!r} takes {target.shape[1]} values, the "
                    f"spec makes {width} (beg {part['beg_size']} + mid {part['mid_size']} + "
                    f"end {part['end_size']})"
                )
        else:
            if rank == 0:
                raise UnmappableGraphError(
                    f"{where}: graph input {target.name!r} has no batch axis"
                )
            item["datatype"] = cast(Any, target.datatype)
            item["shape"] = [-1 if d is None else d for d in target.shape[1:]]
    missing = [i.name for i in inputs if i.name not in filled]
    if missing:
        raise UnmappableGraphError(f"graph inputs {missing} are not filled by the spec")
    produced = {o.name: o for o in outputs}
    scores = spec["scores"]
    if scores is not None:
        out = produced.get(scores["graph_output"])
        if out is None:
            raise UnmappableGraphError(
                f"spec scores: the graph has no output {scores['graph_output']!r} "
                f"(outputs: {sorted(produced)})"
            )
        if out.datatype not in FLOAT_DATATYPES:
            raise UnmappableGraphError(f"scores output {out.name!r} is {out.datatype}, not float")
        columns = out.shape[-1] if len(out.shape) >= 2 else 1
        labels = len(scores["labels"])
        fits = columns is None or columns == labels or (columns == 1 and labels == 2)
        if task != Task.REGRESSION and not fits:
            raise UnmappableGraphError(
                f"scores output {out.name!r} has {columns} columns for {labels} labels"
            )
    text_inputs = [i for i in spec["inputs"] if i["kind"] == "TEXT"]
    for output in spec["outputs"]:
        out = produced.get(output["graph_output"])
        if out is None:
            raise UnmappableGraphError(
                f"spec output {output['name']!r}: the graph has no output "
                f"{output['graph_output']!r} (outputs: {sorted(produced)})"
            )
        if out.datatype not in FLOAT_DATATYPES and output["pool"] != "NONE":
            raise UnmappableGraphError(f"spec output {output['name']!r}: only floats are pooled")
        if out.datatype == "BYTES" or output["datatype"] == "BYTES":
            raise UnmappableGraphError(f"spec output {output['name']!r}: outputs are numeric")
        if out.datatype in FLOAT_DATATYPES and output["datatype"] not in FLOAT_DATATYPES:
            raise UnmappableGraphError(
                f"spec output {output['name']!r}: {out.name!r} is {out.datatype}; a float output "
                f"is returned as a float datatype, not {output['datatype']}"
            )
        if output["pool"] != "NONE":
            if len(out.shape) != 3:
                raise UnmappableGraphError(
                    f"spec output {output['name']!r}: pooling needs [N, S, D], "
                    f"{out.name!r} is {list(out.shape)}"
                )
            if output["pool"] != "CLS" and not any(
                i["text"] is not None and i["text"]["tokenizer"] == "WORDPIECE" for i in text_inputs
            ):
                raise UnmappableGraphError(
                    f"spec output {output['name']!r}: {output['pool']} pooling needs a text input "
                    "tokenized here (its attention mask)"
                )


def _check_image(image: Any, target: GraphTensor, where: str) -> None:
    channels = 1 if image["color"] == "L" else 3
    h, w = image["height"], image["width"]
    layout = image["layout"]
    if target.datatype not in FLOAT_DATATYPES | {"UINT8"}:
        raise UnmappableGraphError(
            f"{where}: graph input {target.name!r} is {target.datatype}; an image fills a float "
            "or UINT8 tensor"
        )
    if target.datatype == "UINT8" and (
        image["scale"] != 1.0 or image["mean"] or image["std"] or image["pad_value"] % 1
    ):
        raise UnmappableGraphError(
            f"{where}: graph input {target.name!r} takes UINT8 pixels 0..255: no scale, mean, "
            "std or fractional pad_value"
        )
    expected: tuple[int, ...] = {
        "NCHW": (channels, h, w),
        "NHWC": (h, w, channels),
        "FLAT": (h * w * channels,),
    }[layout]
    actual = target.shape[1:]
    if len(actual) != len(expected) or any(
        a is not None and a != e for a, e in zip(actual, expected, strict=True)
    ):
        shape = ["?" if d is None else d for d in target.shape]
        raise UnmappableGraphError(
            f"{where}: graph input {target.name!r} has shape {shape}; a {layout} "
            f"{'grey' if channels == 1 else 'colour'} image of {h}x{w} is "
            f"[N, {', '.join(str(e) for e in expected)}]"
        )


def input_signature(spec: ServingSpec) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape of one row; -1 any size) of each request tensor a spec takes:
    a TENSOR input as the graph takes it, an image, text or file as one BYTES element."""
    return [
        (i["name"], str(i["datatype"]), list(i["shape"]))
        if i["kind"] == "TENSOR" and i["datatype"] is not None
        else (i["name"], "BYTES", [1])
        for i in spec["inputs"]
    ]


def top_k_of(spec: ServingSpec, classes: int) -> int:
    """How many class scores a prediction keeps (0: every class)."""
    scores = spec["scores"]
    return scores["top_k"] if scores is not None and 0 < scores["top_k"] < classes else 0


def takes_tensors(data: bytes) -> bool:
    """Whether a graph is imported as a tensor model: it carries a serving spec in its
    metadata, or an input is not a [batch, columns] matrix of numbers or strings (what
    features fill)."""
    try:
        model, inputs, _ = graph_signature(data)
    except UnmappableGraphError:
        return False  # the mapping over features says what it cannot read
    if any(p.key == SPEC_METADATA_KEY for p in model.metadata_props):
        return True
    tabular = {"FP32", "FP64", "INT64", "BYTES"}
    return any(len(i.shape) != 2 or i.datatype not in tabular for i in inputs)


def tensor_candidate(name: str, signature: TensorSignature, *, created_by: str) -> ModelBody:
    """An imported tensor graph as an unpublished candidate body, after one run on a
    synthetic row (a graph that onnxruntime cannot run is refused here)."""
    from modelstream.registry.onnx_model import imported_body

    body = imported_body(
        name, signature.task, [], signature.classes, signature.onnx, created_by=created_by
    )
    try:
        TensorScorer(body).warm_up()
    except (UnmappableGraphError, InvalidEventError):
        raise
    except Exception as exc:  # onnxruntime's run-time failures
        raise UnmappableGraphError(f"the graph does not run on a synthetic row: {exc}") from None
    return body


def with_spec_metadata(data: bytes, spec: ServingSpec) -> bytes:
    """The graph with its serving spec in its metadata (``modelstream.serving_spec``)."""
    import onnx

    model = onnx.load_model_from_string(data)
    kept = [p for p in model.metadata_props if p.key != SPEC_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_METADATA_KEY, spec_json(spec)
    serialized: bytes = model.SerializeToString()
    return serialized


# -- serving -----------------------------------------------------------------------------
@dataclass
class Prepared:
    """One request's inputs, ready for the graph: per spec input an array (image, bytes,
    tensor), a string (text the graph tokenizes) or token ids."""

    values: dict[str, Any]
    length: int = 0  # longest token sequence of the row (sorting key of text batches)


@dataclass
class Stacked:
    """Rows of a batch read straight into one array per input ([rows, ...] per spec input
    name): numeric tensors of the graph's exact row shape, raw pixels already of the
    model's size and colour, with no per-row array in between."""

    values: dict[str, np.ndarray]
    count: int

    def __len__(self) -> int:
        return self.count

    def rows(self, index: Sequence[int] | slice) -> Stacked:
        taken = {name: value[index] for name, value in self.values.items()}
        return Stacked(taken, len(next(iter(taken.values()))))


@dataclass(frozen=True)
class _StackPlan:
    """How one spec input is read into a column: the tensor form a row must have."""

    name: str
    datatype: str
    shapes: tuple[tuple[int, ...], ...]  # accepted shapes (with and without a batch axis of 1)
    nbytes: int
    row_shape: tuple[int, ...]  # of the column's rows
    image: ImageSpec | None  # raw pixels, normalised as images.prepare does


@dataclass
class TensorOutputs:
    """A batch's answers: class probabilities [N, classes] (regression: [N]; embedding:
    None) and each declared output [N, ...]."""

    scores: np.ndarray | None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


class TensorScorer:
    """Serves one imported tensor model with onnxruntime (CPU)."""

    feature_names: list[str] = []  # noqa: RUF012  (read-only: a tensor model takes no features)
    categorical: list[str] = []  # noqa: RUF012
    n_features = 0

    def __init__(
        self, body: ModelBody, *, threads: int = 1, max_chars: int = DEFAULT_MAX_CHARS
    ) -> None:
        from modelstream.registry.onnx_model import inference_session, serving_graph

        graph = body["onnx"]
        if graph is None or not graph.get("spec"):
            raise ValueError("not a tensor model")
        data = graph["graph"]
        if hashlib.sha256(data).hexdigest() != graph["graph_sha256"]:
            raise ArtifactVerificationError("ONNX graph bytes do not match graph_sha256")
        self.spec = decode_spec(cast(bytes, graph["spec"]))
        self.task = Task(body["task"])
        self.classes = list(body["classes"])
        self.max_chars = max_chars
        self.max_batch = self.spec["max_batch_size"]
        _, inputs, _ = graph_signature(data)
        self.graph_inputs = {i.name: i for i in inputs}
        self.scores_spec = self.spec["scores"]
        wanted = ([self.scores_spec["graph_output"]] if self.scores_spec else []) + [
            o["graph_output"] for o in self.spec["outputs"]
        ]
        self.output_names = list(dict.fromkeys(wanted))
        self.session = inference_session(serving_graph(graph, data, self.output_names), threads)
        self.tokenizers: dict[str, texts.WordPiece] = {}
        for item in self.spec["inputs"]:
            text = item["text"]
            if item["kind"] == "TEXT" and text is not None and text["tokenizer"] == "WORDPIECE":
                self.tokenizers[item["name"]] = texts.WordPiece.from_json(text["tokenizer_json"])
        self._sorted_by_length = bool(self.tokenizers)
        self.output_datatypes = {o["name"]: str(o["datatype"]) for o in self.spec["outputs"]}
        # Rows prepared at a time: images take their whole prepared size each, so one graph
        # batch; token ids and byte windows are small, so more, to sort text by length.
        small = all(i["kind"] in ("TEXT", "BYTES") for i in self.spec["inputs"])
        self.prepare_chunk = self.max_batch * (16 if small else 1)
        self.stack_plans = self._stack_plans()

    def _stack_plans(self) -> list[_StackPlan] | None:
        """Per input, the one form read straight into a column; None when an input has no
        such form (encoded images, text, bytes, dynamic dimensions)."""
        plans: list[_StackPlan] = []
        for item in self.spec["inputs"]:
            name = item["name"]
            if item["kind"] == "TENSOR":
                target = self.graph_inputs[item["graph_input"]]
                row = target.shape[1:]
                if target.datatype == "BYTES" or any(d is None for d in row):
                    return None
                static = tuple(cast(tuple[int, ...], row))
                size = math.prod(static) * np.dtype(tensors.NUMPY_TYPES[target.datatype]).itemsize
                # only shapes the per-row path accepts (its rank and size bounds)
                shapes: tuple[tuple[int, ...], ...] = tuple(
                    shape
                    for shape in (static, (1, *static))
                    if len(shape) <= tensors.MAX_RANK
                    and all(0 <= n <= tensors.MAX_DIMENSION for n in shape)
                )
                if not shapes:
                    return None
                plans.append(_StackPlan(name, target.datatype, shapes, size, static, None))
            elif item["kind"] == "IMAGE":
                spec = item["image"]
                assert spec is not None
                h, w = spec["height"], spec["width"]
                if images.target_size(h, w, spec) != (h, w) or h * w > spec["max_pixels"]:
                    return None  # pixels of the model's size would still be resized
                channels = 1 if spec["color"] == "L" else 3
                pixel = (h, w, channels)
                grey: tuple[tuple[int, ...], ...] = ((h, w),) if channels == 1 else ()
                shapes = (pixel, (1, *pixel), *grey)
                plans.append(_StackPlan(name, "UINT8", shapes, h * w * channels, pixel, spec))
            else:
                return None
        return plans

    def stack(self, rows: Sequence[Sequence[NamedTensor]]) -> tuple[Stacked | None, list[int]]:
        """The rows whose tensors are exactly the inputs' column form, in the spec's order,
        read into one array per input; and the positions of the other rows (prepared one
        by one, which also says why a row cannot be served)."""
        plans = self.stack_plans
        if plans is None or not rows:
            return None, list(range(len(rows)))
        width = len(plans)
        columns: list[list[bytes]] = [[] for _ in plans]
        taken: list[int] = []
        rest: list[int] = []
        for position, row in enumerate(rows):
            if len(row) == width and all(
                tensor["name"] == plan.name
                and tensor["datatype"] == plan.datatype
                and len(tensor["data"]) == plan.nbytes
                and tuple(tensor["shape"]) in plan.shapes
                for tensor, plan in zip(row, plans, strict=True)
            ):
                taken.append(position)
                for column, tensor in zip(columns, row, strict=True):
                    column.append(tensor["data"])
            else:
                rest.append(position)
        if not taken:
            return None, rest
        values: dict[str, np.ndarray] = {}
        for plan, column in zip(plans, columns, strict=True):
            dtype = np.dtype(tensors.NUMPY_TYPES[plan.datatype])
            value = np.frombuffer(b"".join(column), dtype=dtype).reshape(
                len(taken), *plan.row_shape
            )
            values[plan.name] = value if plan.image is None else _pixels(value, plan.image)
        return Stacked(values, len(taken)), rest

    # -- one request -----------------------------------------------------------------------
    def prepare(self, given: Sequence[NamedTensor]) -> Prepared:
        """A request's tensors as graph-ready values; InvalidEventError with the reason
        (``missing-tensors``, ``unknown-tensors``, ``invalid-tensor``, ``wrong-tensor``,
        ``invalid-image``, ``image-too-large``, ``invalid-text``, ``too-long``)."""
        named = tensors.by_name(given)
        wanted = {i["name"] for i in self.spec["inputs"]}
        missing = sorted(wanted - set(named))
        if missing:
            raise InvalidEventError("missing-tensors", f"missing tensors {missing[:5]}")
        extra = sorted(set(named) - wanted)
        if extra:
            raise InvalidEventError(
                "unknown-tensors", f"tensors {[e[:64] for e in extra[:5]]} are not inputs"
            )
        prepared = Prepared({})
        for item in self.spec["inputs"]:
            value = self._prepare_one(item, named[item["name"]], prepared)
            prepared.values[item["name"]] = value
        return prepared

    def _prepare_one(self, item: InputSpec, tensor: NamedTensor, prepared: Prepared) -> Any:
        kind = item["kind"]
        name = item["name"]
        if kind == "TENSOR":
            return self._tensor(item, tensor)
        if kind == "IMAGE":
            spec = item["image"]
            assert spec is not None
            if tensor["datatype"] == "BYTES":
                pixels = images.decode(self._one_element(tensor), spec)
            else:
                raw = tensors.numeric(tensor)
                if raw.ndim == 4 and raw.shape[0] == 1:
                    raw = raw[0]
                pixels = images.from_pixels(raw, spec)
            return images.prepare(pixels, spec)
        if kind == "TEXT":
            text_spec = item["text"]
            assert text_spec is not None
            limit = text_spec["max_chars"] or self.max_chars
            text = texts.decode_text(self._one_element(tensor), limit)
            tokenizer = self.tokenizers.get(name)
            if tokenizer is None:
                return text
            ids = tokenizer.encode(text, text_spec["max_length"])
            prepared.length = max(prepared.length, len(ids))
            return ids
        spec_bytes = item["bytes"]
        assert spec_bytes is not None
        return window.features(self._one_element(tensor), spec_bytes)

    @staticmethod
    def _one_element(tensor: NamedTensor) -> bytes:
        if tensor["datatype"] != "BYTES":
            raise InvalidEventError(
                "wrong-tensor", f"tensor {tensor['name']!r} is {tensor['datatype']}, not BYTES"
            )
        values = tensors.elements(tensor)
        if len(values) != 1:
            raise InvalidEventError(
                "wrong-tensor",
                f"tensor {tensor['name']!r} has {len(values)} elements; one request is one row",
            )
        return values[0]

    def _tensor(self, item: InputSpec, tensor: NamedTensor) -> np.ndarray:
        target = self.graph_inputs[item["graph_input"]]
        if tensor["datatype"] != target.datatype:
            raise InvalidEventError(
                "wrong-tensor",
                f"tensor {item['name']!r} is {tensor['datatype']}, the model takes "
                f"{target.datatype}",
            )
        if target.datatype == "BYTES":
            value: np.ndarray = np.asarray(
                [v.decode("utf-8", "replace") for v in tensors.elements(tensor)], dtype=object
            ).reshape(tensor["shape"])
        else:
            value = tensors.numeric(tensor)
        row = target.shape[1:]
        if value.ndim == len(row) + 1 and value.shape[0] == 1:
            value = value[0]
        if value.ndim != len(row) or any(
            d is not None and d != v for d, v in zip(row, value.shape, strict=True)
        ):
            shape = ["?" if d is None else d for d in row]
            raise InvalidEventError(
                "wrong-tensor",
                f"tensor {item['name']!r} has shape {list(tensor['shape'])}; one row of the "
                f"model's input is {shape}",
            )
        return value

    # -- a batch ---------------------------------------------------------------------------
    def infer(self, rows: Sequence[Prepared] | Stacked) -> TensorOutputs:
        """Run prepared rows, at most ``max_batch_size`` per graph run; rows come back in
        their order. Text rows are sorted by length first, so each run pads little."""
        n = len(rows)
        if isinstance(rows, Stacked):
            return concatenate(
                [
                    self._run(rows.rows(slice(start, start + self.max_batch)))
                    for start in range(0, n, self.max_batch)
                ]
            )
        order = list(range(n))
        if self._sorted_by_length:
            order.sort(key=lambda i: rows[i].length)
        groups = self._groups([rows[i] for i in order], order)
        parts: list[tuple[list[int], TensorOutputs]] = []
        for positions in groups:
            for start in range(0, len(positions), self.max_batch):
                chunk = positions[start : start + self.max_batch]
                parts.append((chunk, self._run([rows[i] for i in chunk])))
        return _reassemble(parts, n)

    def _groups(self, rows: Sequence[Prepared], positions: list[int]) -> list[list[int]]:
        """Rows whose TENSOR inputs have the same shapes (only they stack into one batch)."""
        keys: dict[tuple[Any, ...], list[int]] = {}
        tensor_inputs = [i["name"] for i in self.spec["inputs"] if i["kind"] == "TENSOR"]
        for row, position in zip(rows, positions, strict=True):
            key = tuple(np.shape(row.values[name]) for name in tensor_inputs)
            keys.setdefault(key, []).append(position)
        return list(keys.values())

    def _run(self, rows: Sequence[Prepared] | Stacked) -> TensorOutputs:
        feeds: dict[str, np.ndarray] = {}
        mask: np.ndarray | None = None
        for item in self.spec["inputs"]:
            name = item["name"]
            target = self.graph_inputs[item["graph_input"]]
            if isinstance(rows, Stacked):  # columns already: numeric tensors and images
                column = rows.values[name]
                feeds[target.name] = column.astype(_numpy_type(target.datatype), copy=False)
                continue
            values = [row.values[name] for row in rows]
            if name in self.tokenizers:
                text = item["text"]
                assert text is not None
                ids, attention = texts.batch(values, self.tokenizers[name].pad)
                dtype = np.int32 if target.datatype == "INT32" else np.int64
                feeds[target.name] = ids.astype(dtype, copy=False)
                if text["attention_mask_input"]:
                    feeds[text["attention_mask_input"]] = attention.astype(dtype, copy=False)
                if text["token_type_ids_input"]:
                    feeds[text["token_type_ids_input"]] = np.zeros_like(ids, dtype=dtype)
                mask = attention
            elif item["kind"] == "TEXT":
                feeds[target.name] = np.asarray(values, dtype=object).reshape(
                    (len(values), 1) if len(target.shape) == 2 else (len(values),)
                )
            else:
                feeds[target.name] = np.stack(values).astype(
                    _numpy_type(target.datatype), copy=False
                )
        raw = dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
        return TensorOutputs(self._scores(raw, len(rows)), self._outputs(raw, mask))

    def _scores(self, raw: Mapping[str, np.ndarray], n: int) -> np.ndarray | None:
        spec = self.scores_spec
        if spec is None:
            return None
        out = np.asarray(raw[spec["graph_output"]], dtype=np.float64)
        if self.task == Task.REGRESSION:
            return out.reshape(n)
        out = out.reshape(n, -1)
        if spec["activation"] == "SOFTMAX":
            out = softmax(out)
        elif spec["activation"] == "SIGMOID":
            out = sigmoid(out)
        if out.shape[1] == 1 and self.task == Task.BINARY:
            out = np.column_stack((1.0 - out[:, 0], out[:, 0]))
        if out.shape[1] != len(self.classes):
            raise ValueError(f"the graph gave {out.shape[1]} scores for {len(self.classes)} labels")
        return out

    def _outputs(
        self, raw: Mapping[str, np.ndarray], mask: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for spec in self.spec["outputs"]:
            value = np.asarray(raw[spec["graph_output"]])
            pool = spec["pool"]
            if pool == "CLS":
                value = value[:, 0]
            elif pool in ("MEAN", "MAX") and mask is not None:
                weights = mask[:, :, None].astype(value.dtype)
                if pool == "MEAN":
                    value = (value * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
                else:
                    value = np.where(weights > 0, value, -np.inf).max(axis=1)
            elif pool == "NONE" and mask is not None and value.ndim >= 3:
                value = _own_lengths(value, mask)
            if spec["normalize"] == "L2" and value.dtype == object:
                value = _object_rows(
                    [row / max(float(np.linalg.norm(row)), 1e-12) for row in value]
                )
            elif spec["normalize"] == "L2":
                # in float64: a float16 norm overflows past 256 and its floor rounds to 0
                value = value.astype(np.float64, copy=False)
                norms = np.linalg.norm(value.reshape(len(value), -1), axis=1)
                value = value / np.clip(norms, 1e-12, None).reshape((-1,) + (1,) * (value.ndim - 1))
            dtype = _numpy_type(spec["datatype"])
            if value.dtype == object:
                value = _object_rows([np.asarray(row, dtype=dtype) for row in value])
            else:
                value = value.astype(dtype, copy=False)
            out[spec["name"]] = value
        return out

    # -- after the graph ---------------------------------------------------------------------
    def labels(self, scores: np.ndarray) -> list[str]:
        """Each row's predicted class: the top score's label, or the spec's label for a top
        score under its threshold."""
        spec = self.scores_spec
        top = scores.argmax(axis=1)
        labels = [self.classes[i] for i in top.tolist()]
        if spec is not None and spec["threshold"] > 0 and spec["below_threshold_label"]:
            best = scores[np.arange(len(scores)), top]
            for i in np.flatnonzero(best < spec["threshold"]).tolist():
                labels[i] = spec["below_threshold_label"]
        return labels

    @property
    def top_k(self) -> int:
        return top_k_of(self.spec, len(self.classes))

    # -- the Scorer interface (validator, monitor) ---------------------------------------------
    def score(
        self,
        X: np.ndarray,
        categories: object = None,
        tensor_rows: Sequence[Sequence[NamedTensor]] | None = None,
    ) -> np.ndarray:
        """Class probabilities of each row's tensors (regression values; for an embedding
        model its first output, a per-token one as each row's norm); prepared and run a
        chunk at a time. Raises InvalidEventError for a row that cannot be prepared."""
        if tensor_rows is None:
            raise InvalidEventError("missing-tensors", "a tensor model scores tensors")
        parts = [
            self.infer([self.prepare(r) for r in tensor_rows[at : at + self.prepare_chunk]])
            for at in range(0, len(tensor_rows), self.prepare_chunk)
        ]
        if not parts:
            return np.empty((0, len(self.classes)))
        result = concatenate(parts)
        if result.scores is not None:
            return result.scores
        first = next(iter(result.outputs.values()))
        if first.dtype == object:
            return np.asarray([[np.linalg.norm(np.asarray(row, np.float64))] for row in first])
        return first.reshape(len(first), -1).astype(np.float64)

    def runnable(
        self, rows: list[Any], tensors_of: Callable[[Any], Sequence[NamedTensor]]
    ) -> list[Any]:
        """The rows the graph runs on: batches that run are kept whole; in one that fails,
        each row is tried alone and the ones that fail are left out."""
        kept: list[Any] = []
        for at in range(0, len(rows), self.prepare_chunk):
            chunk = rows[at : at + self.prepare_chunk]
            try:
                self.infer([self.prepare(tensors_of(r)) for r in chunk])
                kept.extend(chunk)
                continue
            except InvalidEventError:
                raise
            except Exception:  # onnxruntime failed on the batch: find the rows at fault
                pass
            for row in chunk:
                try:
                    self.infer([self.prepare(tensors_of(row))])
                    kept.append(row)
                except Exception:  # this row's own failure
                    continue
        return kept

    def output(self, X: np.ndarray) -> np.ndarray:
        raise InvalidEventError("missing-tensors", "a tensor model scores tensors")

    def warm_up(self) -> None:
        """One run on a synthetic row, so the first real batch does not pay for
        onnxruntime's first-run allocations."""
        row = Prepared({})
        for item in self.spec["inputs"]:
            name, kind = item["name"], item["kind"]
            if kind == "IMAGE":
                spec = item["image"]
                assert spec is not None
                channels = 1 if spec["color"] == "L" else 3
                blank = np.zeros((spec["height"], spec["width"], channels), np.uint8)
                row.values[name] = images.prepare(blank, spec)
            elif kind == "TEXT":
                tokenizer = self.tokenizers.get(name)
                row.values[name] = tokenizer.encode("warm up", 8) if tokenizer else "warm up"
            elif kind == "BYTES":
                assert item["bytes"] is not None
                row.values[name] = window.features(b"warm up", item["bytes"])
            else:
                target = self.graph_inputs[item["graph_input"]]
                shape = [1 if d is None else d for d in target.shape[1:]]
                if target.datatype == "BYTES":
                    row.values[name] = np.full(shape, "", dtype=object)
                else:
                    row.values[name] = np.zeros(shape, _numpy_type(target.datatype))
        self.infer([row])


def _object_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of different shapes as one object array (one row per element)."""
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = row
    return out


def _own_lengths(value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A per-token output [N, S, ...] of a padded text batch, each row cut to its own tokens
    (an object array of rows [S_i, ...]): what the row's text made, not the batch's padding."""
    if value.shape[1] != mask.shape[1]:
        return value
    lengths = mask.sum(axis=1).tolist()
    if all(n == value.shape[1] for n in lengths):
        return value
    return _object_rows([value[i, :n] for i, n in enumerate(lengths)])


def _pixels(pixels: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Raw pixels [rows, H, W, C] of the model's size as graph rows: what
    :func:`images.from_pixels` and :func:`images.prepare` make of each, in one pass."""
    if spec["color"] == "BGR":
        pixels = pixels[..., ::-1]
    values = pixels.astype(np.float32)
    if spec["scale"] != 1.0:
        values *= np.float32(spec["scale"])
    channels = values.shape[3]
    if spec["mean"]:
        values -= images.per_channel(spec["mean"], channels, "mean")
    if spec["std"]:
        values /= images.per_channel(spec["std"], channels, "std")
    if spec["layout"] == "NCHW":
        return np.ascontiguousarray(values.transpose(0, 3, 1, 2))
    if spec["layout"] == "FLAT":
        return values.reshape(len(values), -1)
    return values


def _numpy_type(datatype: str) -> Any:
    return np.dtype(tensors.NUMPY_TYPES[datatype]) if datatype != "BYTES" else object


def concatenate(parts: Sequence[TensorOutputs]) -> TensorOutputs:
    """Answers of consecutive row batches as one."""
    n = sum(_rows_of(p) for p in parts)
    positions, at = [], 0
    for part in parts:
        count = _rows_of(part)
        positions.append(list(range(at, at + count)))
        at += count
    return _reassemble(list(zip(positions, parts, strict=True)), n)


def _rows_of(part: TensorOutputs) -> int:
    if part.scores is not None:
        return len(part.scores)
    return len(next(iter(part.outputs.values())))


def _reassemble(parts: list[tuple[list[int], TensorOutputs]], n: int) -> TensorOutputs:
    """Batches' results back in row order."""
    if len(parts) == 1 and parts[0][0] == list(range(n)):
        return parts[0][1]
    first = parts[0][1]
    scores = None
    if first.scores is not None:
        scores = np.empty((n, *first.scores.shape[1:]), dtype=first.scores.dtype)
        for positions, part in parts:
            assert part.scores is not None
            scores[positions] = part.scores
    outputs: dict[str, np.ndarray] = {}
    for name, value in first.outputs.items():
        shapes = {p.outputs[name].shape[1:] for _, p in parts}
        if len(shapes) == 1:
            merged = np.empty((n, *value.shape[1:]), dtype=value.dtype)
            for positions, part in parts:
                merged[positions] = part.outputs[name]
            outputs[name] = merged
        else:  # per-batch sequence lengths differ: keep rows as objects
            rows: list[Any] = [None] * n
            for positions, part in parts:
                for position, row in zip(positions, part.outputs[name], strict=True):
                    rows[position] = row
            outputs[name] = _object_rows(rows)
    return TensorOutputs(scores, outputs)


def is_tensor_model(body: Mapping[str, Any]) -> bool:
    graph = body.get("onnx")
    return bool(graph is not None and graph.get("spec"))
