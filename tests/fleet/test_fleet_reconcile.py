"""reconcile_fleet_devices' domain work on SQLite and PostgreSQL: rows, outcomes, never a second record.

The devices here are made through the control plane as fleet provisioning leaves them (a thing of the
product's type stamped by its template, an AWS-issued certificate attached): fast, and every odd case is
easy to make. The official SDK over MQTT drives the same reconcile in test_fleet_dags.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from include.fleet_claim import prepare_claim, prepare_resources
from include.fleet_reconcile import inventory_run_id, reconcile_product
from include.inventory import Inventory
from include.inventory_schema import devices, engine_for, row_outcomes
from tests.e2e.dag_runs import inventory_rows
from tests.fleet.conftest import MODEL, TEMPLATE, Account

OUTCOMES = ("provisioned", "failed", "quarantined", "skipped")


@pytest.fixture
def prepared(inventoried_account: Account) -> Account:
    account = inventoried_account
    resources = prepare_resources(
        account.iot, account.s3, account.settings, MODEL, account.ca_certificate_pem
    )
    prepare_claim(account.iot, account.s3, account.settings, resources, account.authority(), run_id="prepare")
    return account


def fleet_device(
    account: Account, serial: str, *, certificates: int = 1, attributes: dict | None = None
) -> str:
    """A thing as the fleet template makes it, with `certificates` AWS-issued certificates attached."""
    name = f"{MODEL}-{serial}"
    stamped = {"serialNumber": serial, "model": MODEL, "provisioningTemplate": TEMPLATE}
    account.iot.create_thing(
        thingName=name,
        thingTypeName="SmartPlug",
        attributePayload={"attributes": attributes if attributes is not None else stamped},
    )
    for _ in range(certificates):
        created = account.iot.create_keys_and_certificate(setAsActive=True)
        account.iot.attach_thing_principal(thingName=name, principal=created["certificateArn"])
    return name


def reconcile(account: Account, run_id: str = "manual__1", iot: Any = None, **kwargs: Any) -> dict:
    return reconcile_product(
        iot or account.iot,
        account.s3,
        account.settings,
        MODEL,
        run_id=run_id,
        dag_id="reconcile_fleet_devices",
        **kwargs,
    )


def accounted(summary: dict) -> None:
    assert summary["accounted"], summary
    assert sum(summary[o] for o in OUTCOMES) + summary["planned"] == summary["rows"]
    assert summary["rows"] + summary["deferred"] == summary["found"]


def test_new_devices_are_recorded_once_and_a_second_run_changes_nothing(prepared: Account):
    names = [fleet_device(prepared, f"S{n}") for n in range(3)]
    prepared.iot.create_thing(thingName="someone-else", thingTypeName="SmartPlug")  # not the template's
    first = reconcile(prepared)
    accounted(first)
    assert (first["found"], first["rows"], first["provisioned"]) == (3, 3, 3)
    inventory = Inventory(prepared.settings.inventory_url)
    run = inventory_run_id("manual__1", MODEL)
    for name in names:
        device = inventory.device(name)
        assert device["status"] == "provisioned" and device["issuer"] == "aws" and device["run_id"] == run
        (principal,) = prepared.iot.list_thing_principals(thingName=name)["principals"]
        assert device["certificate_arn"] == principal and principal.endswith(device["certificate_id"])
        assert device["serial_number"] == name.rsplit("-", 1)[1] and device["batch_id"] == first["batch_id"]
    assert inventory.outcome_counts(run) == {"provisioned": 3}
    record = inventory.run(run)
    assert record["state"] == "finished" and record["product"] == MODEL and record["summary"]["accounted"]
    csv = prepared.s3.get_object(Bucket=prepared.settings.bucket, Key=first["files"]["devices"])[
        "Body"
    ].read()
    assert csv.decode().splitlines()[0].startswith("manifest_row,thing_name,serial_number")

    before = inventory_rows(prepared.settings.inventory_url)
    second = reconcile(prepared, run_id="scheduled__2")
    accounted(second)
    assert (second["rows"], second["provisioned"], second["skipped"]) == (3, 0, 3)
    assert second["skip_reasons"] == {"already_provisioned": 3} and second["files"] == {}
    assert inventory_rows(prepared.settings.inventory_url) == before  # not even a run record


def test_what_cannot_be_recorded_is_quarantined_or_failed_with_its_reason(prepared: Account):
    fleet_device(prepared, "OK")
    fleet_device(prepared, "BARE", certificates=0)
    fleet_device(prepared, "TWICE", certificates=2)
    fleet_device(prepared, "NOSERIAL", attributes={"provisioningTemplate": TEMPLATE})
    gone = fleet_device(prepared, "GONE", certificates=0)

    class ThingDeletedMeanwhile:
        """The registry as one caller sees it while the device GONE is deleted after the listing."""

        def __getattr__(self, name: str) -> Any:
            return getattr(prepared.iot, name)

        def get_paginator(self, name: str) -> Any:
            if name == "list_thing_principals":
                prepared.iot.delete_thing(thingName=gone)
            return prepared.iot.get_paginator(name)

    summary = reconcile(prepared, iot=ThingDeletedMeanwhile())
    accounted(summary)
    assert (summary["provisioned"], summary["quarantined"], summary["failed"]) == (1, 3, 1)
    assert summary["reasons"] == {"no_certificate": 1, "several_certificates": 1, "no_serial_number": 1}
    assert summary["errors"] == {"ResourceNotFoundException": 1}
    inventory = Inventory(prepared.settings.inventory_url)
    assert inventory.device(f"{MODEL}-BARE") is None and inventory.device(f"{MODEL}-OK") is not None
    run = inventory_run_id("manual__1", MODEL)
    reasons = {row["thing_name"]: row["reason"] for row in inventory.outcomes(run, "quarantined")}
    assert "2 certificates" in reasons[f"{MODEL}-TWICE"] and "no serialNumber" in reasons[f"{MODEL}-NOSERIAL"]


def test_at_most_max_devices_per_run_and_the_rest_next_time(prepared: Account):
    for n in range(3):
        fleet_device(prepared, f"M{n}")
    planned = reconcile(prepared, max_devices=2, dry_run=True)
    accounted(planned)
    assert (planned["planned"], planned["deferred"], planned["provisioned"]) == (2, 1, 0)
    assert Inventory(prepared.settings.inventory_url).count("devices") == 0  # a dry run writes nothing
    first = reconcile(prepared, max_devices=2)
    accounted(first)
    assert (first["provisioned"], first["deferred"]) == (2, 1)
    second = reconcile(prepared, run_id="manual__2", max_devices=2)
    accounted(second)
    assert (second["provisioned"], second["skipped"], second["deferred"]) == (1, 2, 0)


def test_a_retried_run_rewrites_its_own_rows_and_deleted_devices_come_back(prepared: Account):
    names = [fleet_device(prepared, f"R{n}") for n in range(2)]
    reconcile(prepared)
    again = reconcile(prepared)  # the same DAG run, retried: its rows are its own
    accounted(again)
    assert (again["provisioned"], again["skipped"]) == (2, 0)
    engine = engine_for(prepared.settings.inventory_url)
    with engine.begin() as connection:  # decommissioned in the inventory, then provisioned by claim again
        connection.execute(
            sa.update(devices).where(devices.c.thing_name == names[0]).values(status="deleted")
        )
    third = reconcile(prepared, run_id="manual__3")
    accounted(third)
    assert (third["provisioned"], third["skipped"]) == (1, 1)
    inventory = Inventory(prepared.settings.inventory_url)
    assert inventory.device(names[0])["run_id"] == inventory_run_id("manual__3", MODEL)
    assert inventory.device(names[1])["run_id"] == inventory_run_id("manual__1", MODEL)
    with engine.connect() as connection:
        per_run = connection.execute(
            sa.select(row_outcomes.c.run_id, sa.func.count()).group_by(row_outcomes.c.run_id)
        ).all()
    assert dict(per_run) == {inventory_run_id("manual__1", MODEL): 2, inventory_run_id("manual__3", MODEL): 1}


def test_a_device_another_run_holds_is_skipped_and_never_recorded_twice(prepared: Account):
    name = fleet_device(prepared, "H1")
    inventory = Inventory(prepared.settings.inventory_url)
    inventory.claim("batch-run", "b" * 64, [(name, 1, MODEL, "H1")])  # a batch run holds that thing name
    summary = reconcile(prepared)
    accounted(summary)
    assert (summary["skipped"], summary["skip_reasons"]) == (1, {"claimed_by_run": 1})
    assert inventory.device(name)["run_id"] == "batch-run"
