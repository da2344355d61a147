"""A register task that is cleared, marked failed or killed stops its AWS registration task (which holds
the account's only registration slot), records it in the inventory, and the next batch can register."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from include.inventory import Inventory
from include.records import Batch, RegistrationUnit
from plugins.iot_provisioning.operators import StartThingRegistrationTaskOperator
from plugins.iot_provisioning.triggers import ThingRegistrationTaskTrigger
from tests.e2e.local_airflow import LocalAirflow, migrated_home, wait_until
from tests.iot_emulator import test_bulk

ca, faults = test_bulk.ca, test_bulk.faults  # a registered CA, the bulk input bucket, bulk-task faults
BATCH = Batch(
    batch_id="b" * 64, run_id="manual__r1", source="s3://x/m.csv", bucket="bulk-input", work_prefix="batches/"
)
UNIT = RegistrationUnit(
    unit="TH-100.1",
    group="TH-100",
    part=1,
    lines=40,
    chunks=[0],
    run_id="manual__r1",
    params_key="p.jsonl",
    template_key="t.json",
    bucket="bulk-input",
)


@pytest.fixture
def running(
    iot_client: Any,
    s3_client: Any,
    ca: Any,
    faults: Any,
    aws_connection_env: Any,
    tmp_path: Path,
    monkeypatch: Any,
) -> tuple[str, Inventory]:
    """A registration task in progress (slow lines), recorded in an inventory as the operator records it."""
    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    monkeypatch.setenv("PIPELINE_INVENTORY_URL", url)
    faults(task_line_delay=0.05)
    task_id = test_bulk.start(iot_client, s3_client, b"\n".join(test_bulk.device_lines(ca, 40)) + b"\n")
    inventory = Inventory(url)
    inventory.record_registration(BATCH.run_id, BATCH.batch_id, UNIT.to_xcom(), task_id, "InProgress")
    return task_id, inventory


def _ends_cancelled(iot: Any, task_id: str) -> dict[str, Any]:
    state = test_bulk.wait(iot, task_id, timeout=30)
    assert state["status"] == "Cancelled" and state["successCount"] < 40, state
    return state


def test_the_triggers_on_kill_stops_the_task_and_records_it(
    running: Any, iot_client: Any, s3_client: Any, ca: Any
) -> None:
    task_id, inventory = running
    trigger = ThingRegistrationTaskTrigger(task_id=task_id, aws_conn_id="aws_default")
    asyncio.run(trigger.on_kill())
    _ends_cancelled(iot_client, task_id)
    recorded = inventory.registration_task(BATCH.run_id, UNIT.unit)
    assert recorded["status"] in ("Cancelling", "Cancelled") and recorded["message"].startswith("stopped:")
    # The account's slot is free: the next registration starts at once.
    next_task = test_bulk.start(iot_client, s3_client, b"\n".join(test_bulk.device_lines(ca, 2)) + b"\n")
    assert test_bulk.wait(iot_client, next_task)["status"] == "Completed"
    asyncio.run(trigger.on_kill())  # killing again: the task has ended, nothing to stop


def test_the_operators_on_kill_stops_the_task_it_follows(running: Any, iot_client: Any) -> None:
    task_id, inventory = running
    operator = StartThingRegistrationTaskOperator(
        task_id="register", batch=BATCH.to_xcom(), unit=UNIT.to_xcom(), aws_conn_id="aws_default"
    )
    operator.on_kill()  # no task id of its own: the inventory's record names it
    _ends_cancelled(iot_client, task_id)
    assert inventory.registration_task(BATCH.run_id, UNIT.unit)["message"].startswith("stopped:")


# ---- a real `airflow dags test` process, killed as Airflow kills a cleared or failed task ----


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: Any) -> Path:
    return migrated_home(tmp_path_factory.mktemp("airflow-template"))


def _manifest(path: Path, devices: int, first: int) -> Path:
    from scripts.generate_manifest import write_manifest

    buffer = io.StringIO()
    write_manifest(buffer, devices, 0, 0.0, seed=first, first=first)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


@pytest.mark.airflow
@pytest.mark.timeout(600)
def test_killing_a_running_register_task_stops_its_aws_task_and_frees_the_slot(
    fresh_emulator: Any, aws_env: Any, template_home: Path, tmp_path: Path
) -> None:
    from include.settings import Settings
    from scripts.bootstrap import bootstrap

    state = tmp_path / "state"
    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    extra = {
        "STATE_DIR": str(state),
        "PIPELINE_INVENTORY_URL": url,
        "PIPELINE_WORKERS": "1",
        "PIPELINE_REGISTRATION_POLL_SECONDS": "1",
    }
    report = bootstrap(
        endpoint_url=fresh_emulator.endpoint_url,
        local_state=state,
        settings=Settings.from_env(extra),
        region="us-east-1",
    )
    local = LocalAirflow(
        tmp_path,
        template_home,
        fresh_emulator.endpoint_url,
        state,
        extra,
        Path(report["ca_certificate"]),
        Path(report["ca_key"]),
    )
    iot = fresh_emulator.client("iot")
    fresh_emulator.faults.update({"task_line_delay": 0.1})  # 60 lines: six seconds of registration

    first = local.start("first", {"manifest": str(_manifest(tmp_path / "first.csv", 60, 35_000_000))})
    wait_until(
        lambda: iot.list_thing_registration_tasks(status="InProgress")["taskIds"], 240, "a registration"
    )
    [task_id] = iot.list_thing_registration_tasks(status="InProgress")["taskIds"]
    os.kill(first.process.pid, signal.SIGTERM)  # what the supervisor sends a task that is cleared or failed
    try:
        state_after = _ends_cancelled(iot, task_id)
    finally:
        first.kill()
    print(
        f"registration task {task_id} ended {state_after['status']} after {state_after['successCount']} lines"
    )
    recorded = [t for t in Inventory(url).registration_tasks(first.run_id()) if t["task_id"] == task_id]
    assert recorded and recorded[0]["status"] in ("Cancelling", "Cancelled")
    assert recorded[0]["message"].startswith("stopped:")
    first.mark_failed()

    fresh_emulator.faults.reset()
    second = local.start("second", {"manifest": str(_manifest(tmp_path / "second.csv", 5, 36_000_000))})
    assert second.wait() == 0, second.output()[-3000:]
    done = [t for t in Inventory(url).registration_tasks(second.run_id())]
    assert [t["status"] for t in done] == ["Completed"]
