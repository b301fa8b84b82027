"""Keras files read as data: each committed model (written by Keras 3 itself, see
tests/data/keras/make.py) answers as Keras did, through the scorer the predictor builds;
code-bearing and malformed files are refused with one line."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from modelstream.contracts.records import Task
from modelstream.convert import ConversionError, check, convert
from modelstream.registry.importing import graph_candidate, network_candidate
from modelstream.registry.scoring import kind_of, scorer_for

KERAS = Path(__file__).resolve().parents[2] / "data" / "keras"
EXPECTED = json.loads((KERAS / "expected.json").read_text())
# the native mlp family where it expresses the network, an ONNX graph otherwise
KINDS = {
    "relu_softmax": "mlp",
    "softmax_pair": "mlp",
    "functional_regression": "mlp",
    "tanh_sigmoid": "onnx",
    "no_bias": "onnx",
}


def candidate(path: Path, **options: Any) -> tuple[dict[str, Any], Any]:
    converted = convert(path, **options)
    if converted.network is not None:
        body = network_candidate("m", converted.network, created_by="t")
    else:
        assert converted.graph is not None
        body = graph_candidate(
            "m", converted.graph, keep_graph=converted.keep_graph, created_by="t"
        )
    return dict(body), converted


def keras_scores(name: str) -> np.ndarray:
    """Keras's own predictions in the scorer's layout: [N, classes] or [N] values."""
    predictions = np.array(EXPECTED[name]["predictions"])
    if name.endswith("regression"):
        return predictions[:, 0]
    if predictions.shape[1] == 1:
        return np.column_stack((1.0 - predictions[:, 0], predictions[:, 0]))
    return predictions


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_model_answers_as_keras_did(name: str, suffix: str) -> None:
    body, converted = candidate(KERAS / f"{name}{suffix}")
    assert kind_of(body) == KINDS[name]  # type: ignore[arg-type]
    rows = np.array(EXPECTED[name]["rows"])
    served = scorer_for(body).score(rows, [{}] * len(rows))  # type: ignore[arg-type]
    np.testing.assert_allclose(served, keras_scores(name), rtol=0, atol=1e-6)
    # the import's own check: the served model against the file's network, on its rows
    assert check(body, converted, tolerance=1e-12).rows == 128  # type: ignore[arg-type]


def test_names_and_labels_are_the_users() -> None:
    body, _ = candidate(
        KERAS / "relu_softmax.keras",
        features=["a", "b", "c", "d", "e", "f"],
        classes=["low", "mid", "high"],
    )
    assert body["feature_names"] == ["a", "b", "c", "d", "e", "f"]
    assert body["classes"] == ["low", "mid", "high"] and body["task"] == "MULTICLASS"
    body, _ = candidate(KERAS / "tanh_sigmoid.h5", classes=["no", "yes"])
    assert body["classes"] == ["no", "yes"] and body["task"] == "BINARY"
    with pytest.raises(ConversionError, match="2 class labels for 3 classes"):
        convert(KERAS / "relu_softmax.h5", classes=["a", "b"])
    with pytest.raises(ConversionError, match="3 feature names for 6 inputs"):
        convert(KERAS / "relu_softmax.h5", features=["a", "b", "c"])


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_lambda_layer_is_refused_by_name(suffix: str) -> None:
    with pytest.raises(ConversionError, match="'lambda' is a Lambda layer: it carries Python"):
        convert(KERAS / f"lambda{suffix}")


# -- crafted files --------------------------------------------------------------------------
def rewrite_archive(source: Path, target: Path, **members: bytes | None) -> Path:
    """``source`` with some members replaced (None drops one)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as out:
        for info in original.infolist():
            if info.filename not in members:
                out.writestr(info, original.read(info))
        for name, data in members.items():
            if data is not None:
                out.writestr(name, data)
    return target


def edited_config(source: Path, edit: Any) -> bytes:
    with zipfile.ZipFile(source) as archive:
        config = json.loads(archive.read("config.json"))
    edit(config)
    return json.dumps(config).encode()


