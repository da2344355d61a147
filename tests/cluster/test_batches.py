"""Batches on the real services: two Celery workers, the one-slot pool, the AssetWatcher in the triggerer."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
from typing import Any

import pytest

from tests.cluster.conftest import RunningCluster, manifest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def two_batches(cluster: RunningCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two batches (6,000 devices each, 5 % with device CSRs) triggered together through /api/v2."""
    directory = tmp_path_factory.mktemp("manifests")
    uris = [
        cluster.upload_manifest(manifest(directory, name, 6000, first, gw_share=0.05), f"uploads/{name}.csv")
        for name, first in (("left", 41_000_000), ("right", 42_000_000))
    ]
    started = time.monotonic()
    run_ids = [cluster.api.trigger({"manifest": uri}) for uri in uris]
    runs = [cluster.api.wait_finished(run_id, timeout=300) for run_id in run_ids]
    return {
        "run_ids": run_ids,
        "runs": runs,
        "seconds": time.monotonic() - started,
        "task_instances": {run_id: cluster.api.task_instances(run_id) for run_id in run_ids},
    }


def test_batches_run_their_chunks_on_both_workers_and_end_accounted(cluster, two_batches):
    assert [run["state"] for run in two_batches["runs"]] == ["success", "success"], two_batches
    hosts = set()
    for run_id, tis in two_batches["task_instances"].items():
        chunks = [ti for ti in tis if ti["task_id"] == "issue_credentials"]
        assert len(chunks) >= 3 and all(ti["state"] == "success" for ti in chunks)
        hosts |= {ti["hostname"] for ti in chunks}
        summary = cluster.api.xcom(run_id, "summarize")  # the whole summary is one XCom value
        assert summary["accounted"] is True
        assert summary["rows"] == 6000 == summary["provisioned"]
        assert summary["failed"] == summary["quarantined"] == summary["skipped"] == 0
    assert hosts == {"worker-1", "worker-2"}, hosts


def test_registrations_of_concurrent_batches_take_the_one_registration_slot_in_turn(cluster, two_batches):
    """The AWS tasks never overlap. The pool alone cannot promise it: a register task whose trigger fired
    waits in `scheduled`, which holds no pool slot, so another batch's register may start meanwhile and
    find the slot busy (it then waits deferred on RegistrationSlotTrigger)."""
    registers = [
        ti for tis in two_batches["task_instances"].values() for ti in tis if ti["task_id"] == "register"
    ]
    assert len(registers) == 4  # TH-100 and GW-200 in each batch
    assert {ti["pool"] for ti in registers} == {"iot_bulk_registration"}
    iot = cluster.client("iot")
    task_ids = {
        row[0]
        for run_id in two_batches["run_ids"]
        for row in cluster.query(
            "SELECT task_id FROM registration_tasks WHERE run_id = :run_id", run_id=run_id
        )
    }
    assert len(task_ids) == 4, task_ids  # one AWS task per unit: no unit started a second one
    tasks = [iot.describe_thing_registration_task(taskId=task_id) for task_id in task_ids]
    assert {task["status"] for task in tasks} == {"Completed"}
    intervals = sorted((task["creationDate"], task["lastModifiedDate"]) for task in tasks)
    for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
        assert start >= end, f"two registration tasks ran in the account at once: {intervals}"


def test_an_upload_to_the_inbox_starts_a_run_through_the_asset_watcher(cluster, tmp_path):
    """S3 ObjectCreated -> SQS -> SqsSensorTrigger in the real triggerer -> asset event -> runs."""
    path = manifest(tmp_path, "inbox-batch", 400, 43_000_000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cluster.upload_manifest(path, "inbox/inbox-batch.csv")
    inbox_dag = "provision_factory_batch_from_inbox"
    deadline = time.monotonic() + 120
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not runs:
        runs = cluster.api.get(f"/api/v2/dags/{inbox_dag}/dagRuns")["dag_runs"]
        time.sleep(2)
    assert runs, "no run of the inbox DAG within 120 s of the upload"
    inbox_run = runs[0]
    assert inbox_run["run_type"] == "asset_triggered"
    quoted = urllib.parse.quote(inbox_run["dag_run_id"], safe="")
    events = cluster.api.get(f"/api/v2/dags/{inbox_dag}/dagRuns/{quoted}/upstreamAssetEvents")["asset_events"]
    assert events and all(event["extra"].get("from_trigger") for event in events), events
    assert cluster.api.wait_finished(inbox_run["dag_run_id"], 120, dag_id=inbox_dag)["state"] == "success"
    pipeline_run = cluster.api.wait_finished(f"inbox__{digest}", timeout=180)
    assert pipeline_run["state"] == "success"
    assert pipeline_run["conf"]["manifest"] == "s3://factory-provisioning/inbox/inbox-batch.csv"
    summary = cluster.api.xcom(f"inbox__{digest}", "summarize")
    assert summary["rows"] == 400 == summary["provisioned"] and summary["accounted"] is True


def test_a_batch_end_is_announced_by_the_notifier_the_variable_configures(cluster, tmp_path):
    """No code change: an SNS topic named in Variable factory_notifications hears of the batch's end."""
    import boto3

    clients = {
        name: boto3.client(
            name,
            endpoint_url=cluster.emulator_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        for name in ("sns", "sqs")
    }
    topic = clients["sns"].create_topic(Name="factory-batches")["TopicArn"]
    queue = clients["sqs"].create_queue(QueueName="factory-batches-inbox")["QueueUrl"]
    queue_arn = clients["sqs"].get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    clients["sns"].subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    response = cluster.api.session.post(
        f"{cluster.api.base}/api/v2/variables",
        json={"key": "factory_notifications", "value": json.dumps({"sns_topic_arn": topic})},
        timeout=30,
    )
    response.raise_for_status()

    uri = cluster.upload_manifest(manifest(tmp_path, "notified", 300, 46_000_000), "uploads/notified.csv")
    run_id = cluster.api.trigger({"manifest": uri})
    state = cluster.api.wait_finished(run_id, timeout=240)["state"]  # success or failure: both are announced
    deadline = time.monotonic() + 90
    bodies: list[str] = []
    while time.monotonic() < deadline and not any(run_id in body for body in bodies):
        messages = clients["sqs"].receive_message(QueueUrl=queue, WaitTimeSeconds=5).get("Messages", [])
        bodies += [json.loads(message["Body"])["Message"] for message in messages]
    announced = [body for body in bodies if run_id in body]
    assert announced, f"no notification of {run_id} within 90 s: {bodies}"
    assert f"ended {state}" in announced[0] and "rows: 300" in announced[0]
    assert "/factory/dags/provision_factory_batch/runs/" in announced[0]
