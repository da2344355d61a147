"""manage_devices and audit_drift run BY AIRFLOW (dag.test, in-process) on batches provision_factory_batch
provisioned, against the emulator over HTTP; by-hand changes with the AWS CLI. The issue's Done-when items."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.inventory import Inventory
from include.inventory_schema import devices
from tests.dags.airflow_support import DAGS_DIR
from tests.e2e.dag_runs import Pipeline, states
from tests.lifecycle.registry import snapshot

pytestmark = pytest.mark.airflow
AWS = str(Path(sys.executable).with_name("aws"))


@pytest.fixture(scope="module")
def dags() -> dict[str, Any]:
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert not {k: v for k, v in bag.import_errors.items() if "manage_devices" in k or "audit_drift" in k}
    return bag.dags


def run(dag_id: str, **conf: Any) -> tuple[Any, Any]:
    """A DAG run by dag.test and the return value of its last task. The DAG is parsed afresh for each run:
    dag.test() keeps a run's conf in the DAG object's params, which would leak into the next run."""
    from airflow.models import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = DagBag(dag_folder=str(DAGS_DIR / f"{dag_id}.py")).dags[dag_id]
    dag_run = dag.test(run_conf=conf)
    leaf = next(t.task_id for t in dag.tasks if not t.downstream_task_ids)
    with create_session() as session:
        row = session.scalars(
            sa.select(XComModel).where(
                XComModel.dag_id == dag.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == leaf,
                XComModel.key == "return_value",
            )
        ).first()
        return dag_run, XComModel.deserialize_value(row) if row is not None else None


def manifest(path: Path, devices_count: int, first: int) -> Path:
    from scripts.generate_manifest import write_manifest

    buffer = io.StringIO()
    write_manifest(buffer, devices_count, 0, 0.25, seed=first, first=first)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def records(url: str) -> dict[str, dict[str, Any]]:
    with Inventory(url).engine.connect() as connection:
        return {r["thing_name"]: dict(r) for r in connection.execute(sa.select(devices)).mappings()}


def asset_events(dag_run: Any) -> list[Any]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return list(
            session.scalars(
                sa.select(AssetEvent).where(
                    AssetEvent.source_dag_id == dag_run.dag_id, AssetEvent.source_run_id == dag_run.run_id
                )
            )
        )


def test_the_dags_follow_the_conventions(dags: dict[str, Any]) -> None:
    for dag_id, tasks in (
        ("manage_devices", {"plan", "chunk_list", "act", "summarize"}),
        (
            "audit_drift",
            {
                "plan_audit",
                "chunk_list",
                "audit_chunk",
                "find_unknown",
                "report",
                "drift_found",
                "announce_drift",
                "finish",
            },
        ),
    ):
        dag = dags[dag_id]
        assert {t.task_id for t in dag.tasks} == tasks
        assert dag.catchup is False and "iot" in dag.tags and dag.doc_md.lstrip().startswith("#")
        assert dag.default_args["retries"] >= 1 and dag.default_args["retry_delay"] <= timedelta(minutes=1)
        assert dag.default_args["execution_timeout"] > timedelta(0)
        leaves = [t.task_id for t in dag.tasks if not t.downstream_task_ids]
        assert leaves == ["summarize" if dag_id == "manage_devices" else "finish"]
        for name in dag.params:
            param = dag.params.get_param(name)
            assert param.schema.get("title") and param.description and param.schema.get("section")
    manage = dags["manage_devices"]
    assert manage.params.get_param("action").schema["enum"] == [
        "deactivate",
        "revoke",
        "reactivate",
        "delete",
        "rekey",
    ]
    assert manage.get_task("act").partial_kwargs["map_index_template"]
    assert manage.get_task("act").partial_kwargs["max_active_tis_per_dagrun"] == 4
    audit = dags["audit_drift"]
    assert audit.schedule == "@daily"
    assert audit.get_task("announce_drift").outlets[0].name == "iot_registry_drift"
    from airflow.sdk.exceptions import ParamValidationError

    for name, bad in (("action", "explode"), ("rate_limit", 0), ("outcome", "provisioned")):
        with pytest.raises(ParamValidationError):
            manage.params.get_param(name).resolve(bad)


def test_delete_removes_a_batch_completely_then_changes_nothing_even_with_eventual_consistency(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    path = manifest(tmp_path / "batch.csv", 30, 62_000_000)
    provisioned, summary = pipeline.run(path)
    assert provisioned.state == "success" and summary["provisioned"] == 30, states(provisioned)
    dag_run, result = run(
        "manage_devices", batch_id=summary["batch_id"], action="delete", reason="end of life"
    )
    assert dag_run.state == "success", states(dag_run)
    assert (result["done"], result["failed"], result["accounted"]) == (30, 0, True)
    assert snapshot(pipeline.iot) == {"things": {}, "certificates": {}}
    gone = records(pipeline.settings.inventory_url)
    assert {r["status"] for r in gone.values()} == {"deleted"}
    assert {r["lifecycle_reason"] for r in gone.values()} == {"end of life"}

    _, again = run("manage_devices", batch_id=summary["batch_id"], action="delete")
    assert (again["done"], again["unchanged"], again["calls"]) == (0, 30, {})

    # Deleted devices can be provisioned again; then deleted again with AWS's eventual consistency on.
    reprovisioned, summary = pipeline.run(path)
    assert summary["provisioned"] == 30, states(reprovisioned)
    pipeline.emulator.faults.update({"detach_lag": 0.3})
    try:
        dag_run, result = run("manage_devices", batch_id=summary["batch_id"], action="delete")
    finally:
        pipeline.emulator.faults.reset()
    assert dag_run.state == "success" and (result["done"], result["failed"]) == (30, 0)
    assert result["retries"] > 0, result
    assert snapshot(pipeline.iot) == {"things": {}, "certificates": {}}


def aws_cli(*args: str) -> Any:
    done = subprocess.run([AWS, *args, "--output", "json"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_revoke_then_audit_finds_no_drift_and_changes_by_hand_are_found_and_repaired(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, summary = pipeline.run(manifest(tmp_path / "batch.csv", 20, 63_000_000))
    batch_id = summary["batch_id"]
    by_name = records(pipeline.settings.inventory_url)
    revoked_serials = sorted(r["serial_number"] for r in by_name.values())[:10]
    _, revoked = run("manage_devices", serials=revoked_serials, action="revoke")
    assert revoked["done"] == 10

    clean_run, clean = run("audit_drift", batch_id=batch_id)
    assert clean_run.state == "success" and (clean["drift"], clean["differences"]) == (False, 0), clean
    assert asset_events(clean_run) == []  # no drift, no event

    active = sorted(n for n, r in by_name.items() if r["serial_number"] not in revoked_serials)
    gone, hand_revoked = active[0], active[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", pipeline.emulator.endpoint_url)
    aws_cli(
        "iot", "detach-thing-principal", "--thing-name", gone, "--principal", by_name[gone]["certificate_arn"]
    )
    aws_cli("iot", "delete-thing", "--thing-name", gone)
    cert_id = by_name[hand_revoked]["certificate_id"]
    aws_cli("iot", "update-certificate", "--certificate-id", cert_id, "--new-status", "REVOKED")

    found_run, found = run("audit_drift", batch_id=batch_id)
    assert found["kinds"] == {"certificate_status": 1, "thing_missing": 1}, found
    [event] = asset_events(found_run)
    assert event.extra["differences"] == 2 and event.extra["drift_csv"] == found["files"]["drift"]

    _, repaired = run("audit_drift", batch_id=batch_id, repair=True)
    assert repaired["repaired"] == {"updated": 2, "adopted": 0}
    after = records(pipeline.settings.inventory_url)
    assert after[gone]["status"] == "deleted" and after[hand_revoked]["certificate_status"] == "REVOKED"


def test_a_lost_inventory_is_adopted_by_the_audit_and_a_rerun_makes_no_second_certificate(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    path = manifest(tmp_path / "batch.csv", 20, 64_000_000)
    _, summary = pipeline.run(path)
    before = snapshot(pipeline.iot)
    with Inventory(pipeline.settings.inventory_url).engine.begin() as connection:
        connection.execute(sa.delete(devices))

    _, repaired = run("audit_drift", batch_id=summary["batch_id"], repair=True)
    assert repaired["kinds"] == {"unknown_thing": 20} and repaired["repaired"]["adopted"] == 20
    rerun, again = pipeline.run(path)
    assert rerun.state == "success" and (again["skipped"], again["provisioned"]) == (20, 0), again
    assert snapshot(pipeline.iot) == before  # no second certificate on any thing


def test_a_request_without_a_selection_fails_at_once_without_retries(pipeline: Pipeline) -> None:
    dag_run, _ = run("manage_devices", action="delete")
    assert dag_run.state == "failed", states(dag_run)
    (plan,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == "plan"]
    assert (str(plan.state), plan.try_number) == ("failed", 1)  # AirflowFailException: not retried


def test_a_rerun_against_an_emptied_inventory_refuses_the_existing_things(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    path = manifest(tmp_path / "batch.csv", 20, 65_000_000)
    pipeline.run(path)
    before = snapshot(pipeline.iot)
    with Inventory(pipeline.settings.inventory_url).engine.begin() as connection:
        connection.execute(sa.delete(devices))
    rerun, again = pipeline.run(path)
    assert rerun.state == "success", states(rerun)
    reasons = {**again.get("skip_reasons", {}), **again.get("reasons", {})}
    assert reasons.get("exists_in_registry") == 20, again
    assert snapshot(pipeline.iot) == before
