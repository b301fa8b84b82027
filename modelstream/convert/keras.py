"""Keras models read as data: the configuration JSON and the weight arrays, never loaded by
Keras (``keras.models.load_model`` would rebuild whatever the file names, Lambda bytecode
and custom classes included).

Two containers: HDF5 (``.h5``: the configuration in the root's ``model_config`` attribute,
the weights under ``model_weights/<layer>``), and Keras 3's ``.keras`` (a ZIP of
``config.json`` and ``model.weights.h5``, the weights under ``layers/<kind>/vars``). The
ZIP's names and declared sizes are checked before anything is read from it. HDF5 can point
outside the file (soft and external links, external storage, virtual datasets): none of
that is followed, so a crafted file cannot copy one of the user's files into a model.
Declared shapes are checked against the configuration, and their total against the largest
artifact, before any weight is read.

What is understood: a Sequential model, or a functional one whose layers form a chain, of
Dense layers (relu, tanh, sigmoid, softmax or linear), Activation layers and Dropout (an
identity at inference), over vectors of features. A Lambda or custom layer carries code
and is refused by name; any other layer is refused by name and kind.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from modelstream.contracts.records import Task
from modelstream.convert import ConversionError, Converted, Row
from modelstream.learn.mlp import MLPModel
from modelstream.learn.objectives import sigmoid, softmax

ACTIVATIONS = ("relu", "tanh", "sigmoid", "softmax", "linear")
IGNORED = ("Dropout",)  # identities at inference
# A member of a .keras archive may declare at most this (an artifact is at most 128 MiB).
MAX_MEMBER = 256 * 1024 * 1024
# Weights beyond this many numbers (128 MiB as float64) never fit in an artifact; a small
# crafted file can declare far more, in datasets with nothing stored.
MAX_ELEMENTS = 16 * 1024 * 1024
# Where Keras code lives; a layer of another module is someone's class.
KERAS_MODULES = ("keras", "tf_keras")


@dataclass(frozen=True)
class Dense:
    name: str
    weights: np.ndarray  # [inputs, units], float64
    bias: np.ndarray  # [units]
    activation: str


@dataclass(frozen=True)
class Network:
    """A chain of dense layers, input first."""

    inputs: int
    layers: list[Dense]

    @property
    def output_activation(self) -> str:
        return self.layers[-1].activation

    @property
    def output_units(self) -> int:
        return int(self.layers[-1].weights.shape[1])

    def with_output_activation(self, activation: str) -> Network:
        last = replace(self.layers[-1], activation=activation)
        return Network(self.inputs, [*self.layers[:-1], last])


def read(path: Path) -> Network:
    """The network in a ``.h5`` or ``.keras`` file; ConversionError says in one line what
    in it cannot be read."""
    suffix = path.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".keras"):
        raise ConversionError(f"{path.name}: a Keras model is a .h5 or a .keras file")
    try:
        import h5py  # noqa: F401 - both containers hold HDF5
    except ImportError:
        raise ConversionError(
            "reading a Keras file needs h5py: pip install 'modelstream[convert]'"
        ) from None
    try:
        config, weights = _from_archive(path) if suffix == ".keras" else _from_h5(path)
        try:
            return _network(config, weights)
        finally:
            weights.file.close()
    except ConversionError:
        raise
    except Exception as exc:  # the file is data: whatever its parsers raise, it does not read
        raise ConversionError(
            f"{path.name} does not read as a Keras model: {type(exc).__name__}: {exc}"
        ) from None


# -- containers --------------------------------------------------------------------------
class _Weights:
    """A Dense layer's kernel and bias from one of the two layouts: HDF5 files group them
    by layer name; Keras 3 archives by the layer's class and rank among the model's layers
    of that class (``layers/dense``, ``layers/dense_1``, ...), as its saving code names
    them, because layer names differ between two builds of one model (tf-keras 2.13-2.15
    wrote ``_layer_checkpoint_dependencies`` where Keras 3 writes ``layers``). Nothing
    is read until :meth:`read` has checked the shape and the running total."""

    def __init__(self, file: Any, layout: str) -> None:
        self.file, self.layout = file, layout
        self.elements = 0

    def of(self, layer: str, rank: int) -> tuple[Any, Any]:
        """(kernel, bias) datasets of a Dense layer, None where absent."""
        import h5py

        if self.layout == "h5":
            group = _hard_link(self.file, f"model_weights/{layer}")
            if not isinstance(group, h5py.Group):
                raise ConversionError(f"layer {layer!r} has no weights in the file")
            found = {}
            for raw in group.attrs.get("weight_names", []):
                path = raw.decode() if isinstance(raw, bytes) else str(raw)
                found[path.rsplit("/", 1)[-1].split(":")[0]] = _hard_link(group, path)
        else:
            key = "dense" if rank == 0 else f"dense_{rank}"
            group = _hard_link(self.file, f"layers/{key}/vars")
            if not isinstance(group, h5py.Group):
                group = _hard_link(self.file, f"_layer_checkpoint_dependencies/{key}/vars")
            if not isinstance(group, h5py.Group):
                raise ConversionError(f"layer {layer!r} has no weights in the file ({key})")
            found = {"kernel": _hard_link(group, "0"), "bias": _hard_link(group, "1")}
        return found.get("kernel"), found.get("bias")

    def read(self, dataset: Any, layer: str, what: str, shape: tuple[int, ...]) -> np.ndarray:
        """The values of a dataset of this file, once its declared shape is ``shape`` and
        the weights read so far stay within MAX_ELEMENTS."""
        import h5py

        if not isinstance(dataset, h5py.Dataset):
            raise ConversionError(f"layer {layer!r} has no {what} in the file")
        if dataset.is_virtual or dataset.external or dataset.file != self.file:
            raise ConversionError(
                f"layer {layer!r}: its {what} is stored outside the file, which is never read"
            )
        if dataset.dtype.kind != "f":
            raise ConversionError(f"layer {layer!r}: its {what} is {dataset.dtype}, not floats")
        if dataset.shape != shape:
            raise ConversionError(
                f"layer {layer!r}: the {what} is {list(dataset.shape)}, the configuration "
                f"says {list(shape)}"
            )
        self.elements += dataset.size
        if self.elements > MAX_ELEMENTS:
            raise ConversionError(
                f"the weights hold more than {MAX_ELEMENTS} numbers: larger than any artifact"
            )
        values = np.asarray(dataset[()], dtype=np.float64)
        if not np.isfinite(values).all():
            raise ConversionError(f"layer {layer!r} has weights that are not finite numbers")
        return values


def _hard_link(root: Any, path: str) -> Any:
    """The object at ``path`` under ``root`` when every step is a hard link within the file,
    None when something is missing; a soft or external link is refused (it may point into
    another file, the user's own included)."""
    import h5py

    node = root
    for part in path.split("/"):
        if not isinstance(node, h5py.Group) or part in ("", ".", ".."):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise ConversionError(
                f"{path[:100]!r} is a {type(link).__name__}: links out of the file are not followed"
            )
        node = node[part]
    return node


def _from_h5(path: Path) -> tuple[dict[str, Any], _Weights]:
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        raise ConversionError(f"{path.name} is not an HDF5 file: {exc}") from None
    try:
        raw = file.attrs.get("model_config")
        if raw is None:
            raise ConversionError(f"{path.name} has no model_config: weights alone, not a model")
        config = _json(raw.decode() if isinstance(raw, bytes) else str(raw), path.name)
    except BaseException:
        file.close()
        raise
    return config, _Weights(file, "h5")


def _from_archive(path: Path) -> tuple[dict[str, Any], _Weights]:
    import h5py

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConversionError(f"{path.name} is not a .keras archive: {exc}") from None
    with archive:
        for member in archive.infolist():
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                raise ConversionError(
                    f"{path.name} names a path outside the archive: {member.filename[:100]!r}"
                )
            if member.file_size > MAX_MEMBER:
                raise ConversionError(
                    f"{path.name}: {member.filename[:100]!r} declares {member.file_size} bytes "
                    f"(at most {MAX_MEMBER} are read)"
                )
        missing = [m for m in ("config.json", "model.weights.h5") if m not in archive.namelist()]
        if missing:
            raise ConversionError(
                f"{path.name} lacks {' and '.join(missing)}: not a Keras 3 archive"
            )
        try:
            config = archive.read("config.json").decode()
            weights = archive.read("model.weights.h5")
        except Exception as exc:  # BadZipFile, zlib.error, encrypted or unknown compression
            raise ConversionError(
                f"{path.name} does not read: {type(exc).__name__}: {exc}"
            ) from None
    parsed = _json(config, path.name)
    try:
        file = h5py.File(io.BytesIO(weights), "r")
    except OSError as exc:
        raise ConversionError(f"{path.name}: model.weights.h5 is not HDF5: {exc}") from None
    return parsed, _Weights(file, "keras")


def _json(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConversionError(f"{where}: the model configuration is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{where}: the model configuration is not an object")
    return value


# -- the configuration ---------------------------------------------------------------------
def _network(config: dict[str, Any], weights: _Weights) -> Network:
    kind = config.get("class_name")
    body = config.get("config") or {}
    layers = body.get("layers") if isinstance(body, dict) else None
    if kind not in ("Sequential", "Functional", "Model") or not isinstance(layers, list):
        raise ConversionError(f"a {kind!r} model: Sequential and functional models only")
    if kind != "Sequential":
        layers = _chain(layers, body)
    inputs = _vector_width(body.get("build_input_shape"), "the model")
    dense: list[Dense] = []
    for layer in layers:
        if not isinstance(layer, dict):
            raise ConversionError("a layer of the configuration is not an object")
        class_name = str(layer.get("class_name"))
        settings = layer.get("config") or {}
        if not isinstance(settings, dict):
            raise ConversionError(f"the configuration of a {class_name} layer is not an object")
        name = str(settings.get("name", class_name))
        _refuse_code(layer, class_name, name)
        built = (layer.get("build_config") or {}).get("input_shape")
        width = _vector_width(built, f"layer {name!r}")
        if class_name == "InputLayer":
            shape = settings.get("batch_shape") or settings.get("batch_input_shape")
            inputs = _vector_width(shape, f"input {name!r}", required=True)
        elif class_name == "Dense":
            if not dense:  # Keras 2 puts the input shape on the first layer
                first = _vector_width(settings.get("batch_input_shape"), f"layer {name!r}")
                inputs = next((w for w in (inputs, first, width) if w is not None), None)
            dense.append(_dense(name, settings, weights, inputs, dense))
        elif class_name == "Activation":
            dense = _merge_activation_layer(name, settings, dense)
        elif class_name not in IGNORED:
            raise ConversionError(
                f"layer {name!r} ({class_name}) is not supported: Dense, Activation and "
                "Dropout layers only"
            )
    if not dense:
        raise ConversionError("the model has no Dense layer")
    return Network(int(dense[0].weights.shape[0]), dense)


def _refuse_code(layer: dict[str, Any], class_name: str, name: str) -> None:
    if class_name == "Lambda":
        raise ConversionError(
            f"layer {name!r} is a Lambda layer: it carries Python bytecode, which is never run"
        )
    module = str(layer.get("module") or "keras.layers")
    ours = module in KERAS_MODULES or module.startswith(tuple(f"{m}." for m in KERAS_MODULES))
    if layer.get("registered_name") or not ours:
        raise ConversionError(
            f"layer {name!r} is a custom layer ({class_name} of {module}): it carries code"
        )


def _vector_width(shape: Any, what: str, *, required: bool = False) -> int | None:
    """The feature count of a declared ``[batch, features]`` shape (None when nothing is
    declared and nothing is required); any other rank is refused: Dense layers over a
    sequence or an image answer per position, not per row."""
    if shape is None and not required:
        return None
    if not isinstance(shape, list) or len(shape) != 2 or not isinstance(shape[1], int):
        raise ConversionError(f"{what} takes inputs of shape {shape}: vectors of features only")
    return shape[1]


def _activation_of(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ConversionError(
            f"layer {name!r} has activation {str(value)[:60]!r}: {', '.join(ACTIVATIONS)} only"
        )
    return value


def _dense(
    name: str, settings: dict[str, Any], weights: _Weights, inputs: int | None, before: list[Dense]
) -> Dense:
    units = settings.get("units")
    if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
        raise ConversionError(f"layer {name!r} has {str(units)[:40]} units")
    activation = _activation_of(settings.get("activation", "linear"), name)
    kernel, bias = weights.of(name, len(before))
    width = int(before[-1].weights.shape[1]) if before else inputs
    if width is None:  # nothing declares the input: the kernel says it
        width = int(kernel.shape[0]) if getattr(kernel, "ndim", 0) == 2 else 0
    values = weights.read(kernel, name, "kernel", (width, units))
    if settings.get("use_bias", True):
        if bias is None:
            raise ConversionError(f"layer {name!r} has no bias in the file")
        offsets = weights.read(bias, name, "bias", (units,))
    else:
        offsets = np.zeros(units)
    return Dense(name, values, offsets, activation)


def _merge_activation_layer(name: str, settings: dict[str, Any], dense: list[Dense]) -> list[Dense]:
    """An Activation layer after a Dense layer without an activation of its own becomes
    that layer's activation."""
    activation = _activation_of(settings.get("activation"), name)
    if not dense or dense[-1].activation != "linear":
        raise ConversionError(
            f"layer {name!r}: an Activation layer follows a Dense layer without its own"
        )
    return [*dense[:-1], replace(dense[-1], activation=activation)]


def _chain(layers: list[Any], body: dict[str, Any]) -> list[Any]:
    """A functional model's layers, when each takes the one listed before it and the last
    is the output."""
    previous: str | None = None
    for layer in layers:
        if not isinstance(layer, dict):
            raise ConversionError("a layer of the configuration is not an object")
        name = str((layer.get("config") or {}).get("name"))
        inbound = _inbound(layer.get("inbound_nodes"))
        starts = previous is None and not inbound and layer.get("class_name") == "InputLayer"
        if not starts and inbound != [previous]:
            raise ConversionError(
                f"layer {name!r} takes {inbound or 'nothing'}: only functional models whose "
                "layers form a chain are supported"
            )
        previous = name
    output = _single_reference(body.get("output_layers"))
    if output is not None and output != previous:
        raise ConversionError(f"the model's output is {output!r}, not its last layer")
    return layers


def _single_reference(refs: Any) -> str | None:
    """The layer name of ``["dense", 0, 0]`` (Keras 3, one tensor) or ``[["dense", 0, 0]]``
    (Keras 2); more than one output is refused."""
    if isinstance(refs, list) and refs and isinstance(refs[0], list):
        if len(refs) != 1:
            raise ConversionError(f"the model has {len(refs)} outputs: one only")
        refs = refs[0]
    return str(refs[0]) if isinstance(refs, list) and refs else None


def _inbound(nodes: Any) -> list[str]:
    """The layer names a node takes: Keras 3's ``keras_history`` or Keras 2's lists."""
    names: list[str] = []
    for node in nodes or []:
        if isinstance(node, dict):  # Keras 3
            for arg in node.get("args", []):
                history = (
                    (arg.get("config") or {}).get("keras_history")
                    if isinstance(arg, dict)
                    else None
                )
                if isinstance(history, list) and history:
                    names.append(str(history[0]))
        elif isinstance(node, list):  # Keras 2: [[name, node, tensor, kwargs], ...]
            names.extend(str(entry[0]) for entry in node if isinstance(entry, list) and entry)
    return names


# -- what it becomes ------------------------------------------------------------------------
ONNX_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax"}
SAMPLE_ROWS = 64  # per spread: the check scores rows at unit and at five times unit spread


def convert(
    path: Path,
    *,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    task: Task | None = None,
) -> Converted:
    """The Keras file as a native network when the mlp family expresses it (ReLU hidden
    layers; softmax, one sigmoid or one linear output), as an ONNX graph otherwise."""
    network = read(path)
    network, task, labels = _task(network, classes, task)
    d = network.inputs
    names = list(features) if features else [f"f{i}" for i in range(d)]
    if len(names) != d:
        raise ConversionError(f"{len(names)} feature names for {d} inputs")
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(SAMPLE_ROWS, d)), 5 * rng.normal(size=(SAMPLE_ROWS, d))])
    rows: list[Row] = [dict(zip(names, map(float, x), strict=True)) for x in X]
    network_model, graph = None, None
    if _native(network, task):
        layers = _native_layers(network, task)
        network_model = MLPModel(task, names, labels, layers, np.zeros(d), np.ones(d))
    else:
        graph = _graph(network, names, labels, task)
    return Converted(
        source="keras",
        reference="the file's network computed layer by layer in float64",
        graph=graph,
        network=network_model,
        rows=rows,
        expected=_answers(network, X, task),
        rows_from=f"{len(rows)} generated rows",
        keep_graph=True,
    )


