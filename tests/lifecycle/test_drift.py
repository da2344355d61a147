"""Drift between the inventory and the registry: found, reported, repaired into the inventory; and the
bounded pre-flight question (things that exist without an inventory record). By-hand changes are made
with the AWS CLI, as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from include.catalog import load_catalog
from include.drift_registry import things_unknown_to_inventory
from include.inventory import Inventory
from include.inventory_schema import devices
from tests.include.flow import run_flow
from tests.lifecycle.conftest import Provisioned, small_manifest
from tests.lifecycle.registry import act, audit, drift_rows, snapshot

AWS = str(Path(sys.executable).with_name("aws"))


def identities(devices: list[tuple[str, str, str]]) -> pa.Table:
    """(thing_name, model, serial_number) tuples as the table pre-flight hands the registry check."""
    columns = zip(*devices, strict=True)
    return pa.table(dict(zip(("thing_name", "model", "serial_number"), columns, strict=True)))


def aws_cli(*args: str) -> Any:
    done = subprocess.run([AWS, *args, "--output", "json"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout) if done.stdout.strip() else None


def records(settings: Any) -> dict[str, dict[str, Any]]:
    with Inventory(settings.inventory_url).engine.connect() as connection:
        return {r["thing_name"]: dict(r) for r in connection.execute(sa.select(devices)).mappings()}


def test_revoke_then_audit_finds_no_drift(provisioned: Provisioned) -> None:
    p = provisioned
    assert audit(p.iot, p.s3, p.settings, p.batch_id)["drift"] is False
    assert act(p.iot, p.s3, p.settings, "revoke", batch_id=p.batch_id)["done"] == 12
    for batch in (p.batch_id, None):
        summary = audit(p.iot, p.s3, p.settings, batch)
        assert (summary["drift"], summary["differences"], summary["devices"]) == (False, 0, 12), summary


def test_changes_by_hand_are_found_and_repaired_into_the_inventory(
    provisioned: Provisioned, aws_env: Any
) -> None:
    p = provisioned
    by_name = records(p.settings)
    gone, revoked = sorted(by_name)[:2]
    certificate = by_name[gone]["certificate_arn"]
    aws_cli("iot", "detach-thing-principal", "--thing-name", gone, "--principal", certificate)
    aws_cli("iot", "delete-thing", "--thing-name", gone)
    aws_cli(
        "iot",
        "update-certificate",
        "--certificate-id",
        by_name[revoked]["certificate_id"],
        "--new-status",
        "REVOKED",
    )

    found = audit(p.iot, p.s3, p.settings, p.batch_id)
    assert found["kinds"] == {"certificate_status": 1, "thing_missing": 1}
    rows = {r["kind"]: r for r in drift_rows(p.s3, found)}
    assert (
        rows["thing_missing"]["thing_name"] == gone
        and "still there (ACTIVE" in rows["thing_missing"]["detail"]
    )
    assert (rows["certificate_status"]["inventory"], rows["certificate_status"]["registry"]) == (
        "ACTIVE",
        "REVOKED",
    )
    assert records(p.settings) == by_name  # reporting changes nothing

    repaired = audit(p.iot, p.s3, p.settings, p.batch_id, repair=True)
    assert repaired["repaired"] == {"updated": 2, "adopted": 0}
    after = records(p.settings)
    assert after[gone]["status"] == "deleted" and after[gone]["lifecycle_action"] == "repair"
    assert (
        after[revoked]["certificate_status"] == "REVOKED"
        and "audit run" in after[revoked]["lifecycle_reason"]
    )

    # What the inventory cannot fix stays reported: the deleted thing's certificate is still in AWS IoT,
    # until manage_devices deletes it (the repaired record is not "deleted by us": it is inspected).
    left = audit(p.iot, p.s3, p.settings, p.batch_id)
    assert left["kinds"] == {"leftover": 1}
    assert act(p.iot, p.s3, p.settings, "delete", serials=[by_name[gone]["serial_number"]])["done"] == 1
    assert audit(p.iot, p.s3, p.settings, None)["drift"] is False


def test_policy_and_unknown_certificate_drift_is_reported_not_repaired(provisioned: Provisioned) -> None:
    p = provisioned
    record = next(r for r in records(p.settings).values() if r["model"] == "TH-100")
    p.iot.detach_policy(policyName="FactoryDevicePolicy", target=record["certificate_arn"])
    p.iot.attach_policy(policyName="FactoryTelemetryPolicy", target=record["certificate_arn"])
    stranger = p.iot.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    p.iot.attach_thing_principal(thingName=record["thing_name"], principal=stranger)

    summary = audit(p.iot, p.s3, p.settings, p.batch_id, repair=True)
    assert summary["kinds"] == {"policies_differ": 1, "unknown_certificate": 1}
    rows = {r["kind"]: r for r in drift_rows(p.s3, summary)}
    assert rows["policies_differ"]["detail"] == "missing FactoryDevicePolicy; extra FactoryTelemetryPolicy"
    assert summary["repaired"] == {"updated": 0, "adopted": 0}  # the registry is never changed by an audit
    assert (
        record["certificate_arn"] in p.iot.list_thing_principals(thingName=record["thing_name"])["principals"]
    )


def test_an_unknown_factory_ca_certificate_on_a_thing_is_one_difference(provisioned: Provisioned) -> None:
    """Found by the thing's check and by the CA's listing: reported once."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p = provisioned
    record = next(iter(records(p.settings).values()))
    certificate = p.ca.issue_device_certificate(
        ec.generate_private_key(ec.SECP256R1()).public_key(), record["thing_name"], "spare"
    )
    registered = p.iot.register_certificate(
        certificatePem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        caCertificatePem=p.ca.certificate_pem,
        status="ACTIVE",
    )
    p.iot.attach_thing_principal(thingName=record["thing_name"], principal=registered["certificateArn"])

    summary = audit(p.iot, p.s3, p.settings, None)
    assert summary["kinds"] == {"unknown_certificate": 1}
    (row,) = drift_rows(p.s3, summary)
    assert (row["certificate_id"], row["thing_name"]) == (registered["certificateId"], record["thing_name"])


