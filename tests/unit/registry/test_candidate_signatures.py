"""Candidates signed by their makers: which keys the validator, publisher and trainer trust,
for which origin, and what a forger can and cannot make them accept."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelstream.contracts.codec import HEADER_SIZE, default_codec
from modelstream.contracts.records import ModelArtifact
from modelstream.errors import ArtifactVerificationError, DecodeError, InvalidEventError
from modelstream.registry.artifact import (
    Keyring,
    generate_keys,
    generate_pair,
    load_private_key,
    load_public_key,
    seal,
    seal_candidate,
    verify_bytes,
    verify_candidate,
)
from tests.support.samples import model_artifact

CODEC = default_codec()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "keys")
    return tmp_path / "keys"


def candidate(origin: str = "BATCH") -> Any:
    body = model_artifact()["body"]
    body["stage"] = "CANDIDATE"
    body["version"] = 0
    body["lineage"] = {**body["lineage"], "origin": origin}
    return body


def signed(keys: Path, maker: str, origin: str = "BATCH") -> bytes:
    key = load_private_key(keys / f"{maker}.key")
    return CODEC.encode(ModelArtifact, seal_candidate(candidate(origin), key))


@pytest.mark.parametrize(
    ("maker", "origin"), [("trainer", "BATCH"), ("monitor", "ONLINE"), ("importer", "IMPORTED")]
)
def test_each_maker_signs_its_own_origin(keys: Path, maker: str, origin: str) -> None:
    verified = verify_candidate(signed(keys, maker, origin), Keyring(keys))
    assert verified.signed and verified.body["lineage"]["origin"] == origin


@pytest.mark.parametrize(
    ("maker", "origin"),
    [("monitor", "BATCH"), ("importer", "BATCH"), ("trainer", "ONLINE"), ("trainer", "IMPORTED")],
)
def test_a_maker_cannot_sign_another_makers_origin(keys: Path, maker: str, origin: str) -> None:
    with pytest.raises(ArtifactVerificationError, match=f"signed by the {maker}'s key"):
        verify_candidate(signed(keys, maker, origin), Keyring(keys))


def test_unsigned_and_unknown_keys_are_refused(keys: Path) -> None:
    unsigned = CODEC.encode(ModelArtifact, seal_candidate(candidate(), None))
    with pytest.raises(ArtifactVerificationError, match="unsigned"):
        verify_candidate(unsigned, Keyring(keys))
    assert not verify_candidate(unsigned, Keyring(keys), allow_unsigned=True).signed
    forged = CODEC.encode(ModelArtifact, seal_candidate(candidate(), Ed25519PrivateKey.generate()))
    with pytest.raises(ArtifactVerificationError, match="unknown key"):
        verify_candidate(forged, Keyring(keys))
    with pytest.raises(ArtifactVerificationError, match="unknown key"):
        verify_candidate(signed(keys, "trainer"), Keyring(None))  # no keyring: nothing passes


def test_the_publishers_key_is_not_a_makers(keys: Path) -> None:
    """The publisher's pair in the same directory signs nothing as a maker, and a maker's
    signature over a candidate never passes for a production one (separate contexts)."""
    publisher = load_private_key(keys / "modelstream.key")
    by_publisher = CODEC.encode(ModelArtifact, seal_candidate(candidate(), publisher))
    with pytest.raises(ArtifactVerificationError, match="unknown key"):
        verify_candidate(by_publisher, Keyring(keys))
    trainer_signed = signed(keys, "trainer")
    with pytest.raises(ArtifactVerificationError, match="does not verify"):
        verify_bytes(trainer_signed, load_public_key(keys / "trainer.pub"))
    production_context = CODEC.encode(
        ModelArtifact, seal(candidate(), load_private_key(keys / "trainer.key"))
    )
    with pytest.raises(ArtifactVerificationError, match="does not verify"):
        verify_candidate(production_context, Keyring(keys))


def test_a_signature_lifted_onto_another_body_fails(keys: Path) -> None:
    genuine = seal_candidate(candidate(), load_private_key(keys / "trainer.key"))
    claimed = candidate()
    claimed["lineage"]["ranges"] = [{"topic": "t", "partition": 0, "start": 0, "end": 10**9}]
    forged: Any = {**seal_candidate(claimed, None), "signature": genuine["signature"]}
    forged["key_id"] = genuine["key_id"]
    with pytest.raises(ArtifactVerificationError, match="does not verify"):
        verify_candidate(CODEC.encode(ModelArtifact, forged), Keyring(keys))


def test_every_flipped_byte_of_a_signed_candidate_is_refused(keys: Path) -> None:
    data = signed(keys, "trainer")
    accepted = 0
    for position in range(HEADER_SIZE, len(data)):
        for bit in (0x01, 0x80):
            mutated = bytearray(data)
            mutated[position] ^= bit
            try:
                verify_candidate(bytes(mutated), Keyring(keys))
            except (ArtifactVerificationError, DecodeError, InvalidEventError):
                continue
            accepted += 1
    assert accepted == 0


def test_a_key_rotated_in_is_trusted_without_a_restart(keys: Path, tmp_path: Path) -> None:
    now = [0.0]
    keyring = Keyring(keys, clock=lambda: now[0])
    generate_pair(tmp_path / "new", "trainer")
    rotated = load_private_key(tmp_path / "new" / "trainer.key")
    data = CODEC.encode(ModelArtifact, seal_candidate(candidate(), rotated))
    with pytest.raises(ArtifactVerificationError, match="unknown key"):
        verify_candidate(data, keyring)
    shutil.copy(tmp_path / "new" / "trainer.pub", keys / "trainer.2027-01.pub")
    with pytest.raises(ArtifactVerificationError, match="unknown key"):
        verify_candidate(data, keyring)  # read again at most once a second
    now[0] = 1.5
    assert verify_candidate(data, keyring).signed
    assert verify_candidate(signed(keys, "trainer"), keyring).signed  # the old one still
    (keys / "trainer.pub").unlink()
    (keys / "trainer.half-copied.pub").write_text("-----BEGIN PUBLIC")  # skipped, not fatal
    now[0] = 3.0
    with pytest.raises(ArtifactVerificationError, match="unknown key"):
        verify_candidate(signed(keys, "trainer"), keyring)  # retired
    assert verify_candidate(data, keyring).signed
