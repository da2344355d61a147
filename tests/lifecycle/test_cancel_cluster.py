"""On the real Airflow services (scripts.cluster: scheduler, triggerer, Celery workers): a register task
marked failed while it waits deferred has its trigger's on_kill stop the AWS task; the next batch registers.

Skipped without PostgreSQL and Redis on this machine (unless CI is set), like tests/cluster.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.cluster import conftest as cluster_support
from tests.cluster.conftest import RunningCluster, manifest

cluster = cluster_support.cluster  # the session's cluster fixture (tests/cluster's)

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(600)]


def _faults(cluster: RunningCluster, settings: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{cluster.emulator_url}/_emulator/faults",
        data=json.dumps(settings).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - the cluster's loopback emulator
        pass


def _iot(cluster: RunningCluster) -> Any:
    import boto3

    return boto3.client(
        "iot",
        endpoint_url=cluster.emulator_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _wait_for_progress(cluster: RunningCluster, task_id: str, timeout: float) -> None:
    """Until the trigger has polled the task once (its progress line in the triggerer's or task's log)."""
    line = f"Thing registration task {task_id}:"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in cluster.state_dir.rglob("*.log"):
            if line in log.read_text(errors="replace"):
                return
        time.sleep(1)
    raise AssertionError(f"no trigger polled registration task {task_id} within {timeout} s")


def _deferred_register(cluster: RunningCluster, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in cluster.api.task_instances(run_id):
            if ti["task_id"] == "register" and ti["state"] == "deferred":
                return ti
        time.sleep(0.5)
    raise AssertionError(f"no register task was deferred within {timeout} s")


def test_marking_a_deferred_register_task_failed_stops_its_aws_task(
    cluster: RunningCluster, tmp_path: Any
) -> None:
    iot = _iot(cluster)
    _faults(cluster, {"task_line_delay": 0.2})  # 200 lines: 40 s of registration
    try:
        uri = cluster.upload_manifest(manifest(tmp_path, "cancel", 200, 45_000_000), "uploads/cancel.csv")
        run_id = cluster.api.trigger({"manifest": uri})
        ti = _deferred_register(cluster, run_id, timeout=240)
        [task_id] = iot.list_thing_registration_tasks(status="InProgress")["taskIds"]
        # Only a trigger the triggerer runs can be killed: wait for its first progress line (a task marked
        # failed before the triggerer picked its trigger up never reaches on_kill; docs/lifecycle.md).
        _wait_for_progress(cluster, task_id, 120)
        quoted = urllib.parse.quote(run_id, safe="")
        path = (
            f"/api/v2/dags/provision_factory_batch/dagRuns/{quoted}/taskInstances/register/{ti['map_index']}"
        )
        response = cluster.api.session.patch(
            f"{cluster.api.base}{path}", json={"new_state": "failed"}, timeout=30
        )
        response.raise_for_status()
        deadline = time.monotonic() + 60
        while iot.describe_thing_registration_task(taskId=task_id)["status"] != "Cancelled":
            assert time.monotonic() < deadline, iot.describe_thing_registration_task(taskId=task_id)
            time.sleep(0.5)
    finally:
        _faults(cluster, {"reset": True})
    recorded = cluster.query(
        "select status, message from registration_tasks where task_id = :task", task=task_id
    )
    assert (
        recorded and recorded[0][0] in ("Cancelling", "Cancelled") and recorded[0][1].startswith("stopped:")
    )
    assert cluster.api.wait_finished(run_id, timeout=120)["state"] == "failed"

    uri = cluster.upload_manifest(manifest(tmp_path, "after", 20, 46_000_000), "uploads/after.csv")
    after = cluster.api.trigger({"manifest": uri})
    assert cluster.api.wait_finished(after, timeout=300)["state"] == "success"
    assert cluster.api.xcom(after, "summarize")["provisioned"] == 20