def test_a_lost_inventory_is_rebuilt_from_the_registry_and_a_rerun_adds_no_certificate(
    provisioned: Provisioned, tmp_path: Path
) -> None:
    p = provisioned
    before = snapshot(p.iot)
    with Inventory(p.settings.inventory_url).engine.begin() as connection:
        connection.execute(sa.delete(devices))  # an inventory restored from before this batch

    summary = audit(p.iot, p.s3, p.settings, p.batch_id)
    assert summary["kinds"] == {"unknown_thing": 12} and summary["repairable"] == 12
    # Finding them cost a listing per product, not a call per device.
    assert summary["calls"]["list_things"] == 2 and "describe_thing" not in summary["calls"]

    repaired = audit(p.iot, p.s3, p.settings, p.batch_id, repair=True)
    assert repaired["repaired"] == {"updated": 0, "adopted": 12}
    adopted = records(p.settings)
    assert {r["status"] for r in adopted.values()} == {"provisioned"}
    assert {r["batch_id"] for r in adopted.values()} == {p.batch_id}
    assert audit(p.iot, p.s3, p.settings, None)["drift"] is False

    manifest = small_manifest(tmp_path, 12, 61_000_000)  # the same manifest again
    rerun = run_flow(p.iot, p.s3, p.settings, p.ca, str(manifest), "manual__rerun")
    assert (rerun["skipped"], rerun["provisioned"]) == (12, 0)
    assert snapshot(p.iot) == before  # no second certificate on any thing


def test_a_lost_inventory_thing_without_certificate_is_adopted_claimable_and_the_rerun_gives_it_one(
    provisioned: Provisioned, tmp_path: Path
) -> None:
    p = provisioned
    bare = sorted(records(p.settings))[0]
    (principal,) = p.iot.list_thing_principals(thingName=bare)["principals"]
    p.iot.detach_thing_principal(thingName=bare, principal=principal)
    with Inventory(p.settings.inventory_url).engine.begin() as connection:
        connection.execute(sa.delete(devices))

    repaired = audit(p.iot, p.s3, p.settings, p.batch_id, repair=True)
    assert repaired["repaired"] == {"updated": 0, "adopted": 12}
    adopted = records(p.settings)
    assert (adopted[bare]["status"], adopted[bare]["certificate_id"]) == ("failed", None)
    assert {r["status"] for name, r in adopted.items() if name != bare} == {"provisioned"}

    manifest = small_manifest(tmp_path, 12, 61_000_000)
    rerun = run_flow(p.iot, p.s3, p.settings, p.ca, str(manifest), "manual__rerun")
    assert (rerun["skipped"], rerun["provisioned"]) == (11, 1)
    principals = p.iot.list_thing_principals(thingName=bare)["principals"]
    assert len(principals) == 1 and principals[0] == records(p.settings)[bare]["certificate_arn"]


def test_things_unknown_to_the_inventory_are_found_with_bounded_listings(provisioned: Provisioned) -> None:
    p = provisioned
    inventory = Inventory(p.settings.inventory_url)
    catalog = load_catalog(p.settings.catalog_path)
    batch = [(r["thing_name"], r["model"], r["serial_number"]) for r in records(p.settings).values()]
    fresh = [(f"TH-100-TH0{n}", "TH-100", f"TH0{n}") for n in range(77_000_000, 77_000_400)]

    known = things_unknown_to_inventory(p.iot, inventory, identities(batch + fresh), catalog)
    assert (known.found, known.checked) == ({}, 400)  # the batch's own devices are not even asked about
    assert known.calls == 1  # one listing page answers 400 new names

    with inventory.engine.begin() as connection:
        connection.execute(sa.delete(devices))
    unknown = things_unknown_to_inventory(p.iot, inventory, identities(batch + fresh), catalog)
    assert sorted(unknown.found) == sorted(name for name, _, _ in batch)
    assert unknown.calls == 2 and unknown.listed_groups == 2 and unknown.described == 0  # a page per type

    # Many other things of the type share the batch's serial prefix: the listing stops at its budget (a
    # page for these 4 names) and the names are asked one by one: 1 + 4 calls, never more than 1.25 each.
    for n in range(260):
        p.iot.create_thing(
            thingName=f"other-{n}",
            thingTypeName="Gateway",
            attributePayload={"attributes": {"serialNumber": f"GW06100000{n}"}},
        )
    gateways = [d for d in batch if d[1] == "GW-200"]
    bounded = things_unknown_to_inventory(p.iot, inventory, identities(gateways), catalog)
    assert sorted(bounded.found) == sorted(name for name, _, _ in gateways)
    assert (bounded.calls, bounded.described, bounded.listed_groups) == (1 + len(gateways), len(gateways), 0)