def _task(
    network: Network, classes: Sequence[str] | None, wanted: Task | None
) -> tuple[Network, Task, list[str]]:
    """The task the output layer implies, and the class labels. A lone output value is a
    regression whatever its activation when --task regression says so; linear outputs are
    logits when --task says binary or multiclass (a network trained ``from_logits``): the
    sigmoid or softmax Keras's loss applied is applied here."""
    units = network.output_units
    if network.output_activation == "linear" and wanted in (Task.BINARY, Task.MULTICLASS):
        network = network.with_output_activation("sigmoid" if units == 1 else "softmax")
    output = network.output_activation
    if units == 1 and (wanted == Task.REGRESSION or output != "sigmoid"):
        task = Task.REGRESSION
    elif units == 1 and output == "sigmoid":
        task = Task.BINARY
    elif output == "softmax":
        task = Task.BINARY if units == 2 else Task.MULTICLASS
    else:
        raise ConversionError(
            f"the output layer gives {units} {output} values: a classifier ends in softmax "
            "(or one sigmoid; logits with --task binary or multiclass), a regression in one "
            "value"
        )
    if wanted is not None and wanted != task:
        raise ConversionError(
            f"the output layer makes a {task.lower()} model, not {wanted.lower()}"
        )
    if task == Task.REGRESSION:
        if classes:
            raise ConversionError("--classes given for a regression model")
        return network, task, []
    count = 2 if task == Task.BINARY else units
    labels = list(classes) if classes else [str(i) for i in range(count)]
    if len(labels) != count:
        raise ConversionError(f"{len(labels)} class labels for {count} classes")
    return network, task, labels


