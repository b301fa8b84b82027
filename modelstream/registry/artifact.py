"""Model artifacts: tensors, the canonical digest, Ed25519 signatures and AES-GCM encryption.

The digest is SHA-256 over the Avro binary encoding of the artifact's ``body`` record under
the schema that wrote it; the signature is Ed25519 over ``SIGNATURE_CONTEXT + digest``.
Two kinds of key sign: the publisher's (``modelstream.key``) signs what goes to ``models``;
each maker of candidates (``trainer``, ``monitor``, ``importer``: ``<maker>.key``) signs its
candidates over ``CANDIDATE_CONTEXT + digest``, so that neither signature can pass for the
other. The validator (and the trainer, for lineage) trust a candidate only when a key of its
keyring verifies it and that key's maker may make a candidate of its origin.
A consumer recomputes the digest from the bytes it received, so a flipped byte anywhere in
the body (weights, graph, names, version, lineage) fails verification. Nothing in an artifact
is code: weights are raw little-endian floats and an imported model is an ONNX graph (a
Protobuf description of tensor operators), so loading one executes no Python.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelstream.contracts.codec import AvroCodec, default_codec
from modelstream.contracts.limits import INTERNAL
from modelstream.contracts.records import DenseLayer, ModelArtifact, ModelBody, Origin, Tensor
from modelstream.errors import ArtifactVerificationError, ConfigurationError

log = logging.getLogger(__name__)
SIGNATURE_CONTEXT = b"modelstream-artifact-v1:"
CANDIDATE_CONTEXT = b"modelstream-candidate-v1:"
TensorField = Literal["weights", "intercepts", "feature_mean", "feature_scale"]
TENSOR_FIELDS: tuple[TensorField, ...] = ("weights", "intercepts", "feature_mean", "feature_scale")
ALLOWED_DTYPES = frozenset({"<f8", "<f4"})
MAX_TENSOR_ELEMENTS = 50_000_000
PRIVATE_KEY_NAME = "modelstream.key"
PUBLIC_KEY_NAME = "modelstream.pub"
# Who makes candidates of which origin: a key's maker is its file name up to the first dot
# (``trainer.pub``, ``trainer.2027-01.pub`` while a key is being rotated in).
MAKER_OF_ORIGIN = {Origin.BATCH: "trainer", Origin.ONLINE: "monitor", Origin.IMPORTED: "importer"}
MAKERS = tuple(MAKER_OF_ORIGIN.values())


# -- tensors ---------------------------------------------------------------------------
def to_tensor(array: np.ndarray) -> Tensor:
    """A numpy array as the Avro Tensor record (little-endian float64, C order)."""
    values = np.ascontiguousarray(array, dtype="<f8")
    return {"dtype": "<f8", "shape": [int(d) for d in values.shape], "data": values.tobytes()}


def from_tensor(tensor: Tensor) -> np.ndarray:
    """The numpy array of a Tensor record; refuses dtypes and sizes that do not add up."""
    dtype = tensor["dtype"]
    if dtype not in ALLOWED_DTYPES:
        raise ArtifactVerificationError(f"tensor dtype {dtype!r} is not allowed")
    shape = tuple(int(d) for d in tensor["shape"])
    if any(d < 0 for d in shape):
        raise ArtifactVerificationError(f"negative tensor shape {shape}")
    count = int(np.prod(shape)) if shape else 1
    if count > MAX_TENSOR_ELEMENTS:
        raise ArtifactVerificationError(f"tensor of {count} elements exceeds the limit")
    data = tensor["data"]
    itemsize = np.dtype(dtype).itemsize
    if len(data) != count * itemsize:
        raise ArtifactVerificationError(
            f"tensor data has {len(data)} bytes, shape {shape} of {dtype} needs {count * itemsize}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float64, copy=False)


# -- keys ------------------------------------------------------------------------------
def generate_keys(out_dir: Path, keep_existing: bool = False) -> tuple[Path, Path]:
    """Write the publisher's Ed25519 key pair and one pair per maker of candidates (private
    keys readable by their owner only); with ``keep_existing``, pairs already there stay.
    Returns the publisher's pair."""
    for maker in MAKERS:
        generate_pair(out_dir, maker, keep_existing)
    return generate_pair(out_dir, PRIVATE_KEY_NAME.removesuffix(".key"), keep_existing)


