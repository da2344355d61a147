"""A Celery worker killed (SIGKILL, by pid) in the middle of a credentials chunk: retried on the other worker.

Runs last in the session (it leaves one worker). What it proves: Airflow notices the dead worker through
the task heartbeat timeout, retries the chunk on the surviving worker, and the batch ends with every row
provisioned once; Redis holds no unacknowledged message afterwards (task_acks_late is off and workers
do not prefetch). docs/deployment.md states the time this takes.
"""

from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import HEARTBEAT_TIMEOUT, REDIS, REDIS_DB, RunningCluster, manifest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(480)]
DEVICES = 20_000


def _running_chunk(cluster: RunningCluster, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in cluster.api.task_instances(run_id):
            if ti["task_id"] == "issue_credentials" and ti["state"] == "running" and ti["hostname"]:
                return ti
        time.sleep(0.3)
    raise AssertionError(f"no issue_credentials task was running within {timeout} s")


def test_a_worker_killed_mid_chunk_is_retried_on_the_other_and_nothing_is_lost(cluster, tmp_path):
    import redis

    uri = cluster.upload_manifest(manifest(tmp_path, "loss", DEVICES, 44_000_000), "uploads/loss.csv")
    run_id = cluster.api.trigger({"manifest": uri})
    victim = _running_chunk(cluster, run_id, timeout=120)
    killed_at = time.monotonic()
    pid = cluster.cluster.kill(victim["hostname"])  # the worker's whole process group, like a lost machine
    run = cluster.api.wait_finished(run_id, timeout=360)
    recovered_in = time.monotonic() - killed_at
    print(
        f"killed {victim['hostname']} (pid {pid}) running chunk {victim['map_index']}; "
        f"run {run['state']} {recovered_in:.0f} s later"
    )
    assert run["state"] == "success"

    tries = cluster.api.tries(run_id, "issue_credentials", victim["map_index"])
    assert [t["try_number"] for t in tries] == list(range(1, len(tries) + 1)) and len(tries) >= 2
    assert tries[0]["hostname"] == victim["hostname"] and tries[0]["state"] == "failed"
    survivor = {"worker-1": "worker-2", "worker-2": "worker-1"}[victim["hostname"]]
    assert tries[-1]["hostname"] == survivor and tries[-1]["state"] == "success"

    summary = cluster.api.xcom(run_id, "summarize")
    assert summary["accounted"] is True and summary["rows"] == DEVICES == summary["provisioned"]
    rows = cluster.query(
        "select count(*), count(distinct manifest_row), count(distinct certificate_id) from row_outcomes "
        "where run_id = :run and outcome = 'provisioned'",
        run=run_id,
    )
    assert rows == [(DEVICES, DEVICES, DEVICES)]
    registered = cluster.query(
        "select sum(success_count), sum(failure_count) from registration_tasks where run_id = :run",
        run=run_id,
    )
    assert registered == [(DEVICES, 0)]  # one registration of every device: none twice, none missing

    client = redis.Redis.from_url(f"{REDIS}/{REDIS_DB}")
    assert client.hlen(f"{cluster.redis_prefix}unacked") == 0
    # Heartbeat timeout, then the retry delay (15 s), then the chunk again on the other worker.
    assert recovered_in < HEARTBEAT_TIMEOUT + 240
