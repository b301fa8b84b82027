"""What a failed command prints: one line on stderr that says what failed, where, and what
to do about it; the traceback only with ``--debug`` (or ``MODELSTREAM_DEBUG=1``).

Every exception a command lets out ends here, so no command catches its own: a broker that
is down, unreachable or refuses these credentials names the bootstrap servers and the
setting to fix; an expected error (:class:`ModelstreamError`) is its message; anything else
is a bug, said in one line with the way to its traceback.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import ssl
from dataclasses import dataclass

from aiokafka import errors as kafka

from modelstream.errors import BrokerError, ModelstreamError
from modelstream.settings import Settings

# Exit codes: 1 a bug or a file that cannot be read or written, 2 a bad argument, setting
# or input (as click's usage errors), 3 the brokers are unreachable or refuse us (as
# `broker status` says of a broker that is not running).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3

AUTHENTICATION = (
    kafka.SaslAuthenticationFailed,
    kafka.IllegalSaslStateError,
    kafka.UnsupportedSaslMechanismError,
)
AUTHORIZATION = (
    kafka.TopicAuthorizationFailedError,
    kafka.GroupAuthorizationFailedError,
    kafka.ClusterAuthorizationFailedError,
    kafka.TransactionalIdAuthorizationFailed,
)
TIMEOUTS = (TimeoutError, kafka.KafkaTimeoutError, kafka.RequestTimedOutError)
NETWORK_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EADDRNOTAVAIL}


@dataclass(frozen=True)
class Failure:
    line: str
    exit_code: int


def explain(exc: BaseException, settings: Settings | None) -> Failure:
    """The one line and exit code for what ended a command. ``settings`` are the ones the
    command used (None when it failed before it had any)."""
    if isinstance(exc, BrokerError):  # the embedded broker does not start or answer
        return Failure(_one_line(f"modelstream: error: {exc}"), EXIT_BROKER)
    if isinstance(exc, ModelstreamError):
        return Failure(_one_line(f"modelstream: error: {exc}"), EXIT_USAGE)
    about_kafka = _about_kafka(exc, settings)
    if about_kafka is not None:
        return Failure(_one_line(f"modelstream: error: {about_kafka}"), EXIT_BROKER)
    if isinstance(exc, OSError):  # a file the command reads or writes
        return Failure(_one_line(f"modelstream: error: {exc}"), EXIT_FAILED)
    return Failure(
        _one_line(
            f"modelstream: error: unexpected {type(exc).__name__}: {exc} "
            "(a bug: run with --debug for the traceback)"
        ),
        EXIT_FAILED,
    )


def _about_kafka(exc: BaseException, settings: Settings | None) -> str | None:
    """Cause and fix of a failure to reach or use the brokers; None for anything else."""
    where = settings.bootstrap if settings is not None else "the bootstrap servers"
    cannot = f"cannot reach Kafka at {where}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS with Kafka at {where} failed: its certificate is not trusted "
            f"({exc.verify_message or exc.reason}); set MODELSTREAM_SSL_CA_FILE to the CA that "
            "signed the brokers' certificates"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS with Kafka at {where} failed: {exc.reason or exc}; check "
            "MODELSTREAM_SECURITY_PROTOCOL (SSL or SASL_SSL only for a TLS listener) and "
            "MODELSTREAM_SSL_CA_FILE"
        )
    if isinstance(exc, AUTHENTICATION):
        return (
            f"Kafka at {where} refused authentication: {exc}; check "
            "MODELSTREAM_SASL_USERNAME, MODELSTREAM_SASL_PASSWORD and MODELSTREAM_SASL_MECHANISM"
        )
    if isinstance(exc, AUTHORIZATION):
        principal = settings.sasl_username if settings is not None else None
        return (
            f"Kafka at {where} denied access: {exc}; grant the principal "
            f"{principal or '(anonymous)'} its ACLs, or set MODELSTREAM_SASL_USERNAME to one "
            "that has them"
        )
    if isinstance(exc, socket.gaierror):
        return (
            f"{cannot}: host name not found ({exc.strerror}); set "
            "MODELSTREAM_BOOTSTRAP_SERVERS (or --bootstrap-servers) to your brokers' host:port"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"{cannot}: connection refused; {_start_it(settings)}"
    if isinstance(exc, TIMEOUTS):
        return (
            f"Kafka at {where} timed out: {_detail(exc) or 'no answer'}; check that it runs "
            "and that no firewall drops the port (MODELSTREAM_CONNECT_TIMEOUT_S waits longer)"
        )
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError) or (
        isinstance(exc, kafka.KafkaConnectionError) and str(exc).endswith("closed")
    ):
        return f"{cannot}: the broker closed the connection; {_check_listener(settings)}"
    if isinstance(exc, kafka.KafkaConnectionError | ConnectionError) or (
        isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS
    ):
        unable = str(exc).startswith(f"{type(exc).__name__}: Unable to bootstrap")
        cause = "no bootstrap server answered" if unable else _detail(exc)
        return f"{cannot}: {cause}; {_start_it(settings)}"
    if isinstance(exc, kafka.UnknownTopicOrPartitionError):
        return f"Kafka at {where}: {exc}; create the topics with 'modelstream topics create'"
    if isinstance(exc, kafka.KafkaError):
        return f"Kafka at {where}: {exc} (run with --debug for the traceback)"
    return None


def _start_it(settings: Settings | None) -> str:
    if settings is not None and settings.embedded:
        return "start it with 'modelstream broker start' (or set MODELSTREAM_BOOTSTRAP_SERVERS)"
    return (
        "check that it runs, or set MODELSTREAM_BOOTSTRAP_SERVERS (or --bootstrap-servers) "
        "to brokers that do"
    )


def _check_listener(settings: Settings | None) -> str:
    """What to check when a broker hangs up during the handshake: the protocol (a TLS
    listener hangs up on plaintext), or a SASL listener's credentials."""
    protocol = settings.security_protocol if settings is not None else "PLAINTEXT"
    advice = (
        f"check MODELSTREAM_SECURITY_PROTOCOL ({protocol} here: a TLS listener needs SSL or "
        "SASL_SSL, a SASL one SASL_PLAINTEXT or SASL_SSL)"
    )
    if protocol.startswith("SASL"):
        advice += " and MODELSTREAM_SASL_USERNAME, MODELSTREAM_SASL_PASSWORD, _SASL_MECHANISM"
    return advice


def _detail(exc: BaseException) -> str:
    """An exception's message without the class name aiokafka puts in front of it."""
    text = str(exc)
    return text.removeprefix(f"{type(exc).__name__}: ") if text else ""


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def silence_clients() -> None:
    """The Kafka clients log what a command's one line already says, and more on their way
    out after a failure (aiokafka's "Unable connect to", "Unexpected error in sender
    routine"; asyncio's "Unclosed AIOKafkaConsumer"). Commands silence them; ``--debug``
    keeps them. Never for `modelstream run`: a service's log is its output."""
    for name in ("aiokafka", "asyncio"):
        # a level, not ``disabled``: that holds for the logger itself, not its children
        # (aiokafka logs as aiokafka.producer.sender and the like)
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
