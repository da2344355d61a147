"""provision_factory_batch run BY AIRFLOW (dag.test, in-process) against the emulator over HTTP.

Proves the design's invariants end to end: nothing lost on a hostile manifest, the inventory matches
AWS IoT, idempotent re-runs (no second thing, certificate or inventory row), a register task that is
lost after starting resumes the same AWS task, one registration task at a time, and no private key in
task logs, XComs, the inventory or anything written to S3. Runs on SQLite and PostgreSQL inventories.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e.dag_runs import Pipeline, inventory_rows, scan_for_secrets, states, xcom

pytestmark = pytest.mark.airflow

OUTCOMES = ("provisioned", "failed", "quarantined", "skipped")


def hostile_manifest(path: Path, devices: int = 44, bad_rows: int = 12, seed: int = 11) -> int:
    """A generated manifest made hostile: BOM, CRLF, odd header case, a blank line, a duplicate row and a
    spreadsheet formula; returns the number of data rows (blank lines are not rows)."""
    from scripts.generate_manifest import write_manifest

    buffer = io.StringIO()
    write_manifest(buffer, devices, bad_rows, 0.25, seed)
    header, *records = list(csv.reader(io.StringIO(buffer.getvalue())))
    factory = header.index("factory")
    header[0], header[1] = " Serial_Number ", "MODEL"
    formula = next(list(r) for r in records if r[1] == "TH-100")
    formula[0] += "X"  # a new serial, so only the formula decides this row's fate
    formula[factory] = "=HYPERLINK(x)"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(records[:5])
    out.write("\r\n")
    writer.writerows([*records[5:], records[1], formula])
    path.write_bytes(("\ufeff" + out.getvalue()).encode())
    return len(records) + 2


def _count(paginator_client: Any, operation: str, key: str) -> int:
    return sum(len(page[key]) for page in paginator_client.get_paginator(operation).paginate())


def _assert_accounted(summary: dict[str, Any], rows: int) -> None:
    assert summary["rows"] == rows
    assert sum(summary[outcome] for outcome in OUTCOMES) == rows, {k: summary[k] for k in OUTCOMES}


def test_hostile_batch_end_to_end_then_idempotent_rerun(pipeline: Pipeline, tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO)
    manifest = tmp_path / "hostile.csv"
    rows = hostile_manifest(manifest)
    pipeline.emulator.faults.update({"fail_lines": [2]})  # AWS refuses line 2 of every registration task

    run, summary = pipeline.run(manifest)
    assert run.state == "success", states(run)
    _assert_accounted(summary, rows)
    assert summary["quarantined"] >= 13  # 12 generated bad rows + the duplicate serial
    assert summary["reasons"].get("duplicate_serial", 0) >= 1
    groups = summary["registration_tasks"]
    assert {g["group"] for g in groups} == {"TH-100", "GW-200"}
    assert summary["failed"] == len(groups) and summary["provisioned"] > 20
    assert summary["skipped"] == 0

    # The inventory agrees with AWS IoT: every provisioned device's thing holds its certificate.
    inventory = inventory_rows(pipeline.settings.inventory_url)
    devices = {d["thing_name"]: d for d in inventory["devices"]}
    provisioned = [d for d in devices.values() if d["status"] == "provisioned"]
    failed = [d for d in devices.values() if d["status"] == "failed"]
    assert len(provisioned) == summary["provisioned"] and len(failed) == summary["failed"]
    for device in provisioned:
        principals = pipeline.iot.list_thing_principals(thingName=device["thing_name"])["principals"]
        assert principals == [device["certificate_arn"]]
        description = pipeline.iot.describe_certificate(certificateId=device["certificate_id"])
        assert description["certificateDescription"]["status"] == "ACTIVE"
    assert all(d["error_code"] and d["error_message"] for d in failed)
    things = _count(pipeline.iot, "list_things", "things")
    certificates = _count(pipeline.iot, "list_certificates", "certificates")
    assert things == certificates == len(provisioned)

    # failed.csv is a retry manifest in the manifest's own columns.
    failed_csv = pipeline.s3.get_object(Bucket=pipeline.settings.bucket, Key=summary["files"]["failed"])
    failed_rows = list(csv.reader(io.StringIO(failed_csv["Body"].read().decode("utf-8-sig"))))
    assert len(failed_rows) == 1 + summary["failed"]
    assert [c.strip().lower() for c in failed_rows[0][:2]] == ["serial_number", "model"]

    # One registration task at a time: the pool has one slot and the two tasks did not overlap.
    from airflow.models.pool import Pool

    assert Pool.get_pool("iot_bulk_registration").slots == 1
    spans = sorted(
        (d["creationDate"], d["lastModifiedDate"])
        for d in (pipeline.iot.describe_thing_registration_task(taskId=g["task_id"]) for g in groups)
    )
    assert spans[0][1] <= spans[1][0]

    # Second run of the same content, faults off: provisioned devices are skipped, the failed ones now
    # succeed, and nothing is created twice.
    pipeline.emulator.faults.reset()
    run2, again = pipeline.run(manifest)
    assert run2.state == "success", states(run2)
    _assert_accounted(again, rows)
    assert again["batch_id"] == summary["batch_id"] and again["run_id"] != summary["run_id"]
    assert again["skipped"] == summary["provisioned"]
    assert again["provisioned"] == summary["failed"] and again["failed"] == 0
    assert again["quarantined"] == summary["quarantined"]
    inventory2 = inventory_rows(pipeline.settings.inventory_url)
    assert len(inventory2["devices"]) == len(inventory["devices"])
    assert _count(pipeline.iot, "list_things", "things") == things + summary["failed"]
    assert _count(pipeline.iot, "list_certificates", "certificates") == certificates + summary["failed"]

    # Third run: everything already there, so nothing is registered at all.
    tasks_before = _count(pipeline.iot, "list_thing_registration_tasks", "taskIds")
    run3, third = pipeline.run(manifest)
    assert run3.state == "success", states(run3)
    _assert_accounted(third, rows)
    assert third["provisioned"] == third["failed"] == 0
    assert third["skipped"] == rows - third["quarantined"]
    assert _count(pipeline.iot, "list_thing_registration_tasks", "taskIds") == tasks_before

    # No private key anywhere: task logs (captured output), XComs, inventory, every object in S3.
    captured = capfd.readouterr()
    texts: dict[str, bytes] = {"task logs": (captured.out + captured.err + caplog.text).encode()}
    assert b"Batch report" in texts["task logs"] and b"Started registration task" in texts["task logs"]
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for row in session.scalars(sa.select(XComModel).where(XComModel.dag_id == "provision_factory_batch")):
            texts[f"xcom {row.run_id}/{row.task_id}/{row.map_index}"] = json.dumps(
                row.value, default=str
            ).encode()
    for table, table_rows in inventory_rows(pipeline.settings.inventory_url).items():
        texts[f"inventory {table}"] = json.dumps(table_rows, default=str).encode()
    for bucket in pipeline.s3.list_buckets()["Buckets"]:
        for page in pipeline.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                body = pipeline.s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
                texts[f"s3://{bucket['Name']}/{item['Key']}"] = body
    assert any(name.endswith("params.jsonl") or ".jsonl" in name for name in texts)
    assert scan_for_secrets(texts, pipeline.ca_key_pem) == []
    # The scan can fail: shown the CA key itself, it reports it.
    assert scan_for_secrets({"probe": pipeline.ca_key_pem.encode()}, pipeline.ca_key_pem) == ["probe"]


def test_dry_run_stops_after_preflight(pipeline: Pipeline, tmp_path):
    manifest = tmp_path / "dry.csv"
    rows = hostile_manifest(manifest, devices=20, bad_rows=3, seed=5)
    run = pipeline.dag.test(run_conf={"manifest": str(manifest), "dry_run": True})
    assert run.state == "success", states(run)
    checks = xcom(run.run_id, "preflight")
    assert checks["dry_run"] is True and checks["to_provision"] > 0
    summary = xcom(run.run_id, "summarize")
    assert summary["dry_run"] and summary["accounted"] and summary["planned"] == checks["to_provision"]
    assert summary["provisioned"] == 0 and summary["registration_tasks"] == []
    assert _count(pipeline.iot, "list_things", "things") == 0
    assert _count(pipeline.iot, "list_thing_registration_tasks", "taskIds") == 0
    assert rows > checks["to_provision"]


@pytest.mark.parametrize("inventory_url", ["sqlite"], indirect=True)
def test_register_lost_after_start_resumes_the_same_aws_task(
    pipeline: Pipeline, tmp_path, monkeypatch, caplog, capfd
):
    from datetime import timedelta

    from plugins.iot_provisioning.operators import StartThingRegistrationTaskOperator

    caplog.set_level(logging.INFO)
    manifest = tmp_path / "resume.csv"
    rows = hostile_manifest(manifest, devices=30, bad_rows=0, seed=3)
    pipeline.emulator.faults.update({"task_line_delay": 0.2})  # the AWS task is still running on resume
    real_defer = StartThingRegistrationTaskOperator.defer
    lost: list[str] = []

    def defer_once(self, **kwargs):
        if not lost and self.unit["group"] == "TH-100":  # dies after the id was recorded
            lost.append(kwargs["trigger"].serialize()[1]["task_id"])
            raise RuntimeError("worker lost")
        return real_defer(self, **kwargs)

    monkeypatch.setattr(StartThingRegistrationTaskOperator, "defer", defer_once)
    register = pipeline.dag.get_task("register")
    register.partial_kwargs["retry_delay"] = timedelta(seconds=1)
    register.partial_kwargs["retry_exponential_backoff"] = False

    run, summary = pipeline.run(manifest)
    assert run.state == "success", states(run)
    _assert_accounted(summary, rows)
    task_ids = pipeline.iot.list_thing_registration_tasks()["taskIds"]
    assert len(task_ids) == len(summary["registration_tasks"])  # one per group, never a second start
    assert lost[0] in task_ids
    assert lost[0] in {g["task_id"] for g in summary["registration_tasks"]}
    # The retry finds the recorded task (still running, or completed meanwhile) and follows it.
    logs = capfd.readouterr().out + caplog.text
    assert re.search(rf"Resuming registration task {lost[0]}", logs), logs[-2000:]


@pytest.mark.parametrize("inventory_url", ["sqlite"], indirect=True)
def test_second_registration_waits_for_the_running_one(pipeline: Pipeline):
    """AWS (and the emulator) refuse a second task while one runs; the operator waits for the slot, then
    starts (here without deferring, so the wait is the registration_slot_free waiter in this process)."""
    from plugins.iot_provisioning.operators import StartThingRegistrationTaskOperator

    s3, iot, bucket = pipeline.s3, pipeline.iot, pipeline.settings.bucket
    template = {
        "Parameters": {"ThingName": {"Type": "String"}},
        "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}}},
    }
    for name, count in (("first", 20), ("second", 3)):
        lines = "".join(json.dumps({"ThingName": f"{name}-{n}"}) + "\n" for n in range(count))
        s3.put_object(Bucket=bucket, Key=f"t/{name}.jsonl", Body=lines.encode())
    s3.put_object(Bucket=bucket, Key="t/template.json", Body=json.dumps(template).encode())
    pipeline.emulator.faults.update({"task_line_delay": 0.1})
    first = iot.start_thing_registration_task(
        templateBody=json.dumps(template),
        inputFileBucket=bucket,
        inputFileKey="t/first.jsonl",
        roleArn=pipeline.settings.registration_role_arn,
    )["taskId"]
    batch = {
        "batch_id": "b" * 64,
        "run_id": "manual__t",
        "source": "m",
        "bucket": bucket,
        "work_prefix": "t/",
    }
    unit = {
        "unit": "g.1", "group": "g", "part": 1, "lines": 3, "chunks": [0], "run_id": "manual__t",
        "params_key": "t/second.jsonl", "template_key": "t/template.json", "bucket": bucket,
    }  # fmt: skip
    operator = StartThingRegistrationTaskOperator(
        task_id="register", batch=batch, unit=unit, deferrable=False, waiter_delay=1, slot_delay=1
    )
    result = operator.execute({})
    second = result["registration"]["task_id"]
    assert result["registration"]["status"] == "Completed" and second != first
    spans = {task: iot.describe_thing_registration_task(taskId=task) for task in (first, second)}
    assert spans[first]["status"] == "Completed"
    assert spans[first]["lastModifiedDate"] <= spans[second]["creationDate"]


@pytest.mark.parametrize("inventory_url", ["sqlite"], indirect=True)
def test_every_serial_the_contract_allows_is_provisioned_or_refused_precisely(pipeline: Pipeline, tmp_path):
    """Serials with '_', thing names over 64 characters, device CSRs and non-ASCII attribute values: each row
    provisioned, or quarantined with its reason, and the run never fails (quarantine.csv read by header)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from scripts.generate_manifest import device_csr

    long_serial = "L" + "0123456789" * 12  # 121 characters: the thing name is exactly 128
    too_long = "X" * 128  # a valid serial whose thing name (TH-100-...) exceeds 128
    rows = [
        ("TH_0001_a", "TH-100", "SZX-1", ""),
        (long_serial, "TH-100", "SZX-1", ""),
        (too_long, "TH-100", "SZX-1", ""),
        ("GW_0002_b", "GW-200", "SZX-1", device_csr("GW_0002_b")),
        ("TH-0003", "TH-100", "Zürich", ""),
    ]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["serial_number", "model", "factory", "csr"])
    writer.writerows(rows)
    manifest = tmp_path / "serials.csv"
    manifest.write_text(out.getvalue(), encoding="utf-8")

    run, summary = pipeline.run(manifest)
    assert run.state == "success", states(run)
    _assert_accounted(summary, 5)
    assert (summary["provisioned"], summary["quarantined"]) == (3, 2)
    assert summary["reasons"] == {"thing_name_too_long": 1, "invalid_attribute_value": 1}
    for thing in ("TH-100-TH_0001_a", f"TH-100-{long_serial}", "GW-200-GW_0002_b"):
        (principal,) = pipeline.iot.list_thing_principals(thingName=thing)["principals"]
        pem = pipeline.iot.describe_certificate(certificateId=principal.rsplit("/", 1)[-1])
        certificate = x509.load_pem_x509_certificate(pem["certificateDescription"]["certificatePem"].encode())
        common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert len(common_name) <= 64
        if len(thing) > 64:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert any(
                str(uri).endswith(thing) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
            )
        else:
            assert common_name == thing
    quarantine = pipeline.s3.get_object(Bucket=pipeline.settings.bucket, Key=summary["files"]["quarantine"])
    refused = list(csv.DictReader(io.StringIO(quarantine["Body"].read().decode("utf-8-sig"))))
    assert {(r["manifest_row"], r["reason_code"]) for r in refused} == {
        ("3", "thing_name_too_long"),
        ("5", "invalid_attribute_value"),
    }
    assert next(r for r in refused if r["manifest_row"] == "5")["factory"] == "Zürich"


