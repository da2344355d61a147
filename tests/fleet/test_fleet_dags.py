"""prepare_fleet_claim and reconcile_fleet_devices run BY AIRFLOW (dag.test, in-process) on the emulator.

A claim product is prepared; devices of the official SDK (awsiotsdk) provision themselves over the
emulator's MQTT endpoint (mutual TLS, MQTT 3.1.1 and 5, CreateKeysAndCertificate and
CreateCertificateFromCsr) with the claim taken from the factory line's bundle; reconcile records them;
a second reconcile changes nothing. No private key reaches XCom, a task log, the inventory or S3 in clear.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.dags.airflow_support import DAGS_DIR
from tests.e2e.dag_runs import inventory_rows, states
from tests.fleet.conftest import MODEL, TEMPLATE, Account, endpoint_of
from tests.iot_emulator.fleet_devices import Credentials, provision

pytestmark = pytest.mark.airflow
DEVICES = 4


def xcom(dag_id: str, run_id: str, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            sa.select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).first()
        return XComModel.deserialize_value(row) if row is not None else None


@pytest.fixture
def dags(inventoried_account: Account, aws_connection_env, airflow_db, monkeypatch) -> dict[str, Any]:
    from airflow.models import DagBag

    from tests.dags.airflow_support import factory_ca_connection

    account = inventoried_account
    monkeypatch.setenv(
        "AIRFLOW_CONN_FACTORY_CA", factory_ca_connection(account.ca_certificate_pem, account.ca_key_pem)
    )
    found = {}
    for dag_id in ("prepare_fleet_claim", "reconcile_fleet_devices"):
        bag = DagBag(dag_folder=str(DAGS_DIR / f"{dag_id}.py"))
        assert not bag.import_errors, bag.import_errors
        found[dag_id] = bag.dags[dag_id]
    return found


def run(dags: dict[str, Any], dag_id: str, task_id: str, **conf: Any) -> dict[str, Any]:
    dag_run = dags[dag_id].test(run_conf=conf)
    assert dag_run.state == "success", states(dag_run)
    return xcom(dag_id, dag_run.run_id, task_id)


async def _provision_all(account: Account, claim: Credentials) -> list[Any]:
    endpoint = endpoint_of(account.emulator)
    return await asyncio.gather(
        *(
            provision(
                endpoint,
                claim,
                client_id=f"plug-{n}",
                template_name=TEMPLATE,
                parameters={"SerialNumber": f"FCP{n:05d}", "FirmwareVersion": "1.4.2"},
                mqtt5_protocol=n % 2 == 1,
                flow="keys" if n < DEVICES // 2 else "csr",
            )
            for n in range(DEVICES)
        )
    )


def test_prepare_then_devices_provision_themselves_then_reconcile_records_them(
    dags, inventoried_account: Account, capfd, caplog
):
    account = inventoried_account
    prepared = run(dags, "prepare_fleet_claim", "prepare_claim", product=MODEL)
    assert prepared["claim"] == "issued" and prepared["template"] == "created"
    assert prepared["template_name"] == TEMPLATE and prepared["device_endpoint"] == "localhost"
    assert prepared["bundle_key"].endswith(f"/claims/{prepared['claim_certificate_id']}/claim.tar.p7m")

    record = account.open_claim(prepared["bundle_key"])
    claim = Credentials(record["certificate_pem"], record["private_key_pem"])
    devices = asyncio.run(_provision_all(account, claim))
    assert all(d.reconnected for d in devices)  # each device connected again with its own certificate
    assert {d.thing_name for d in devices} == {f"{MODEL}-FCP{n:05d}" for n in range(DEVICES)}
    assert {d.device_configuration["telemetryTopicPrefix"] for d in devices} == {"devices/"}

    summary = run(dags, "reconcile_fleet_devices", "summarize")
    assert summary["accounted"] and (summary["rows"], summary["provisioned"]) == (DEVICES, DEVICES)
    product = summary["products"][MODEL]
    assert product["found"] == DEVICES and product["files"]["devices"].endswith("/devices.csv")
    inventory = inventory_rows(account.settings.inventory_url)
    recorded = {d["thing_name"]: d for d in inventory["devices"]}
    for device in devices:
        row = recorded[device.thing_name]
        assert (row["status"], row["issuer"], row["certificate_id"]) == (
            "provisioned",
            "aws",
            device.certificate_id,
        )
        assert row["certificate_arn"].endswith(device.certificate_id) and row["thing_arn"].endswith(
            device.thing_name
        )
    outcomes = [o for o in inventory["row_outcomes"] if o["run_id"] == product["run_id"]]
    assert sorted(o["outcome"] for o in outcomes) == ["provisioned"] * DEVICES
    assert {o["certificate_id"] for o in outcomes} == {d.certificate_id for d in devices}

    again = run(dags, "reconcile_fleet_devices", "summarize", product=MODEL)
    assert again["accounted"] and (again["provisioned"], again["skipped"]) == (0, DEVICES)
    assert inventory_rows(account.settings.inventory_url) == inventory  # nothing changed

    kept = run(dags, "prepare_fleet_claim", "prepare_claim", product=MODEL)
    assert kept["claim"] == "kept" and kept["claim_certificate_id"] == prepared["claim_certificate_id"]
    assert kept["template"] == "unchanged"

    # No private key anywhere but inside the sealed bundle: logs, XComs, inventory, every S3 object.
    captured = capfd.readouterr()
    texts: dict[str, bytes] = {"task logs": (captured.out + captured.err + caplog.text).encode()}
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for row in session.scalars(sa.select(XComModel)):
            texts[f"xcom {row.dag_id}/{row.task_id}"] = json.dumps(row.value, default=str).encode()
    texts["inventory"] = json.dumps(inventory_rows(account.settings.inventory_url), default=str).encode()
    for page in account.s3.get_paginator("list_objects_v2").paginate(Bucket=account.settings.bucket):
        for item in page.get("Contents", []):
            texts[item["Key"]] = account.s3.get_object(Bucket=account.settings.bucket, Key=item["Key"])[
                "Body"
            ].read()
    assert any(key.endswith("claim.tar.p7m") for key in texts)
    claim_key = "".join(record["private_key_pem"].strip().splitlines()[1:-1]).encode()
    ca_key = "".join(account.ca_key_pem.strip().splitlines()[1:-1]).encode()
    needles = (b"PRIVATE KEY", claim_key[:40], claim_key[-40:], ca_key[:40], ca_key[-40:])
    assert [name for name, data in texts.items() if any(n in data for n in needles)] == []


def test_a_dry_run_prepares_nothing(dags, inventoried_account: Account):
    planned = run(dags, "prepare_fleet_claim", "prepare_claim", product=MODEL, dry_run=True)
    assert planned["dry_run"] and planned["claim"] == "would issue" and len(planned["would"]) == 3
    templates = inventoried_account.iot.list_provisioning_templates()["templates"]
    assert TEMPLATE not in {t["templateName"] for t in templates}


def test_the_dags_follow_the_projects_conventions():
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert not bag.import_errors, bag.import_errors
    found = {dag_id: bag.dags[dag_id] for dag_id in ("prepare_fleet_claim", "reconcile_fleet_devices")}
    for dag in found.values():
        assert dag.catchup is False and "iot" in dag.tags and "fleet" in dag.tags
        assert dag.doc_md.lstrip().startswith("#") and dag.max_active_runs == 1
        assert dag.default_args["retries"] >= 1 and dag.default_args["retry_delay"] <= timedelta(minutes=1)
        assert dag.default_args["execution_timeout"] > timedelta(0)
        for name in dag.params:
            param = dag.params.get_param(name)
            assert param.schema.get("title") and param.description and param.schema.get("section")
    assert found["reconcile_fleet_devices"].timetable.expression in ("@hourly", "0 * * * *")
    assert found["prepare_fleet_claim"].params.get_param("product").schema["enum"] == [MODEL]
    reconcile = found["reconcile_fleet_devices"].get_task("reconcile_product")
    assert reconcile.partial_kwargs.get("map_index_template")
    assert found["reconcile_fleet_devices"].params.get_param("product").schema["enum"] == [None, MODEL]
