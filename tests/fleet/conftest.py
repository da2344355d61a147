"""Fleet provisioning by claim: an emulated, bootstrapped account (with its MQTT endpoint) and the DAGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dags.airflow_support import airflow_db, aws_connection_env  # noqa: F401

MODEL = "FC-600"
TEMPLATE = "fleet-FC-600"


@dataclass
class Account:
    """A bootstrapped account on the in-process emulator: clients, settings, the CA and the line's keys."""

    emulator: Any
    iot: Any
    s3: Any
    settings: Any
    state: Path
    ca_certificate_pem: str
    ca_key_pem: str

    @property
    def line_key(self) -> bytes:
        return (self.state / "factory-line" / "recipient.key.pem").read_bytes()

    @property
    def line_certificate(self) -> bytes:
        return (self.state / "factory-line" / "recipient.cert.pem").read_bytes()

    def authority(self) -> Any:
        from include.certificate_authority import CertificateAuthority

        return CertificateAuthority.from_pem(self.ca_certificate_pem, self.ca_key_pem)

    def open_claim(self, bundle_key: str) -> dict[str, Any]:
        """The claim's one record (certificate and key) from its bundle, as the factory line opens it."""
        from include.key_bundle import open_bundle

        bundle = self.s3.get_object(Bucket=self.settings.bucket, Key=bundle_key)["Body"].read()
        (record,) = open_bundle(bundle, self.line_key, self.line_certificate)
        return record


@pytest.fixture
def account(fresh_emulator, tmp_path, monkeypatch) -> Account:
    """The account, its inventory a SQLite file (`inventoried_account`: SQLite and PostgreSQL)."""
    from include.settings import Settings
    from scripts.bootstrap import bootstrap

    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIR", str(state))
    monkeypatch.setenv("PIPELINE_INVENTORY_URL", f"sqlite:///{state / 'inventory.db'}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = Settings.from_env()
    report = bootstrap(
        endpoint_url=fresh_emulator.endpoint_url, local_state=state, settings=settings, region="us-east-1"
    )
    return Account(
        emulator=fresh_emulator,
        iot=fresh_emulator.client("iot"),
        s3=fresh_emulator.client("s3"),
        settings=settings,
        state=state,
        ca_certificate_pem=Path(report["ca_certificate"]).read_text(),
        ca_key_pem=Path(report["ca_key"]).read_text(),
    )


@pytest.fixture
def inventoried_account(account: Account, inventory_url: str, monkeypatch) -> Account:
    """The account on each inventory store (SQLite and PostgreSQL)."""
    import dataclasses

    monkeypatch.setenv("PIPELINE_INVENTORY_URL", inventory_url)
    return dataclasses.replace(
        account, settings=dataclasses.replace(account.settings, inventory_url=inventory_url)
    )


def endpoint_of(emulator: Any) -> Any:
    """Where the SDK devices connect: DescribeEndpoint's host, the MQTT port, the emulator's root CA."""
    from tests.iot_emulator.fleet_devices import Endpoint

    return Endpoint("localhost", emulator.mqtt_port, Path(emulator.mqtt_root_ca).read_bytes())
