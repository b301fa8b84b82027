"""Commands against a broker that refuses them (SASL/SCRAM over TLS, test_security.py's
broker): a wrong password, an unknown user, a CA the client does not trust, plaintext
against the TLS listener, and a principal without ACLs each end in one line on stderr that
names the brokers, the cause and the setting to fix, exit code 3, within 10 s. The broker
being down or unreachable needs none: tests/unit/cli/test_broker_down.py."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from modelstream.cli.failures import EXIT_BROKER
from tests.integration.test_security import USERS, secure  # noqa: F401 - the broker fixture
from tests.support.helpers import cli, failure_line

BOUND_S = 10.0
COMMANDS = (("models", "list"), ("topics", "create"), ("status",), ("models", "train", "m"))


@pytest.fixture
def run_as(secure, tmp_path) -> Callable[..., Any]:  # type: ignore[no-untyped-def]  # noqa: F811
    """`modelstream ARGS` against the secured broker as ``user`` with ``password``, in a
    clean environment (no MODELSTREAM_* of the developer's or CI's), with ``env`` on top
    of the right settings (None: unset); returns the result and its time."""
    cluster, security = secure
    prefix = f"f{uuid.uuid4().hex[:6]}."
    drop = tuple(k for k in os.environ if k.startswith("MODELSTREAM_"))

    def run(*args: str, user: str = "admin", password: str | None = None, **env: str | None) -> Any:
        settings = {
            "MODELSTREAM_BOOTSTRAP_SERVERS": cluster.bootstrap,
            "MODELSTREAM_TOPIC_PREFIX": prefix,
            "MODELSTREAM_STATE_DIR": str(tmp_path / "state"),
            "MODELSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
            "MODELSTREAM_SASL_USERNAME": user,
            "MODELSTREAM_SASL_PASSWORD": USERS.get(user, "x") if password is None else password,
            "MODELSTREAM_SSL_CA_FILE": str(security.tls.ca),
            **env,
        }
        start = time.monotonic()
        result = cli(
            *args,
            timeout_s=60,
            drop=drop,
            **{k: v for k, v in settings.items() if v is not None},
        )
        return result, time.monotonic() - start

    run.bootstrap = cluster.bootstrap  # type: ignore[attr-defined]
    return run


def refused(run_as: Callable[..., Any], args: tuple[str, ...], **how: str | None) -> str:
    """The one line of a command the broker refused, checked for what every such line has."""
    result, elapsed_s = run_as(*args, **how)
    line = failure_line(result)
    assert result.returncode == EXIT_BROKER, line
    assert run_as.bootstrap in line  # type: ignore[attr-defined]
    assert elapsed_s < BOUND_S, (elapsed_s, line)
    return line


def test_the_right_credentials_work(run_as) -> None:  # type: ignore[no-untyped-def]
    """The settings the refusals below change one of are right as they stand."""
    result, _ = run_as("topics", "create")
    assert result.returncode == 0, result.stderr
    result, _ = run_as("models", "list")
    assert result.returncode == 0 and "no published models" in result.stdout, result.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_wrong_password(run_as, args) -> None:  # type: ignore[no-untyped-def]
    line = refused(run_as, args, password="not-the-password")
    assert "refused authentication" in line and "MODELSTREAM_SASL_PASSWORD" in line


def test_an_unknown_user(run_as) -> None:  # type: ignore[no-untyped-def]
    line = refused(run_as, ("models", "list"), user="mallory", password="whatever")
    assert "refused authentication" in line and "MODELSTREAM_SASL_USERNAME" in line


def test_a_ca_the_client_does_not_trust(run_as) -> None:  # type: ignore[no-untyped-def]
    # No MODELSTREAM_SSL_CA_FILE: the system's trust store, which never signed this broker.
    line = refused(run_as, ("status",), MODELSTREAM_SSL_CA_FILE=None)
    assert "certificate is not trusted" in line and "MODELSTREAM_SSL_CA_FILE" in line


def test_plaintext_against_the_tls_listener(run_as) -> None:  # type: ignore[no-untyped-def]
    line = refused(run_as, ("models", "list"), MODELSTREAM_SECURITY_PROTOCOL="PLAINTEXT")
    assert "closed the connection" in line and "MODELSTREAM_SECURITY_PROTOCOL" in line


def test_a_principal_without_acls(run_as) -> None:  # type: ignore[no-untyped-def]
    # This module's broker grants the predictor principal nothing: it may log in, not write.
    assert run_as("topics", "create")[0].returncode == 0
    line = refused(run_as, ("models", "train", "m"), user="predictor")
    assert "denied access" in line and "principal predictor" in line