def generate_pair(out_dir: Path, name: str, keep_existing: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.key`` (private) and ``<name>.pub`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if keep_existing and private_path.exists() and public_path.exists():
        return private_path, public_path
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- digest and signature --------------------------------------------------------------
def body_digest(body: ModelBody, body_schema: Any = None, codec: AvroCodec | None = None) -> str:
    codec = codec or default_codec()
    schema = body_schema or codec.schema(ModelArtifact).parsed["fields"][0]["type"]
    return hashlib.sha256(codec.encode_body(schema, body)).hexdigest()


def seal(
    body: ModelBody,
    private_key: Ed25519PrivateKey | None = None,
    context: bytes = SIGNATURE_CONTEXT,
) -> ModelArtifact:
    """An artifact record for ``body``: digest always, signature when a key is given
    (``CANDIDATE_CONTEXT`` for a maker's candidate)."""
    digest = body_digest(body)
    if private_key is None:
        return {"body": body, "digest": digest, "signature": b"", "key_id": ""}
    signature = private_key.sign(context + digest.encode("ascii"))
    return {
        "body": body,
        "digest": digest,
        "signature": signature,
        "key_id": key_id(private_key.public_key()),
    }


@dataclass(frozen=True)
class Verified:
    """An artifact whose digest (and signature, unless unsigned ones are allowed) checked out."""

    record: ModelArtifact
    signed: bool

    @property
    def body(self) -> ModelBody:
        return self.record["body"]

    @property
    def digest(self) -> str:
        return self.record["digest"]


def verify_record(
    record: ModelArtifact,
    public_key: Ed25519PublicKey | None,
    *,
    allow_unsigned: bool = False,
    body_schema: Any = None,
    context: bytes = SIGNATURE_CONTEXT,
) -> Verified:
    """Check an already decoded artifact; raises ArtifactVerificationError on any mismatch."""
    digest = body_digest(record["body"], body_schema)
    if digest != record["digest"]:
        raise ArtifactVerificationError(
            f"digest mismatch: computed {digest[:12]}, artifact claims {record['digest'][:12]}"
        )
    signature = record["signature"]
    if not signature:
        if not allow_unsigned:
            raise ArtifactVerificationError("artifact is unsigned and unsigned ones are refused")
        return Verified(record, signed=False)
    if public_key is None:
        raise ArtifactVerificationError("artifact is signed but no public key is configured")
    if record["key_id"] != key_id(public_key):
        raise ArtifactVerificationError(f"signed by unknown key {record['key_id']!r}")
    try:
        public_key.verify(signature, context + digest.encode("ascii"))
    except InvalidSignature:
        raise ArtifactVerificationError("Ed25519 signature does not verify") from None
    return Verified(record, signed=True)


def verify_bytes(
    data: bytes,
    public_key: Ed25519PublicKey | None,
    *,
    allow_unsigned: bool = False,
    codec: AvroCodec | None = None,
) -> Verified:
    """Decode a ModelArtifact message and verify it against the schema that wrote it."""
    record, body_schema = decode_artifact(data, codec)
    return verify_record(record, public_key, allow_unsigned=allow_unsigned, body_schema=body_schema)


def decode_artifact(data: bytes, codec: AvroCodec | None = None) -> tuple[ModelArtifact, Any]:
    """A ModelArtifact message and the body schema that wrote it, which its digest is over."""
    codec = codec or default_codec()
    writer = codec.writer_schema(data)
    return codec.decode(data, ModelArtifact, INTERNAL), writer.parsed["fields"][0]["type"]


# -- candidates: signed by their makers ---------------------------------------------------
class Keyring:
    """The makers' public keys a reader of candidates trusts: every ``<maker>.pub`` and
    ``<maker>.<tag>.pub`` in one directory, by key id. The directory is read again (at most
    once a second) when it has changed or a candidate names a key it does not hold, and at
    least once a minute: a key rotated in is trusted, and one removed is not, without a
    restart."""

    def __init__(self, directory: Path | None, clock: Callable[[], float] = time.monotonic):
        self.directory = directory
        self._clock = clock
        self._keys: dict[str, tuple[str, Ed25519PublicKey]] = {}
        self._read_at = 0.0
        self._stamp: int | None = None
        self._read()

    def __len__(self) -> int:
        return len(self._keys)

    def makers(self) -> dict[str, list[str]]:
        """Key ids by maker, for logs."""
        out: dict[str, list[str]] = {}
        for kid, (maker, _) in self._keys.items():
            out.setdefault(maker, []).append(kid)
        return out

    def get(self, kid: str) -> tuple[str, Ed25519PublicKey] | None:
        age = self._clock() - self._read_at
        if age >= 1.0 and (kid not in self._keys or age >= 60.0 or self._changed()):
            self._read()
        return self._keys.get(kid)

    def _stamp_now(self) -> int | None:
        try:
            return self.directory.stat().st_mtime_ns if self.directory is not None else None
        except OSError:
            return None

    def _changed(self) -> bool:
        return self._stamp_now() != self._stamp

    def _read(self) -> None:
        self._read_at = self._clock()
        self._stamp = self._stamp_now()
        keys: dict[str, tuple[str, Ed25519PublicKey]] = {}
        if self.directory is not None and self.directory.is_dir():
            for path in sorted(self.directory.glob("*.pub")):
                maker = path.name.split(".", 1)[0]
                if maker not in MAKERS:
                    if path.name != PUBLIC_KEY_NAME:
                        log.warning(
                            "keyring: %s is no maker's key (<maker>.pub or <maker>.<tag>.pub, "
                            "maker one of %s): not trusted",
                            path,
                            ", ".join(MAKERS),
                        )
                    continue
                try:
                    public = load_public_key(path)
                except ConfigurationError as exc:  # half-copied or not a key: trust nothing in it
                    log.warning("keyring: %s", exc)
                    continue
                keys[key_id(public)] = (maker, public)
        self._keys = keys


def verify_candidate(
    data: bytes, keyring: Keyring, *, allow_unsigned: bool = False, codec: AvroCodec | None = None
) -> Verified:
    """Decode a candidate message and check it (see :func:`verify_candidate_record`)."""
    record, body_schema = decode_artifact(data, codec)
    return verify_candidate_record(
        record, keyring, allow_unsigned=allow_unsigned, body_schema=body_schema
    )


def verify_candidate_record(
    record: ModelArtifact,
    keyring: Keyring,
    *,
    allow_unsigned: bool = False,
    body_schema: Any = None,
) -> Verified:
    """Check a candidate's digest and its maker's signature: a key of the keyring, held by
    the maker of the candidate's origin (the trainer for BATCH, the monitor for ONLINE, an
    importer for IMPORTED). Unsigned candidates pass only with ``allow_unsigned``
    (development). Raises ArtifactVerificationError otherwise."""
    if not record["signature"]:
        return verify_record(record, None, allow_unsigned=allow_unsigned, body_schema=body_schema)
    found = keyring.get(record["key_id"])
    if found is None:
        raise ArtifactVerificationError(
            f"candidate signed by unknown key {record['key_id'][:16]!r} (no maker's key has it)"
        )
    maker, public = found
    origin = record["body"]["lineage"]["origin"]
    if MAKER_OF_ORIGIN.get(origin) != maker:
        raise ArtifactVerificationError(
            f"a {origin} candidate signed by the {maker}'s key: only the "
            f"{MAKER_OF_ORIGIN.get(origin, 'nobody')} makes those"
        )
    return verify_record(record, public, body_schema=body_schema, context=CANDIDATE_CONTEXT)


def seal_candidate(body: ModelBody, maker_key: Ed25519PrivateKey | None) -> ModelArtifact:
    """A candidate signed by its maker (unsigned without a key)."""
    return seal(body, maker_key, CANDIDATE_CONTEXT)


# -- encryption of weight bytes ----------------------------------------------------------
def _nonce(base: bytes, index: int) -> bytes:
    return base[:-1] + bytes([base[-1] ^ index])


def encrypt_tensors(body: ModelBody, data_key: bytes, data_key_id: str) -> ModelBody:
    """AES-256-GCM over each tensor's data and an ONNX graph; names, shapes and metadata
    stay readable."""
    aes = AESGCM(data_key)
    base = os.urandom(12)
    out = body.copy()
    for i, name in enumerate(TENSOR_FIELDS):
        tensor = body[name].copy()
        aad = f"{body['name']}:{name}".encode()
        tensor["data"] = aes.encrypt(_nonce(base, i), tensor["data"], aad)
        out[name] = tensor
    if body["onnx"] is not None:
        graph = body["onnx"].copy()
        aad = f"{body['name']}:onnx".encode()
        graph["graph"] = aes.encrypt(_nonce(base, len(TENSOR_FIELDS)), graph["graph"], aad)
        out["onnx"] = graph
    if body.get("layers"):
        out["layers"] = [
            _layer(layer, lambda i, data, aad: aes.encrypt(_nonce(base, i), data, aad), body, j)
            for j, layer in enumerate(body["layers"] or [])
        ]
    out["encryption"] = {"algorithm": "AES-256-GCM", "key_id": data_key_id, "nonce": base}
    return out


def decrypt_tensors(body: ModelBody, data_key: bytes | None) -> ModelBody:
    """Plain tensors of an encrypted body; unencrypted bodies pass through unchanged."""
    encryption = body.get("encryption")
    if encryption is None:
        return body
    if data_key is None:
        raise ArtifactVerificationError(
            f"artifact is encrypted with data key {encryption['key_id']!r}, which is not configured"
        )
    aes = AESGCM(data_key)
    out = body.copy()
    for i, name in enumerate(TENSOR_FIELDS):
        tensor = body[name].copy()
        aad = f"{body['name']}:{name}".encode()
        try:
            tensor["data"] = aes.decrypt(_nonce(encryption["nonce"], i), tensor["data"], aad)
        except InvalidTag:
            raise ArtifactVerificationError("weights do not decrypt with the data key") from None
        out[name] = tensor
    if body["onnx"] is not None:
        graph = body["onnx"].copy()
        aad = f"{body['name']}:onnx".encode()
        try:
            graph["graph"] = aes.decrypt(
                _nonce(encryption["nonce"], len(TENSOR_FIELDS)), graph["graph"], aad
            )
        except InvalidTag:
            raise ArtifactVerificationError(
                "the graph does not decrypt with the data key"
            ) from None
        out["onnx"] = graph
    if body.get("layers"):
        nonce = encryption["nonce"]
        try:
            out["layers"] = [
                _layer(
                    layer, lambda i, data, aad: aes.decrypt(_nonce(nonce, i), data, aad), body, j
                )
                for j, layer in enumerate(body["layers"] or [])
            ]
        except InvalidTag:
            raise ArtifactVerificationError("layers do not decrypt with the data key") from None
    out["encryption"] = None
    return out


def _layer(
    layer: DenseLayer, cipher: Callable[[int, bytes, bytes], bytes], body: ModelBody, j: int
) -> DenseLayer:
    """One dense layer with both tensors through ``cipher`` (nonces after the fixed
    fields and the graph: 5 + 2j for the weights, 6 + 2j for the biases)."""
    weights, biases = layer["weights"].copy(), layer["biases"].copy()
    name = body["name"]
    at = len(TENSOR_FIELDS) + 1 + 2 * j
    weights["data"] = cipher(at, weights["data"], f"{name}:layers.{j}.weights".encode())
    biases["data"] = cipher(at + 1, biases["data"], f"{name}:layers.{j}.biases".encode())
    return {"weights": weights, "biases": biases}