def _native(network: Network, task: Task) -> bool:
    hidden = all(layer.activation == "relu" for layer in network.layers[:-1])
    output = {Task.REGRESSION: "linear", Task.MULTICLASS: "softmax"}.get(task)
    if task == Task.BINARY:
        output = "sigmoid" if network.output_units == 1 else "softmax"
    return hidden and network.output_activation == output


def _native_layers(network: Network, task: Task) -> list[tuple[np.ndarray, np.ndarray]]:
    layers = [(layer.weights, layer.bias) for layer in network.layers]
    if task == Task.BINARY and network.output_units == 2:
        # softmax over two logits is the sigmoid of their difference: one output unit
        W, b = layers[-1]
        layers[-1] = (W[:, 1:] - W[:, :1], b[1:] - b[:1])
    return layers


def _answers(network: Network, X: np.ndarray, task: Task) -> np.ndarray:
    """What the network computes, layer by layer as Keras defines it, in float64."""
    Z = X
    for layer in network.layers:
        Z = Z @ layer.weights + layer.bias
        if layer.activation == "relu":
            Z = np.maximum(Z, 0.0)
        elif layer.activation == "tanh":
            Z = np.tanh(Z)
        elif layer.activation == "sigmoid":
            Z = sigmoid(Z)
        elif layer.activation == "softmax":
            Z = softmax(Z)
    if task == Task.REGRESSION:
        return np.asarray(Z[:, 0])
    if network.output_units == 1:
        return np.column_stack((1.0 - Z[:, 0], Z[:, 0]))
    return np.asarray(Z)


