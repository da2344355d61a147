"""Lifecycle and drift tests: a provisioned batch on the emulator (domain stages, no Airflow), and the
Airflow fixtures of the DAG tests for the ones that run the real DAGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from include.certificate_authority import CertificateAuthority
from include.settings import Settings
from scripts.generate_manifest import write_manifest
from tests.dags.airflow_support import airflow_db, aws_connection_env, factory_ca_env  # noqa: F401
from tests.e2e.dag_runs import pipeline  # noqa: F401
from tests.include.flow import make_settings, prepare_account, run_flow


def small_manifest(directory: Path, devices: int, first_serial: int, gw_share: float = 0.25) -> Path:
    """A clean manifest (TH-100 and GW-200 rows with device CSRs) of fresh serial numbers."""
    path = directory / f"batch-{first_serial}.csv"
    with path.open("w", encoding="utf-8") as handle:
        write_manifest(handle, devices, 0, gw_share, seed=first_serial, first=first_serial)
    return path


@dataclass
class Provisioned:
    """A batch provisioned on the emulator by the pipeline's own stages, and what acting on it needs."""

    iot: Any
    s3: Any
    settings: Settings
    ca: CertificateAuthority
    summary: dict[str, Any]
    recipient_key: Path
    emulator: Any

    @property
    def batch_id(self) -> str:
        return str(self.summary["batch_id"])

    @property
    def ca_pems(self) -> tuple[str, str]:
        return self.ca.certificate_pem, self.ca.private_key_pem()


def provision(
    emulator: Any,
    tmp_path: Path,
    devices: int = 12,
    faults: dict[str, Any] | None = None,
    inventory_url: str | None = None,
    orphans: str = "clean",
) -> Provisioned:
    """`devices` devices (TH-100 and GW-200) provisioned in a fresh account, inventory on SQLite (or the
    given URL); the emulator's `faults` on while registering (cleared after); `orphans` the setting."""
    iot, s3 = emulator.client("iot"), emulator.client("s3")
    url = inventory_url or f"sqlite:///{tmp_path / 'inventory.db'}"
    settings, recipient_key = make_settings(tmp_path, url, chunk_size=5, workers=1, orphans=orphans)
    ca = CertificateAuthority.create_development()
    prepare_account(iot, s3, settings, ca)
    manifest = small_manifest(tmp_path, devices, 61_000_000)
    emulator.faults.update(faults or {})
    try:
        summary = run_flow(iot, s3, settings, ca, str(manifest), "manual__provision")
    finally:
        emulator.faults.reset()
    return Provisioned(iot, s3, settings, ca, summary, recipient_key, emulator)


@pytest.fixture
def inventory_url(tmp_path: Path) -> str:
    """The DAG runs here use SQLite only (test_actions runs the lifecycle store on PostgreSQL too)."""
    return f"sqlite:///{tmp_path / 'inventory.db'}"


@pytest.fixture
def provisioned(fresh_emulator: Any, tmp_path: Path) -> Provisioned:
    """12 devices (TH-100 and GW-200) provisioned in a fresh account, inventory on SQLite."""
    batch = provision(fresh_emulator, tmp_path)
    assert batch.summary["provisioned"] == 12, batch.summary
    return batch
