"""The provision_factory_batch wiring run by Airflow (dag.test) with the domain stages faked, IoT emulated.

The domain package has its own tests; here the fakes only record what each task received, so the test
proves the DAG's shape: data passed between tasks, mapping per chunk and per group, the dry-run
short-circuit, the empty batch (everything skipped) and the real register operator against the emulator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from include.records import Batch, Checks, Chunk, ChunkResult, Reconciled, RegistrationUnit, Validated
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

    def __init__(self, chunks: int, devices_per_group: dict[str, int]) -> None:
        self.chunks = chunks
        self.devices_per_group = devices_per_group
        self.calls: dict[str, list[Any]] = {}

    def _record(self, name: str, value: Any) -> None:
        self.calls.setdefault(name, []).append(value)

    def intake(
        self,
        s3,
        settings,
        source,
        *,
        run_id,
        dag_id=None,
        product=None,
        catalog=None,
        dry_run=False,
        max_devices=None,
    ):
        self._record("intake", {"source": source, "run_id": run_id, "dag_id": dag_id, "dry_run": dry_run})
        return Batch(
            batch_id="f" * 64, run_id=run_id, source=source, dry_run=dry_run, bucket=BUCKET, work_prefix="b/"
        )

    def validate(self, s3, settings, batch):
        self._record("validate", batch.batch_id)
        return Validated(
            rows=10, accepted=9, quarantined=1, reasons={"invalid_serial": 1}, ignored_columns=[],
            accepted_key="a", quarantine_key="q",
        )  # fmt: skip

    def preflight(self, s3, iot, settings, batch, *, ca_certificate_pem=None, is_live=None, acm_pca=None):
        self._record("preflight", ("BEGIN CERTIFICATE" in (ca_certificate_pem or ""), is_live("x", None)))
        chunks = [
            Chunk(index=i, group="TH-100", unit="TH-100.1", devices=1, first_row=i + 1, last_row=i + 1)
            for i in range(self.chunks)
        ]
        return Checks(
            accepted=9, to_provision=len(chunks), skipped=0, adopted=0, chunks=chunks, units=[],
            report_key="p", dry_run=batch.dry_run, problems=[],
        )  # fmt: skip

    def issue_credentials(
        self, s3, settings, batch, chunk, ca_certificate_pem, ca_private_key_pem, *, iot=None, acm_pca=None
    ):
        assert iot is not None and acm_pca is not None  # clients for the modes that call AWS while issuing
        self._record("issue_credentials", chunk.index)
        assert "PRIVATE KEY" in ca_private_key_pem
        return ChunkResult(
            index=chunk.index,
            unit=chunk.unit,
            devices=1,
            issued=1,
            refused=0,
            bundle_key=None,
            params_bytes=1,
        )

    def write_parameter_files(self, s3, settings, batch, checks, results):
        self._record("write_parameter_files", sorted(r.index for r in results))
        units = []
        for group, count in self.devices_per_group.items():
            lines = "".join(json.dumps({"ThingName": f"{group}-{n}"}) + "\n" for n in range(count))
            s3.put_object(Bucket=BUCKET, Key=f"b/{group}/params.jsonl", Body=lines.encode())
            s3.put_object(Bucket=BUCKET, Key=f"b/{group}/template.json", Body=TEMPLATE.encode())
            units.append(
                RegistrationUnit(
                    unit=f"{group}.1",
                    group=group,
                    part=1,
                    lines=count,
                    chunks=[0],
                    run_id=batch.run_id,
                    params_key=f"b/{group}/params.jsonl",
                    template_key=f"b/{group}/template.json",
                    bucket=BUCKET,
                )  # fmt: skip
            )
        return units

    def reconcile_task(self, iot, s3, settings, batch, unit, registration):
        from include.registration import report_lines

        results = list(report_lines(iot, registration.task_id, "RESULTS"))
        errors = list(report_lines(iot, registration.task_id, "ERRORS"))
        self._record(
            "reconcile", (unit.unit, registration.task_id, registration.status, len(results), len(errors))
        )
        return Reconciled(
            unit=unit.unit, task_id=registration.task_id, provisioned=len(results), failed=len(errors),
            offset_mismatches=0,
        )  # fmt: skip

    def summarize(self, s3, settings, batch):
        self._record("summarize", (batch.batch_id, batch.dry_run))
        counts = {"provisioned": 9, "failed": 0, "quarantined": 1, "skipped": 0}
        return {
            "batch_id": batch.batch_id, "run_id": batch.run_id, "source": batch.source, "rows": 10, **counts,
            "reasons": {"invalid_serial": 1}, "errors": {}, "durations": {"total_seconds": 1.0, "stages": []},
            "files": {},
        }  # fmt: skip


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
        for name in ("intake", "validate", "preflight", "issue_credentials", "write_parameter_files"):
            monkeypatch.setattr(pipeline, name, getattr(fake, name))
        for name in ("reconcile_task", "summarize"):
            monkeypatch.setattr(pipeline, name, getattr(fake, name))
        return fake

    return install


def _states(run) -> dict[str, list[str]]:
    states: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return states


def test_two_chunks_two_units_register_and_reconcile_each(dag, fake_domain, fresh_emulator):
    fake = fake_domain(2, {"TH-100": 3, "GW-200": 2})
    run = dag.test(run_conf={"manifest": "s3://factory-provisioning/inbox/a.csv"})
    assert run.state == "success", _states(run)
    assert fake.calls["intake"][0]["dag_id"] == "provision_factory_batch"
    assert sorted(fake.calls["issue_credentials"]) == [0, 1]
    assert fake.calls["write_parameter_files"] == [[0, 1]]
    # The CA certificate reaches pre-flight, and so does Airflow's answer on other runs (unknown: None).
    assert fake.calls["preflight"] == [(True, None)]
    reconciled = sorted(fake.calls["reconcile"])
    assert [(unit, status, results, errors) for unit, _, status, results, errors in reconciled] == [
        ("GW-200.1", "Completed", 2, 0),
        ("TH-100.1", "Completed", 3, 0),
    ]
    task_ids = fresh_emulator.client("iot").list_thing_registration_tasks()["taskIds"]
    assert sorted(task_ids) == sorted(task for _, task, _, _, _ in reconciled)
    labels = {ti.task_id: ti.rendered_map_index for ti in run.get_task_instances() if ti.map_index >= 0}
    assert labels["register"] in ("GW-200.1", "TH-100.1")
    assert labels["issue_credentials"].startswith("chunk ") and "rows" in labels["issue_credentials"]


def test_everything_skipped_still_summarizes(dag, fake_domain, fresh_emulator):
    fake = fake_domain(0, {})
    run = dag.test(run_conf={"manifest": "s3://factory-provisioning/inbox/a.csv"})
    assert run.state == "success", _states(run)
    assert fake.calls["summarize"] == [("f" * 64, False)]
    assert "issue_credentials" not in fake.calls and "reconcile" not in fake.calls
    assert fresh_emulator.client("iot").list_thing_registration_tasks()["taskIds"] == []


def test_dry_run_skips_the_work_and_still_summarizes(dag, fake_domain):
    fake = fake_domain(1, {"TH-100": 9})
    run = dag.test(run_conf={"manifest": "/tmp/m.csv", "dry_run": True})
    assert run.state == "success", _states(run)
    assert "preflight" in fake.calls and fake.calls["summarize"] == [("f" * 64, True)]
    assert not {"issue_credentials", "reconcile"} & set(fake.calls)
    states = _states(run)
    assert states["register"] == ["skipped"] and states["issue_credentials"] == ["skipped"]


def test_an_input_error_fails_at_once_without_retries(dag, fake_domain, monkeypatch):
    from include import pipeline
    from include.errors import ManifestError

    fake_domain(1, {})

    def refuse(*args, **kwargs):
        raise ManifestError("the manifest lacks required column(s) ['model']")

    monkeypatch.setattr(pipeline, "validate", refuse)
    run = dag.test(run_conf={"manifest": "/tmp/m.csv"})
    assert run.state == "failed"
    validate = next(ti for ti in run.get_task_instances() if ti.task_id == "validate")
    assert str(validate.state) == "failed" and validate.try_number == 1
