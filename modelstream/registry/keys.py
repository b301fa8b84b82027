"""Which keys a process signs with and trusts, from its settings.

One directory holds them by name (``modelstream keys generate`` writes them all there;
``Settings.key_directory`` says where): ``modelstream.key``/``.pub`` of the publisher and
``<maker>.key``/``.pub`` of each maker of candidates. A deployment hands each service only
the private key it signs with and the public keys it verifies against.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelstream.registry.artifact import MAKERS, Keyring, key_id, load_private_key
from modelstream.settings import Settings

log = logging.getLogger(__name__)


def maker_key(settings: Settings, maker: str, quiet: bool = False) -> Ed25519PrivateKey | None:
    """The private key ``maker`` signs its candidates with: MODELSTREAM_CANDIDATE_KEY_FILE,
    else ``<keys dir>/<maker>.key``, else none (its candidates go unsigned, and a validator
    refuses them unless it allows unsigned ones)."""
    assert maker in MAKERS, maker
    path = settings.candidate_key_file
    if path is None:
        default = settings.key_directory / f"{maker}.key"
        path = default if default.exists() else None
    if path is None:
        if not quiet:
            log.warning(unsigned_warning(settings, maker))
        return None
    key = load_private_key(path)
    if not quiet:
        log.info("%s candidates signed by key %s (%s)", maker, key_id(key.public_key()), path)
    return key


def unsigned_warning(settings: Settings, maker: str) -> str:
    return (
        f"no {maker} key ({settings.key_directory / (maker + '.key')}, or "
        "MODELSTREAM_CANDIDATE_KEY_FILE): candidates go unsigned, and a validator refuses "
        "them unless MODELSTREAM_ALLOW_UNSIGNED is set (`modelstream keys generate` makes keys)"
    )


def maker_keyring(settings: Settings) -> Keyring:
    """The makers' public keys in the keys directory."""
    keyring = Keyring(settings.key_directory)
    if not len(keyring) and not settings.allow_unsigned:
        log.warning(
            "no makers' public keys in %s: every candidate will be refused "
            "(`modelstream keys generate`, or MODELSTREAM_KEYS_DIR)",
            settings.key_directory,
        )
    return keyring
