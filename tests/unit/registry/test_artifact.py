import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelstream.contracts.codec import HEADER_SIZE, default_codec
from modelstream.contracts.records import ModelArtifact
from modelstream.errors import ArtifactVerificationError
from modelstream.registry.artifact import (
    decrypt_tensors,
    encrypt_tensors,
    from_tensor,
    generate_keys,
    load_private_key,
    load_public_key,
    seal,
    to_tensor,
    verify_bytes,
)
from tests.support.samples import model_artifact

CODEC = default_codec()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    private_path, public_path = generate_keys(tmp_path_factory.mktemp("keys"))
    return load_private_key(private_path), load_public_key(public_path)


def signed_bytes(private):
    return CODEC.encode(ModelArtifact, seal(model_artifact()["body"], private))


def test_signed_artifact_verifies(keys):
    private, public = keys
    verified = verify_bytes(signed_bytes(private), public)
    assert verified.signed and verified.body["name"] == "breast-cancer"


def test_every_flipped_body_byte_fails_verification(keys):
    private, public = keys
    data = signed_bytes(private)
    body_end = len(data) - 64 - 1 - 16 - 1 - 64 - 1  # signature, key id, digest + lengths
    failures = 0
    for position in range(HEADER_SIZE, body_end):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        try:
            verify_bytes(bytes(tampered), public)
        except Exception:  # corrupt framing, or ArtifactVerificationError
            failures += 1
    assert failures == body_end - HEADER_SIZE


def test_flipped_signature_byte_fails(keys):
    private, public = keys
    data = bytearray(signed_bytes(private))
    data[-20] ^= 0x01  # inside the key id/signature tail
    with pytest.raises(ArtifactVerificationError):
        verify_bytes(bytes(data), public)


def test_wrong_key_and_unsigned_are_refused(keys):
    _, public = keys
    forged = CODEC.encode(
        ModelArtifact, seal(model_artifact()["body"], Ed25519PrivateKey.generate())
    )
    with pytest.raises(ArtifactVerificationError, match="unknown key"):
        verify_bytes(forged, public)
    unsigned = CODEC.encode(ModelArtifact, seal(model_artifact()["body"]))
    with pytest.raises(ArtifactVerificationError, match="unsigned"):
        verify_bytes(unsigned, public)
    assert not verify_bytes(unsigned, public, allow_unsigned=True).signed


def test_forged_signature_with_right_key_id_is_refused(keys):
    private, public = keys
    record = seal(model_artifact()["body"], private)
    other = seal(model_artifact()["body"], Ed25519PrivateKey.generate())
    record["signature"] = other["signature"]
    with pytest.raises(ArtifactVerificationError, match="does not verify"):
        verify_bytes(CODEC.encode(ModelArtifact, record), public)


def test_tensor_round_trip_and_validation():
    array = np.arange(6, dtype=float).reshape(3, 2)
    assert np.array_equal(from_tensor(to_tensor(array)), array)
    with pytest.raises(ArtifactVerificationError, match="bytes"):
        from_tensor({"dtype": "<f8", "shape": [3, 3], "data": b"\0" * 8})
    with pytest.raises(ArtifactVerificationError, match="dtype"):
        from_tensor({"dtype": "|O", "shape": [1], "data": b"\0" * 8})


def test_encrypted_weights_need_the_data_key():
    key = bytes(range(32))
    body = model_artifact()["body"]
    encrypted = encrypt_tensors(body, key, "k1")
    assert encrypted["weights"]["data"] != body["weights"]["data"]
    assert decrypt_tensors(encrypted, key)["weights"] == body["weights"]
    with pytest.raises(ArtifactVerificationError, match="not configured"):
        decrypt_tensors(encrypted, None)
    with pytest.raises(ArtifactVerificationError, match="do not decrypt"):
        decrypt_tensors(encrypted, bytes(32))