def test_archive_members_outside_it_are_refused(tmp_path: Path) -> None:
    for name in ("../../etc/evil.h5", "/etc/evil.h5", "a\\..\\evil"):
        crafted = rewrite_archive(
            KERAS / "relu_softmax.keras", tmp_path / "crafted.keras", **{name: b"x"}
        )
        with pytest.raises(ConversionError, match="names a path outside the archive"):
            convert(crafted)


def test_a_member_declaring_10_gb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    crafted = tmp_path / "huge.keras"
    with (
        zipfile.ZipFile(KERAS / "relu_softmax.keras") as original,
        zipfile.ZipFile(crafted, "w") as out,
    ):
        for info in original.infolist():
            out.writestr(info, original.read(info))
        # the central directory, which is what a reader trusts first, declares 10 GB
        weights = next(i for i in out.filelist if i.filename == "model.weights.h5")
        weights.file_size = 10 * 2**30
    with pytest.raises(ConversionError, match=r"'model\.weights\.h5' declares 10737418240 bytes"):
        convert(crafted)


def resized_kernel(source: Path, target: Path, dataset: str, shape: tuple[int, ...]) -> None:
    shutil.copy(source, target)
    with h5py.File(target, "r+") as file:
        del file[dataset]
        file.create_dataset(dataset, data=np.zeros(shape, dtype="float32"))


def test_weights_that_disagree_with_the_configuration_are_refused(tmp_path: Path) -> None:
    h5 = tmp_path / "bad.h5"
    resized_kernel(
        KERAS / "relu_softmax.h5", h5, "model_weights/dense_1/sequential/dense_1/kernel", (16, 9)
    )
    with pytest.raises(ConversionError, match=r"'dense_1': the kernel is \[16, 9\], .* \[16, 8\]"):
        convert(h5)

    weights = tmp_path / "model.weights.h5"
    with zipfile.ZipFile(KERAS / "relu_softmax.keras") as archive:
        weights.write_bytes(archive.read("model.weights.h5"))
    with h5py.File(weights, "r+") as file:
        del file["layers/dense_2/vars/1"]
        file.create_dataset("layers/dense_2/vars/1", data=np.zeros(4, dtype="float32"))
    crafted = rewrite_archive(
        KERAS / "relu_softmax.keras",
        tmp_path / "bad.keras",
        **{"model.weights.h5": weights.read_bytes()},
    )
    with pytest.raises(ConversionError, match=r"the bias is \[4\], the configuration says \[3\]"):
        convert(crafted)


def test_custom_and_unknown_layers_are_refused_by_name_and_kind(tmp_path: Path) -> None:
    def custom(config: dict[str, Any]) -> None:
        layer = config["config"]["layers"][1]
        layer.update(module="my_package.layers", class_name="Gate", registered_name="my>Gate")

    def convolution(config: dict[str, Any]) -> None:
        config["config"]["layers"][1]["class_name"] = "Conv1D"

    def lookalike(config: dict[str, Any]) -> None:  # a "Dense" of a package named keras...
        config["config"]["layers"][1]["module"] = "keras_lookalike.layers"

    source = KERAS / "relu_softmax.keras"
    cases = [
        (custom, r"layer 'dense' is a custom layer \(Gate of my_package.layers\)"),
        (convolution, r"layer 'dense' \(Conv1D\) is not supported"),
        (lookalike, r"layer 'dense' is a custom layer \(Dense of keras_lookalike.layers\)"),
    ]
    for edit, message in cases:
        crafted = rewrite_archive(
            source, tmp_path / "crafted.keras", **{"config.json": edited_config(source, edit)}
        )
        with pytest.raises(ConversionError, match=message):
            convert(crafted)


def test_a_functional_model_that_is_not_a_chain_is_refused(tmp_path: Path) -> None:
    source = KERAS / "functional_regression.keras"

    def skip(config: dict[str, Any]) -> None:  # the last layer reads the input directly
        history = config["config"]["layers"][-1]["inbound_nodes"][0]["args"][0]["config"]
        history["keras_history"][0] = config["config"]["layers"][0]["name"]

    crafted = rewrite_archive(
        source, tmp_path / "skip.keras", **{"config.json": edited_config(source, skip)}
    )
    with pytest.raises(ConversionError, match="only functional models whose layers form a chain"):
        convert(crafted)


