"""TLS material, SASL/SCRAM principals and per-service ACLs for a secured broker.

Each service authenticates as its own principal and gets only what it needs, e.g. the
predictor reads ``requests``, ``models``, ``model-history`` and ``control`` and writes
``predictions``, ``shadow-predictions``, ``replies``, ``deadletter``, ``audit`` and
``monitor-scored`` (what the monitor learns from) - never ``models``; the monitor reads
``feedback`` and its own ``monitor-*`` topics, not ``requests`` or ``predictions``.

The gateway's calls: the gateway writes ``requests`` and reads ``replies`` (and ``models``,
for signatures); only the predictor writes ``replies``, so an answer comes from a
predictor. Whoever may read ``requests`` (the predictor, any application granted it) or
``monitor-scored`` (the monitor) sees every request id, the gateway's included; ids are
unguessable to everyone else, and a reply naming an id the gateway did not issue is
dropped. Applications that produce requests themselves get WRITE on ``requests`` and READ
on ``predictions`` from the operator; no service principal is shared with them.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelstream.errors import BrokerError
from modelstream.kafka.topology import (
    AUDIT,
    CANDIDATES,
    CONTROL,
    DEADLETTER,
    FEEDBACK,
    MODEL_HISTORY,
    MODELS,
    MONITOR_SCORED,
    PREDICTIONS,
    PREDICTOR_IN_FLIGHT,
    REPLIES,
    REQUESTS,
    SHADOW_PREDICTIONS,
    TRAINING,
    VALIDATIONS,
)


@dataclass(frozen=True)
class ServiceAccess:
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    transactional: bool = False
    # topics the service keeps for itself (and faust creates), named <prefix><service>-...
    internal_topics: bool = False
    # other services' consumer groups it may describe (who is consuming)
    describes_groups: tuple[str, ...] = ()
    # topics it creates when they are missing (besides its internal ones)
    creates: tuple[str, ...] = ()


# What each service's principal may do; groups and transactional ids are prefixed by the
# deployment's topic prefix and the service name.
SERVICE_ACCESS: Mapping[str, ServiceAccess] = {
    "trainer": ServiceAccess(
        (TRAINING, CONTROL, CANDIDATES, MODEL_HISTORY, MODELS),
        (CANDIDATES, CONTROL, AUDIT, DEADLETTER),
        transactional=True,
    ),
    "validator": ServiceAccess(
        (CANDIDATES, CONTROL, TRAINING, MODELS),
        (VALIDATIONS, AUDIT, DEADLETTER),
        transactional=True,
    ),
    "publisher": ServiceAccess(
        (VALIDATIONS, CONTROL, MODEL_HISTORY, MODELS),
        (MODEL_HISTORY, MODELS, AUDIT, DEADLETTER),
        transactional=True,
    ),
    "predictor": ServiceAccess(
        (REQUESTS, MODELS, MODEL_HISTORY, CONTROL, PREDICTOR_IN_FLIGHT),
        (
            PREDICTIONS,
            SHADOW_PREDICTIONS,
            REPLIES,
            DEADLETTER,
            AUDIT,
            PREDICTOR_IN_FLIGHT,
            MONITOR_SCORED,
        ),
        transactional=True,
        creates=(MONITOR_SCORED,),  # the monitor's input, which the predictor writes first
    ),
    "monitor": ServiceAccess(
        (FEEDBACK, MODELS, CONTROL),  # not requests nor predictions: monitor-scored has the rows
        (CANDIDATES, CONTROL, AUDIT, DEADLETTER, TRAINING),
        transactional=True,  # the join and the learner
        internal_topics=True,  # its changelogs and internal topics (monitor-scored), and faust's
    ),
    "gateway": ServiceAccess(
        (REPLIES, MODELS),
        (REQUESTS,),
        describes_groups=("predictor",),  # ready: a predictor consumes `requests`
    ),
}


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # PEM certificate of the CA (clients' and brokers' trust store)
    broker: Path  # PEM private key + certificate chain (the brokers' key store)


def generate_tls(directory: Path, days: int = 7) -> TlsFiles:
    """A throwaway CA and a broker certificate for 127.0.0.1 / localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelstream test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = TlsFiles(directory / "ca.pem", directory / "broker.pem")
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.broker.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem)
        + ca_cert.public_bytes(pem)
    )
    files.broker.chmod(0o600)
    return files


@dataclass(frozen=True)
class BrokerSecurity:
    """A SASL_SSL client listener with SCRAM-SHA-512 users and StandardAuthorizer ACLs."""

    tls: TlsFiles
    users: Mapping[str, str] = field(default_factory=dict)  # principal -> password
    admin: str = "admin"

    @property
    def admin_password(self) -> str:
        return self.users[self.admin]


def grant_service(
    java: str,
    jars: Path,
    bootstrap: str,
    security: BrokerSecurity,
    service: str,
    principal: str,
    prefix: str,
    work_dir: Path,
) -> None:
    """Give ``principal`` exactly the ACLs ``service`` needs under topic prefix ``prefix``."""
    access = SERVICE_ACCESS[service]
    config = work_dir / "admin-client.properties"
    config.write_text(
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{security.admin}" password="{security.admin_password}";\n'
        f"ssl.truststore.type=PEM\nssl.truststore.location={security.tls.ca}\n"
    )
    base = [
        java,
        "-cp",
        f"{jars}/*",
        "org.apache.kafka.tools.AclCommand",
        "--bootstrap-server",
        bootstrap,
        "--command-config",
        str(config),
        "--add",
        "--allow-principal",
        f"User:{principal}",
    ]
    commands = [
        [
            *base,
            "--operation",
            "Read",
            "--operation",
            "Describe",
            *[a for t in access.reads for a in ("--topic", prefix + t)],
        ],
        [
            *base,
            "--operation",
            "Write",
            "--operation",
            "Describe",
            *[a for t in access.writes for a in ("--topic", prefix + t)],
        ],
        [
            *base,
            "--operation",
            "Read",
            "--group",
            f"{prefix}{service}",
            "--resource-pattern-type",
            "prefixed",
        ],
    ]
    if access.creates:
        commands.append(
            [
                *base,
                "--operation",
                "Create",
                *[a for t in access.creates for a in ("--topic", prefix + t)],
            ]
        )
    for group in access.describes_groups:
        commands.append([*base, "--operation", "Describe", "--group", f"{prefix}{group}"])
    if access.transactional:
        commands.append(
            [
                *base,
                "--operation",
                "Write",
                "--operation",
                "Describe",
                "--transactional-id",
                f"{prefix}{service}",
                "--resource-pattern-type",
                "prefixed",
            ]
        )
    if access.internal_topics:
        commands.append(
            [
                *base,
                *[
                    a
                    for op in ("Create", "Read", "Write", "Describe", "DescribeConfigs")
                    for a in ("--operation", op)
                ],
                "--topic",
                f"{prefix}{service}-",
                "--resource-pattern-type",
                "prefixed",
            ]
        )
    for cmd in commands:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise BrokerError(f"granting {service} ACLs failed:\n{result.stdout}{result.stderr}")
