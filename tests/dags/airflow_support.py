"""Fixtures for running DAGs through Airflow in-process: a fresh metadata DB, connections, the pool."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = ROOT / "dags"


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[None]:
    """A migrated, empty metadata DB (in the session's temporary AIRFLOW_HOME) with the registration pool."""
    from airflow.models.pool import Pool
    from airflow.utils import db

    from plugins.iot_provisioning.connections import REGISTRATION_POOL

    db.resetdb()
    Pool.create_or_update_pool(
        REGISTRATION_POOL,
        slots=1,
        description="One AWS IoT registration task at a time",
        include_deferred=True,
    )
    yield


@pytest.fixture
def aws_connection_env(emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """aws_default pointing at the in-process emulator (sync hooks, async triggers alike)."""
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": emulator.endpoint_url, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return emulator.endpoint_url


def development_ca() -> tuple[str, str]:
    """A throw-away P-256 CA (certificate PEM, key PEM) for tests that only need the connection's shape."""
    import datetime as dt

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Factory CA")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def factory_ca_connection(certificate_pem: str, key_pem: str) -> str:
    """AIRFLOW_CONN_FACTORY_CA value: password = key PEM, extra.certificate_pem = certificate PEM."""
    return json.dumps(
        {"conn_type": "generic", "password": key_pem, "extra": {"certificate_pem": certificate_pem}}
    )


@pytest.fixture
def factory_ca_env(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    certificate_pem, key_pem = development_ca()
    monkeypatch.setenv("AIRFLOW_CONN_FACTORY_CA", factory_ca_connection(certificate_pem, key_pem))
    return certificate_pem, key_pem