def test_files_that_are_not_keras_models_get_one_line(tmp_path: Path) -> None:
    not_zip = tmp_path / "a.keras"
    not_zip.write_bytes(b"PK\x03\x04 but not really a zip")
    not_hdf5 = tmp_path / "a.h5"
    not_hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as file:
        file.create_dataset("kernel", data=np.zeros((2, 2)))
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes((KERAS / "relu_softmax.keras").read_bytes()[:4000])
    no_config = rewrite_archive(
        KERAS / "relu_softmax.keras", tmp_path / "nc.keras", **{"config.json": None}
    )
    deep = rewrite_archive(
        KERAS / "relu_softmax.keras",
        tmp_path / "deep.keras",
        **{"config.json": b"[" * 100_000 + b"]" * 100_000},
    )
    not_a_dataset = tmp_path / "group.h5"
    shutil.copy(KERAS / "relu_softmax.h5", not_a_dataset)
    with h5py.File(not_a_dataset, "r+") as file:
        del file["model_weights/dense"]
        file.create_dataset("model_weights/dense", data=np.zeros(3))
    for path, message in [
        (not_zip, "is not a .keras archive"),
        (not_hdf5, "is not an HDF5 file"),
        (weights_only, "has no model_config: weights alone"),
        (truncated, "is not a .keras archive"),
        (no_config, "lacks config.json: not a Keras 3 archive"),
        (deep, "the model configuration is not JSON"),
        (not_a_dataset, "layer 'dense' has no weights in the file"),
    ]:
        with pytest.raises(ConversionError, match=message) as refused:
            convert(path)
        assert "\n" not in str(refused.value)


def test_an_archive_keeps_reading_when_names_are_not_the_layers(tmp_path: Path) -> None:
    """Keras 3 files weights by class and rank, not by layer name: renaming every layer in
    the configuration changes nothing."""
    source = KERAS / "relu_softmax.keras"

    def rename(config: dict[str, Any]) -> None:
        for i, layer in enumerate(config["config"]["layers"]):
            layer["config"]["name"] = layer["name"] = f"renamed_{i}"

    crafted = rewrite_archive(
        source, tmp_path / "renamed.keras", **{"config.json": edited_config(source, rename)}
    )
    body, _ = candidate(crafted)
    rows = np.array(EXPECTED["relu_softmax"]["rows"])
    served = scorer_for(body).score(rows, [{}] * len(rows))  # type: ignore[arg-type]
    np.testing.assert_allclose(served, keras_scores("relu_softmax"), atol=1e-6)


