"""Exception types shared by every service.

Each carries a short machine-readable ``reason`` that ends up in the dead-letter
``reason`` header, so a user can group failures without parsing prose.
"""

from __future__ import annotations


class ModelstreamError(Exception):
    """Base class of every error modelstream raises on purpose."""

    reason: str = "error"


class ConfigurationError(ModelstreamError):
    """A setting is missing or invalid."""

    reason = "configuration"


class DecodeError(ModelstreamError):
    """Bytes on a topic are neither valid Avro single-object nor a valid JSON object (or are
    none at all, or too many): ``reason`` says which."""

    reason = "undecodable"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class SchemaMismatchError(DecodeError):
    """The payload was written with a schema this reader does not know or cannot resolve."""

    reason = "unknown-schema"


class InvalidEventError(ModelstreamError):
    """A decoded event breaks the contract (unknown model, wrong features, NaN, bad label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ArtifactVerificationError(ModelstreamError):
    """An artifact's digest or signature does not verify; it must never be served."""

    reason = "artifact-verification"


class BrokerError(ModelstreamError):
    """The embedded broker could not be fetched, started, reached or stopped."""

    reason = "broker"