def _graph(network: Network, names: list[str], labels: list[str], task: Task) -> bytes:
    """The network as an ONNX graph over one double input, with metadata naming its
    features, classes and task (what ``describe`` reads)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    initializers: list[Any] = []
    current = "features"
    for i, layer in enumerate(network.layers):
        initializers.append(numpy_helper.from_array(layer.weights, f"kernel_{i}"))
        initializers.append(numpy_helper.from_array(layer.bias, f"bias_{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"kernel_{i}"], [f"product_{i}"]))
        nodes.append(helper.make_node("Add", [f"product_{i}", f"bias_{i}"], [f"dense_{i}"]))
        current = f"dense_{i}"
        if layer.activation in ONNX_ACTIVATIONS:
            op = ONNX_ACTIVATIONS[layer.activation]
            nodes.append(helper.make_node(op, [current], [f"{layer.activation}_{i}"]))
            current = f"{layer.activation}_{i}"
    output = "value" if task == Task.REGRESSION else "scores"
    nodes.append(helper.make_node("Identity", [current], [output]))
    graph = helper.make_graph(
        nodes,
        "keras",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, network.inputs])],
        [helper.make_tensor_value_info(output, TensorProto.DOUBLE, [None, network.output_units])],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="modelstream.convert.keras",
        ir_version=9,  # what onnxruntime releases since 1.16 read
    )
    helper.set_model_props(
        model,
        {
            "modelstream.feature_names": json.dumps(names),
            "modelstream.classes": json.dumps(labels),
            "modelstream.task": task.value,
        },
    )
    data: bytes = model.SerializeToString()
    return data
