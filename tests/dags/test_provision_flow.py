"""The provision_factory_batch wiring run by Airflow (dag.test) with the domain stages faked, IoT emulated.

The domain package has its own tests; here the fakes only record what each task received, so the test
proves the DAG's shape: data passed between tasks, mapping per chunk and per group, the dry-run
short-circuit, the empty batch (everything skipped) and the real register operator against the emulator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.dags.airflow_support import DAGS_DIR

pytestmark = pytest.mark.airflow

BUCKET = "factory-provisioning"
TEMPLATE = json.dumps(
    {
        "Parameters": {"ThingName": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}}
        },
    }
)


class FakeDomain:
    """Stand-ins for include.pipeline's stages: record calls, write real parameter files to S3."""

    def __init__(self, chunks: list[dict], devices_per_group: dict[str, int]) -> None:
        self.chunks = chunks
        self.devices_per_group = devices_per_group
        self.calls: dict[str, list[Any]] = {}
        self.tasks: dict[tuple[str, str], str] = {}
        self.statuses: dict[str, dict] = {}

    def _record(self, name: str, value: Any) -> None:
        self.calls.setdefault(name, []).append(value)

    def intake(self, s3, settings, source, *, run_id, product=None, dry_run=False, max_devices=None):
        self._record("intake", {"source": source, "run_id": run_id, "dry_run": dry_run, "max": max_devices})
        return {
            "batch_id": "f" * 64,
            "run_id": run_id,
            "source": source,
            "dry_run": dry_run,
            "work_prefix": "b/",
        }

    def validate(self, s3, settings, batch):
        self._record("validate", batch["batch_id"])
        return {"rows": 10, "accepted": 9, "quarantined": 1, "reasons": {"invalid_serial": 1}}

    def preflight(self, s3, iot, settings, batch, *, ca_certificate_pem=None):
        self._record("preflight", "BEGIN CERTIFICATE" in (ca_certificate_pem or ""))
        return {"to_provision": 9, "skipped": 0, "chunks": self.chunks, "dry_run": batch["dry_run"]}

    def issue_credentials(self, s3, settings, batch, chunk, ca_certificate_pem, ca_private_key_pem):
        self._record("issue_credentials", chunk["index"])
        assert "PRIVATE KEY" in ca_private_key_pem
        return {"index": chunk["index"], "devices": chunk["stop"] - chunk["start"], "groups": {}}

    def write_parameter_files(self, s3, settings, batch, chunks):
        self._record("write_parameter_files", [c["index"] for c in chunks])
        groups = []
        for group, count in self.devices_per_group.items():
            lines = "".join(json.dumps({"ThingName": f"{group}-{n}"}) + "\n" for n in range(count))
            s3.put_object(Bucket=BUCKET, Key=f"b/{group}/params.jsonl", Body=lines.encode())
            s3.put_object(Bucket=BUCKET, Key=f"b/{group}/template.json", Body=TEMPLATE.encode())
            groups.append(
                {
                    "group": group,
                    "lines": count,
                    "params_key": f"b/{group}/params.jsonl",
                    "template_key": f"b/{group}/template.json",
                    "bucket": BUCKET,
                }
            )
        return groups

    def registration_task_for(self, settings, batch, group):
        return self.tasks.get((batch["run_id"], group))

    def record_registration_task(self, settings, batch, group, task_id):
        self.tasks[(batch["run_id"], group)] = task_id

    def record_registration_status(self, settings, batch, group, registration):
        self.statuses[group] = dict(registration)

    def reconcile(self, s3, settings, batch, group, registration, results_lines, errors_lines):
        results, errors = list(results_lines), list(errors_lines)
        self._record("reconcile", (group["group"], registration["task_id"], len(results), len(errors)))
        return {"group": group["group"], "provisioned": len(results), "failed": len(errors)}

    def summarize(self, s3, settings, batch):
        self._record("summarize", batch["batch_id"])
        return {"batch_id": batch["batch_id"], "run_id": batch["run_id"], "rows": 10, "provisioned": 9}


@pytest.fixture
def dag():
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR / "provision_factory_batch.py"))
    assert not bag.import_errors
    return bag.dags["provision_factory_batch"]


@pytest.fixture
def fake_domain(monkeypatch, fresh_emulator, aws_connection_env, factory_ca_env, airflow_db, tmp_path):
    from include import pipeline

    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    fresh_emulator.client("s3").create_bucket(Bucket=BUCKET)

    def install(chunks: list[dict], devices_per_group: dict[str, int]) -> FakeDomain:
        fake = FakeDomain(chunks, devices_per_group)
        for name in (
            "intake",
            "validate",
            "preflight",
            "issue_credentials",
            "write_parameter_files",
            "registration_task_for",
            "record_registration_task",
            "record_registration_status",
            "reconcile",
            "summarize",
        ):
            monkeypatch.setattr(pipeline, name, getattr(fake, name))
        return fake

    return install


def _states(run) -> dict[str, list[str]]:
    states: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return states


def test_two_chunks_two_groups_register_and_reconcile_each(dag, fake_domain, fresh_emulator):
    fake = fake_domain(
        [{"index": 0, "start": 0, "stop": 5}, {"index": 1, "start": 5, "stop": 9}], {"TH-100": 3, "GW-200": 2}
    )
    run = dag.test(run_conf={"manifest": "s3://factory-provisioning/inbox/a.csv"})
    assert run.state == "success", _states(run)
    assert sorted(fake.calls["issue_credentials"]) == [0, 1]
    assert fake.calls["write_parameter_files"] == [[0, 1]]
    assert fake.calls["preflight"] == [True]
    reconciled = sorted(fake.calls["reconcile"])
    assert [(group, results, errors) for group, _, results, errors in reconciled] == [
        ("GW-200", 2, 0),
        ("TH-100", 3, 0),
    ]
    task_ids = fresh_emulator.client("iot").list_thing_registration_tasks()["taskIds"]
    assert sorted(task_ids) == sorted(task for _, task, _, _ in reconciled)
    assert {status["status"] for status in fake.statuses.values()} == {"Completed"}


def test_everything_skipped_still_summarizes(dag, fake_domain, fresh_emulator):
    fake = fake_domain([], {})
    run = dag.test(run_conf={"manifest": "s3://factory-provisioning/inbox/a.csv"})
    assert run.state == "success", _states(run)
    assert fake.calls["summarize"] == ["f" * 64]
    assert "issue_credentials" not in fake.calls and "reconcile" not in fake.calls
    assert fresh_emulator.client("iot").list_thing_registration_tasks()["taskIds"] == []


def test_dry_run_stops_after_preflight(dag, fake_domain):
    fake = fake_domain([{"index": 0, "start": 0, "stop": 9}], {"TH-100": 9})
    run = dag.test(run_conf={"manifest": "/tmp/m.csv", "dry_run": True})
    assert run.state == "success", _states(run)
    assert "preflight" in fake.calls
    assert not {"issue_credentials", "write_parameter_files", "reconcile", "summarize"} & set(fake.calls)
    states = _states(run)
    assert states["summarize"] == ["skipped"] and states["register"] == ["skipped"]