@pytest.mark.parametrize("inventory_url", ["sqlite"], indirect=True)
def test_a_run_by_dag_test_announces_its_end_where_the_variable_says(
    pipeline: Pipeline, tmp_path, monkeypatch
):
    """`make run` and `make dag` run DAGs with dag.test: the batch-end notifier must work there too (the
    Variable from the environment, the SNS topic on the emulator, the message read back from SQS)."""
    sns, sqs = pipeline.emulator.client("sns"), pipeline.emulator.client("sqs")
    topic = sns.create_topic(Name="factory-batches")["TopicArn"]
    queue = sqs.create_queue(QueueName="factory-batches-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    monkeypatch.setenv("AIRFLOW_VAR_FACTORY_NOTIFICATIONS", json.dumps({"sns_topic_arn": topic}))
    manifest = tmp_path / "announced.csv"
    rows = hostile_manifest(manifest, devices=8, bad_rows=1, seed=3)
    run = pipeline.dag.test(run_conf={"manifest": str(manifest), "dry_run": True})
    assert run.state == "success", states(run)
    messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1, MaxNumberOfMessages=10).get(
        "Messages", []
    )
    bodies = [json.loads(message["Body"])["Message"] for message in messages]
    assert len(bodies) == 1, bodies
    assert f"Run {run.run_id} of provision_factory_batch ended success." in bodies[0]
    assert f"rows: {rows}" in bodies[0]
