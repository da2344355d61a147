"""Running provision_factory_batch by Airflow (dag.test, in-process) on an emulated, bootstrapped account."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.dags.airflow_support import DAGS_DIR


@dataclass
class Pipeline:
    """What a test needs: the DAG, AWS clients on the emulator, settings, the CA key (to scan for it)."""

    dag: Any
    iot: Any
    s3: Any
    settings: Any
    ca_key_pem: str
    emulator: Any
    bootstrap: dict[str, Any]

    def run(self, manifest: Path, **conf: Any) -> tuple[Any, dict[str, Any]]:
        run = self.dag.test(run_conf={"manifest": str(manifest), **conf})
        return run, xcom(run.run_id, "summarize")


def xcom(run_id: str, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            sa.select(XComModel).where(
                XComModel.dag_id == "provision_factory_batch",
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).first()
        return XComModel.deserialize_value(row) if row is not None else None


def states(run: Any) -> dict[str, list[str]]:
    """Task id -> the states of its instances (the assertion message of a run that did not succeed)."""
    found: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        found.setdefault(ti.task_id, []).append(str(ti.state))
    return found


@pytest.fixture
def pipeline(
    fresh_emulator, aws_connection_env, airflow_db, inventory_url, tmp_path, monkeypatch
) -> Pipeline:
    from airflow.models import DagBag

    from include.settings import Settings
    from scripts.bootstrap import bootstrap
    from scripts.run_local import factory_ca_connection

    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIR", str(state))
    monkeypatch.setenv("PIPELINE_INVENTORY_URL", inventory_url)
    monkeypatch.setenv("PIPELINE_CHUNK_SIZE", "16")  # several mapped credential chunks on a small batch
    monkeypatch.setenv("PIPELINE_WORKERS", "1")
    monkeypatch.setenv("PIPELINE_REGISTRATION_POLL_SECONDS", "1")
    settings = Settings.from_env()
    report = bootstrap(
        endpoint_url=fresh_emulator.endpoint_url, local_state=state, settings=settings, region="us-east-1"
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_FACTORY_CA",
        factory_ca_connection(Path(report["ca_certificate"]), Path(report["ca_key"])),
    )
    if report.get("acm_pca_arn"):
        monkeypatch.setenv("PIPELINE_ACM_PCA_ARN", report["acm_pca_arn"])
        settings = Settings.from_env()
    bag = DagBag(dag_folder=str(DAGS_DIR / "provision_factory_batch.py"))
    assert not bag.import_errors
    return Pipeline(
        dag=bag.dags["provision_factory_batch"],
        iot=fresh_emulator.client("iot"),
        s3=fresh_emulator.client("s3"),
        settings=settings,
        ca_key_pem=Path(report["ca_key"]).read_text(),
        emulator=fresh_emulator,
        bootstrap=report,
    )


def inventory_rows(url: str) -> dict[str, list[dict]]:
    from include.inventory_schema import engine_for, metadata

    engine = engine_for(url)
    with engine.connect() as connection:
        return {
            name: [dict(row) for row in connection.execute(sa.select(table)).mappings()]
            for name, table in metadata.tables.items()
        }


def scan_for_secrets(texts: dict[str, bytes], ca_key_pem: str) -> list[str]:
    """Names of the texts that hold any private key (PEM marker) or the CA key's body."""
    key_body = "".join(ca_key_pem.strip().splitlines()[1:-1]).encode()
    needles = (b"PRIVATE KEY", key_body[:40], key_body[-40:])
    return [name for name, data in texts.items() if any(needle in data for needle in needles)]
