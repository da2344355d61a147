"""The domain stages end to end against the emulator over HTTP: nothing lost, idempotent, no key leaks."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from include import pipeline
from include.certificate_authority import CertificateAuthority
from include.errors import PreflightError
from include.inventory import Inventory
from include.key_bundle import open_bundle
from include.records import Registration
from tests.include.flow import SAMPLE, make_settings, prepare_account, run_flow

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_development()


def _all_objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {
        o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for page in pages
        for o in page.get("Contents", [])
    }


def _dump_inventory(url: str) -> str:
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        text = "\n".join(repr(list(connection.execute(sa.select(table)))) for table in metadata.sorted_tables)
    engine.dispose()
    return text


def test_sample_manifest_twice(fresh_emulator, iot_client, s3_client, tmp_path, inventory_url, ca):
    settings, line_key = make_settings(tmp_path, inventory_url)
    prepare_account(iot_client, s3_client, settings, ca)

    first = run_flow(iot_client, s3_client, settings, ca, str(SAMPLE), "manual__first")
    assert first["accounted"]
    assert first["rows"] == 1000
    assert first["quarantined"] == 16 and len(first["reasons"]) == 16
    assert first["provisioned"] == 984 and first["failed"] == 0 and first["skipped"] == 0
    assert [r.unit for r in first["_reconciled"]] == ["GW-200.1", "TH-100.1"]
    assert all(r.offset_mismatches == 0 for r in first["_reconciled"])  # report offsets = ledger offsets
    assert sum(first[o] for o in ("provisioned", "failed", "quarantined", "skipped")) == first["rows"]
    things = iot_client.get_paginator("list_things").paginate().build_full_result()["things"]
    assert len(things) == 984
    certificates = (
        iot_client.get_paginator("list_certificates").paginate().build_full_result()["certificates"]
    )
    assert len(certificates) == 984

    # Ledger both ways: a row's certificate id in the inventory is the one AWS holds for its thing.
    batch, checks = first["_batch"], first["_checks"]
    objects = _all_objects(s3_client, settings.bucket, batch.files.batch_prefix)
    ledger = pa.concat_tables(
        pq.read_table(pa.BufferReader(objects[batch.files.chunk_ledger(c.index)])) for c in checks.chunks
    ).to_pylist()
    assert len(ledger) == 984
    entry = next(e for e in ledger if e["model"] == "GW-200")
    principals = iot_client.list_thing_principals(thingName=entry["thing_name"])["principals"]
    assert principals == [f"arn:aws:iot:us-east-1:123456789012:cert/{entry['certificate_id']}"]
    outcome = next(
        o for o in Inventory(inventory_url).outcomes(batch.run_id) if o["manifest_row"] == entry["row"]
    )
    assert (outcome["certificate_id"], outcome["unit"]) == (entry["certificate_id"], "GW-200.1")
    params = objects[batch.files.params("GW-200.1")].splitlines()
    assert json.loads(params[outcome["param_line"] - 1])["ThingName"] == entry["thing_name"]

    # The factory line opens every bundle; together they hold one key per TH-100 device, none for GW-200.
    bundles = [k for k in objects if k.endswith(".tar.p7m")]
    assert bundles == first["files"]["bundles"]
    certificate = (line_key.parent / "recipient.cert.pem").read_bytes()
    records = [r for k in bundles for r in open_bundle(objects[k], line_key.read_bytes(), certificate)]
    assert len(records) == sum(1 for e in ledger if e["model"] == "TH-100")
    assert {r["certificate_id"] for r in records} <= {e["certificate_id"] for e in ledger}

    # No private key anywhere but inside the encrypted bundles.
    for key, data in objects.items():
        if not key.endswith(".tar.p7m"):
            assert b"PRIVATE KEY" not in data, key
    assert "PRIVATE KEY" not in _dump_inventory(inventory_url)
    assert "PRIVATE KEY" not in json.dumps(first, default=str)

    second = run_flow(iot_client, s3_client, settings, ca, str(SAMPLE), "manual__second")
    assert second["accounted"]
    assert second["skipped"] == 984 and second["provisioned"] == 0 and second["quarantined"] == 16
    assert second["registration_tasks"] == []
    assert len(iot_client.get_paginator("list_things").paginate().build_full_result()["things"]) == 984
    assert len(iot_client.list_thing_registration_tasks()["taskIds"]) == 2  # one per group, first run only


def test_failed_lines_are_kept_with_aws_error_and_retry_manifest(
    fresh_emulator, iot_client, s3_client, tmp_path, inventory_url, ca
):
    settings, _ = make_settings(tmp_path, inventory_url)
    prepare_account(iot_client, s3_client, settings, ca)
    manifest = tmp_path / "small.csv"
    manifest.write_text(
        "serial_number,model,factory\nA1,TH-100,SZX-1\nA2,TH-100,SZX-1\nA3,TH-100,SZX-1\n", encoding="utf-8"
    )
    fresh_emulator.faults.update({"fail_lines": [2]})
    summary = run_flow(iot_client, s3_client, settings, ca, str(manifest), "manual__faults")
    fresh_emulator.faults.reset()
    assert (summary["provisioned"], summary["failed"], summary["accounted"]) == (2, 1, True)
    assert len(summary["errors"]) == 1
    failed = s3_client.get_object(Bucket=settings.bucket, Key=summary["files"]["failed"])["Body"].read()
    rows = list(csv.reader(io.StringIO(failed.decode())))
    assert rows == [["serial_number", "model", "factory"], ["A2", "TH-100", "SZX-1"]]

    # The retry manifest goes through on its own: the failed device is provisioned, nothing else is touched.
    retry = tmp_path / "retry.csv"
    retry.write_bytes(failed)
    again = run_flow(iot_client, s3_client, settings, ca, str(retry), "manual__retry")
    assert (again["rows"], again["provisioned"], again["failed"]) == (1, 1, 0)


def test_preflight_lists_every_missing_prerequisite(fresh_emulator, iot_client, s3_client, tmp_path, ca):
    settings, _ = make_settings(tmp_path, f"sqlite:///{tmp_path / 'inv.db'}")
    prepare_account(iot_client, s3_client, settings, ca, skip={"Gateway", "gateways", "FactoryDevicePolicy"})
    batch = pipeline.intake(s3_client, settings, str(SAMPLE), run_id="manual__pf")
    pipeline.validate(s3_client, settings, batch)
    with pytest.raises(PreflightError) as raised:
        pipeline.preflight(s3_client, iot_client, settings, batch, ca_certificate_pem=ca.certificate_pem)
    message = str(raised.value)
    assert "thing type Gateway (product GW-200) does not exist" in message
    assert "thing group gateways (product GW-200) does not exist" in message
    assert "policy FactoryDevicePolicy (product TH-100) does not exist" in message
    assert len(raised.value.problems) == 3
    other = CertificateAuthority.create_development("Another CA")
    with pytest.raises(PreflightError, match="is not registered in AWS IoT"):
        pipeline.preflight(s3_client, iot_client, settings, batch, ca_certificate_pem=other.certificate_pem)
    report = s3_client.get_object(Bucket=settings.bucket, Key=batch.files.preflight)
    assert json.loads(report["Body"].read())["problems"]
    # Every accepted row is quarantined with the reason, so the run still accounts for every row.
    counts = Inventory(settings.inventory_url).outcome_counts(batch.run_id)
    assert counts == {"quarantined": 1000}
    assert Inventory(settings.inventory_url).claimed_by(batch.run_id) == {}


def test_dry_run_stops_after_preflight_and_still_accounts(
    fresh_emulator, iot_client, s3_client, tmp_path, ca
):
    settings, _ = make_settings(tmp_path, f"sqlite:///{tmp_path / 'inv.db'}")
    prepare_account(iot_client, s3_client, settings, ca)
    summary = run_flow(
        iot_client, s3_client, settings, ca, str(SAMPLE), "manual__dry", dry_run=True, max_devices=100
    )
    assert summary["dry_run"] and summary["accounted"]
    # The cap counts rows validation accepts; the device-CSR checks come after it (two such rows are past
    # the first 100 accepted ones, so they are among the capped rows).
    assert summary["planned"] == 100 and summary["reasons"]["over_max_devices"] == 886
    assert summary["provisioned"] == 0
    assert iot_client.list_things()["things"] == []


def test_hostile_manifest_accounts_for_every_row(fresh_emulator, iot_client, s3_client, tmp_path, ca):
    settings, _ = make_settings(tmp_path, f"sqlite:///{tmp_path / 'inv.db'}")
    prepare_account(iot_client, s3_client, settings, ca)
    hostile = (
        "\ufeffSerial_Number , Model,FACTORY,notes\r\n"
        "H1,TH-100,SZX-1,=cmd|' /C calc'!A0\r\n"
        "\r\n"
        '"H2",TH-100,"SZX-1","multi\r\nline"\r\n'
        "@H3,TH-100,SZX-1,\r\n"
        "H4,TH-100," + "x" * 200_000 + ",\r\n"
        "H5,TH-100,SZX-1,a,b,c\r\n"
        "H1,TH-100,SZX-1,dup\r\n"
        "H6,GW-200,SZX-1,\r\n"
        "H7,TH-100,'+SZX,\r\n"
    )
    path = tmp_path / "hostile.csv"
    path.write_bytes(hostile.encode("utf-8"))
    summary = run_flow(iot_client, s3_client, settings, ca, str(path), "manual__hostile")
    assert summary["accounted"] and summary["rows"] == 8
    assert summary["provisioned"] == 2  # H1 and H2; the rest refused with a reason each
    assert summary["reasons"] == {
        "invalid_serial": 1,
        "field_too_long": 1,
        "malformed_row": 1,
        "duplicate_serial": 1,
        "csr_required": 1,
        "invalid_attribute_value": 1,
    }
    quarantine = s3_client.get_object(Bucket=settings.bucket, Key=summary["files"]["quarantine"])[
        "Body"
    ].read()
    for row in csv.reader(io.StringIO(quarantine.decode())):
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row)


def test_reconcile_fails_lines_missing_from_the_reports(fresh_emulator, iot_client, s3_client, tmp_path, ca):
    settings, _ = make_settings(tmp_path, f"sqlite:///{tmp_path / 'inv.db'}")
    prepare_account(iot_client, s3_client, settings, ca)
    manifest = tmp_path / "m.csv"
    manifest.write_text("serial_number,model\nA1,TH-100\nA2,TH-100\nA3,TH-100\n")
    batch = pipeline.intake(s3_client, settings, str(manifest), run_id="manual__cancel")
    pipeline.validate(s3_client, settings, batch)
    checks = pipeline.preflight(s3_client, iot_client, settings, batch, ca_certificate_pem=ca.certificate_pem)
    chunks = [
        pipeline.issue_credentials(s3_client, settings, batch, c, ca.certificate_pem, ca.private_key_pem())
        for c in checks.chunks
    ]
    (unit,) = pipeline.write_parameter_files(s3_client, settings, batch, checks, chunks)
    error = (
        '{"errorMessage":"com.amazonaws.services.iot.model.ThrottlingException: Rate exceeded '
        "(Service: AWSIot; "
        'Status Code: 400; Error Code: ThrottlingException; Request ID: x; Proxy: null)","lineNumber":2,'
        '"offset":1,"response":null}'
    )
    registration = Registration(task_id="t-1", status="Cancelled", message="stopped by operator")
    result = pipeline.reconcile(s3_client, settings, batch, unit, registration, [], [error.encode()])
    assert (result.provisioned, result.failed, result.offset_mismatches) == (0, 3, 1)
    summary = pipeline.summarize(s3_client, settings, batch)
    assert summary["accounted"] and summary["errors"] == {"ThrottlingException": 1, "NoReportLine": 2}
    failed = (
        s3_client.get_object(Bucket=settings.bucket, Key=summary["files"]["failed"])["Body"].read().decode()
    )
    assert failed.splitlines() == ["serial_number,model", "A1,TH-100", "A2,TH-100", "A3,TH-100"]
    assert Inventory(settings.inventory_url).device("TH-100-A2")["status"] == "failed"
    with pytest.raises(Exception, match="names lineNumber 9"):
        pipeline.reconcile(s3_client, settings, batch, unit, registration, [error.replace(":2,", ":9,")], [])