def deflated(source: Path, target: Path) -> Path:
    with (
        zipfile.ZipFile(source) as original,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for info in original.infolist():
            out.writestr(info.filename, original.read(info))
    return target


@pytest.mark.parametrize(
    "file", ["relu_softmax.h5", "relu_softmax.keras", "no_bias.keras", "deflated.keras"]
)
def test_mutated_files_are_read_or_refused_never_crash(file: str, tmp_path: Path) -> None:
    """Random bytes overwritten anywhere (headers, JSON, HDF5 structures, weights, a deflate
    stream): the file is either read into finite weights or refused with a
    ConversionError."""
    rng = np.random.default_rng(7)
    if file == "deflated.keras":
        original = deflated(KERAS / "relu_softmax.keras", tmp_path / "source.keras").read_bytes()
    else:
        original = (KERAS / file).read_bytes()
    path = tmp_path / file
    read, refused = 0, 0
    for _ in range(150):
        mutated = bytearray(original)
        for _ in range(int(rng.integers(1, 8))):
            mutated[int(rng.integers(len(mutated)))] = int(rng.integers(256))
        path.write_bytes(bytes(mutated))
        try:
            converted = convert(path)
        except ConversionError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        assert np.isfinite(converted.expected).all()
        read += 1
    assert refused > 0  # and every outcome above was finite weights or one line


# -- what HDF5 can point at -------------------------------------------------------------------
SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for any model"
KERNEL = "model_weights/dense/sequential/dense/kernel"


def h5_copy(tmp_path: Path, name: str = "crafted.h5") -> Path:
    target = tmp_path / name
    shutil.copy(KERAS / "relu_softmax.h5", target)
    return target


def test_weights_stored_or_linked_outside_the_file_are_never_read(tmp_path: Path) -> None:
    """A kernel whose bytes live in another file (external storage), a link to another
    file, a soft link, a virtual dataset over another file: a crafted model must not copy
    the user's files into a candidate (Keras's own loader had this hole)."""
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(SECRET.ljust(6 * 16 * 4, b" "))
    elsewhere = tmp_path / "elsewhere.h5"
    with h5py.File(elsewhere, "w") as file:
        file.create_dataset("kernel", data=np.zeros((6, 16), dtype="float32"))

    def external(file: Any) -> None:
        file.create_dataset(
            KERNEL, shape=(6, 16), dtype="float32", external=[(str(secret), 0, 6 * 16 * 4)]
        )

    def external_link(file: Any) -> None:
        file[KERNEL] = h5py.ExternalLink(str(elsewhere), "kernel")

    def soft_link(file: Any) -> None:
        file.create_dataset("elsewhere", data=np.zeros((6, 16), dtype="float32"))
        file[KERNEL] = h5py.SoftLink("/elsewhere")

    def virtual(file: Any) -> None:
        layout = h5py.VirtualLayout(shape=(6, 16), dtype="float32")
        layout[:] = h5py.VirtualSource(str(elsewhere), "kernel", shape=(6, 16))
        file.create_virtual_dataset(KERNEL, layout)

    cases = [
        (external, "its kernel is stored outside the file"),
        (external_link, "is a ExternalLink: links out of the file are not followed"),
        (soft_link, "is a SoftLink: links out of the file are not followed"),
        (virtual, "its kernel is stored outside the file"),
    ]
    for plant, message in cases:
        path = h5_copy(tmp_path)
        with h5py.File(path, "r+") as file:
            del file[KERNEL]
            plant(file)
        with pytest.raises(ConversionError, match=message):
            convert(path)


def test_declared_weights_beyond_any_artifact_are_refused_before_reading(tmp_path: Path) -> None:
    """Datasets declared huge but holding nothing cost a few KB on disk and tens of GB in
    memory if read: the total is checked against the largest artifact first."""
    path = tmp_path / "huge.h5"
    width, depth = 6000, 4
    layers: list[dict[str, Any]] = [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, width]}}
    ]
    with h5py.File(path, "w") as file:
        for i in range(depth):
            name = f"dense_{i}"
            layers.append({"class_name": "Dense", "config": {"name": name, "units": width}})
            group = file.create_group(f"model_weights/{name}")
            group.attrs["weight_names"] = [f"{name}/kernel:0", f"{name}/bias:0"]
            group.create_dataset(
                f"{name}/kernel:0", shape=(width, width), dtype="float32", chunks=(500, 500)
            )
            group.create_dataset(f"{name}/bias:0", shape=(width,), dtype="float32")
        config = {"class_name": "Sequential", "config": {"name": "s", "layers": layers}}
        file.attrs["model_config"] = json.dumps(config)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ConversionError, match="more than 16777216 numbers"):
        convert(path)


def test_dense_layers_over_sequences_are_refused(tmp_path: Path) -> None:
    """Keras applies a Dense layer to the last axis of whatever it gets: built on [None, 10,
    4] it answers per position, which no vector of features reproduces."""
    source = KERAS / "relu_softmax.keras"

    def sequence(config: dict[str, Any]) -> None:
        layers = config["config"]["layers"]
        del layers[0]  # no InputLayer: the shape is on the model and its first layer
        config["config"]["build_input_shape"] = [None, 10, 6]
        layers[0]["build_config"] = {"input_shape": [None, 10, 6]}

    crafted = rewrite_archive(
        source, tmp_path / "sequence.keras", **{"config.json": edited_config(source, sequence)}
    )
    with pytest.raises(ConversionError, match=r"takes inputs of shape \[None, 10, 6\]"):
        convert(crafted)


# -- layouts and conventions beyond the committed files -----------------------------------------
def test_a_keras_2_hdf5_layout_reads_the_same_network(tmp_path: Path) -> None:
    """Keras 2 names weights ``dense/kernel:0``, puts the input shape on the first layer and
    lists inbound nodes as lists: the same weights in that layout answer as Keras did."""
    with h5py.File(KERAS / "relu_softmax.h5") as original:
        weights = {
            name: (
                original[f"model_weights/{name}/sequential/{name}/kernel"][()],
                original[f"model_weights/{name}/sequential/{name}/bias"][()],
            )
            for name in ("dense", "dense_1", "dense_2")
        }
    path = tmp_path / "keras2.h5"
    activations = {"dense": "relu", "dense_1": "relu", "dense_2": "softmax"}
    layers: list[dict[str, Any]] = [
        {
            "class_name": "InputLayer",
            "config": {"name": "x", "batch_input_shape": [None, 6]},
            "name": "x",
            "inbound_nodes": [],
        }
    ]
    previous = "x"
    for name, activation in activations.items():
        layers.append(
            {
                "class_name": "Dense",
                "config": {
                    "name": name,
                    "units": int(weights[name][1].shape[0]),
                    "activation": activation,
                    "use_bias": True,
                },
                "name": name,
                "inbound_nodes": [[[previous, 0, 0, {}]]],
            }
        )
        previous = name
    config = {
        "class_name": "Model",
        "config": {
            "name": "m",
            "layers": layers,
            "input_layers": [["x", 0, 0]],
            "output_layers": [["dense_2", 0, 0]],
        },
    }
    with h5py.File(path, "w") as file:
        file.attrs["model_config"] = json.dumps(config).encode()
        for name, (kernel, bias) in weights.items():
            group = file.create_group(f"model_weights/{name}")
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            group.create_dataset(f"{name}/kernel:0", data=kernel)
            group.create_dataset(f"{name}/bias:0", data=bias)
    body, _ = candidate(path)
    rows = np.array(EXPECTED["relu_softmax"]["rows"])
    served = scorer_for(body).score(rows, [{}] * len(rows))  # type: ignore[arg-type]
    np.testing.assert_allclose(served, keras_scores("relu_softmax"), atol=1e-6)


def test_tf_keras_archives_keep_weights_under_their_older_name(tmp_path: Path) -> None:
    weights = tmp_path / "model.weights.h5"
    with zipfile.ZipFile(KERAS / "relu_softmax.keras") as archive:
        weights.write_bytes(archive.read("model.weights.h5"))
    with h5py.File(weights, "r+") as file:
        file.move("layers", "_layer_checkpoint_dependencies")
    crafted = rewrite_archive(
        KERAS / "relu_softmax.keras",
        tmp_path / "tf_keras.keras",
        **{"model.weights.h5": weights.read_bytes()},
    )
    body, _ = candidate(crafted)
    rows = np.array(EXPECTED["relu_softmax"]["rows"])
    served = scorer_for(body).score(rows, [{}] * len(rows))  # type: ignore[arg-type]
    np.testing.assert_allclose(served, keras_scores("relu_softmax"), atol=1e-6)


def test_logits_become_probabilities_when_the_task_says_so(tmp_path: Path) -> None:
    """A network trained ``from_logits`` ends in a linear layer; --task multiclass applies
    the softmax the loss applied in training."""
    source = KERAS / "relu_softmax.keras"

    def logits(config: dict[str, Any]) -> None:
        config["config"]["layers"][-1]["config"]["activation"] = "linear"

    crafted = rewrite_archive(
        source, tmp_path / "logits.keras", **{"config.json": edited_config(source, logits)}
    )
    with pytest.raises(ConversionError, match="logits with --task binary or multiclass"):
        convert(crafted)
    body, _ = candidate(crafted, task=Task.MULTICLASS)
    assert kind_of(body) == "mlp"  # type: ignore[arg-type]
    rows = np.array(EXPECTED["relu_softmax"]["rows"])
    served = scorer_for(body).score(rows, [{}] * len(rows))  # type: ignore[arg-type]
    np.testing.assert_allclose(served, keras_scores("relu_softmax"), atol=1e-6)
