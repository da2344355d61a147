"""include.registration against the emulator over HTTP: one AWS task per unit, ever; resume; the slot."""

from __future__ import annotations

import json
import time

import pytest

from include import registration
from include.inventory import Inventory
from include.records import Batch, RegistrationUnit

ROLE = "arn:aws:iam::123456789012:role/FactoryBulkRegistration"
BUCKET = "registration-test"
TEMPLATE = {
    "Parameters": {"ThingName": {"Type": "String"}},
    "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}}},
}


@pytest.fixture
def world(fresh_emulator, tmp_path):
    s3, iot = fresh_emulator.client("s3"), fresh_emulator.client("iot")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="template.json", Body=json.dumps(TEMPLATE).encode())
    inventory = Inventory(f"sqlite:///{tmp_path / 'inventory.db'}")
    batch = Batch(
        batch_id="b" * 64, run_id="manual__1", source="m.csv", bucket=BUCKET, work_prefix="batches/"
    )
    return fresh_emulator, s3, iot, inventory, batch


def _unit(s3, name: str, lines: int, run_id: str = "manual__1") -> RegistrationUnit:
    body = "".join(json.dumps({"ThingName": f"{name}-{n}"}) + "\n" for n in range(lines))
    s3.put_object(Bucket=BUCKET, Key=f"{name}.jsonl", Body=body.encode())
    return RegistrationUnit(
        unit=name, group=name, part=1, lines=lines, chunks=[0], run_id=run_id, params_key=f"{name}.jsonl",
        template_key="template.json", bucket=BUCKET,
    )  # fmt: skip


def _wait(iot, task_id: str) -> registration.Registration:
    for _ in range(200):
        state = registration.describe(iot, task_id)
        if state.status in registration.TERMINAL_STATUSES:
            return state
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not end")


def test_start_records_the_intent_then_the_task_and_a_second_call_resumes_it(world):
    _, s3, iot, inventory, batch = world
    unit = _unit(s3, "first", 3)
    progress = registration.start_or_resume(iot, s3, inventory, batch, unit, ROLE)
    assert progress.started and not progress.resumed
    recorded = inventory.registration_task(batch.run_id, "first")
    assert (
        recorded["task_id"] == progress.registration.task_id
        and recorded["spec"]["params_key"] == "first.jsonl"
    )
    again = registration.start_or_resume(iot, s3, inventory, batch, unit, ROLE)
    assert again.resumed and again.registration.task_id == progress.registration.task_id
    state = _wait(iot, progress.registration.task_id)
    assert (state.status, state.success_count) == ("Completed", 3)
    lines = list(registration.report_lines(iot, state.task_id, "RESULTS"))
    assert sorted(json.loads(line)["lineNumber"] for line in lines) == [1, 2, 3]
    assert iot.list_thing_registration_tasks()["taskIds"] == [state.task_id]


def test_an_intent_without_a_task_id_is_resolved_by_the_tasks_input_file(world):
    """A run that died between StartThingRegistrationTask and recording its answer: AWS is asked."""
    _, s3, iot, inventory, batch = world
    unit = _unit(s3, "lost", 2)
    task_id = registration.start_task(
        iot, template_body=json.dumps(TEMPLATE), bucket=BUCKET, key="lost.jsonl", role_arn=ROLE
    )
    inventory.record_registration(batch.run_id, batch.batch_id, unit.to_xcom(), None, registration.STARTING)
    progress = registration.start_or_resume(iot, s3, inventory, batch, unit, ROLE)
    assert progress.resumed and progress.registration.task_id == task_id
    assert registration.find_task_for_input(iot, BUCKET, "other.jsonl") is None
    _wait(iot, task_id)
    assert iot.list_thing_registration_tasks()["taskIds"] == [task_id]


def test_a_busy_slot_is_reported_not_retried_and_an_ended_task_is_never_started_again(world):
    emulator, s3, iot, inventory, batch = world
    emulator.faults.update({"task_line_delay": 0.05})
    first = registration.start_or_resume(iot, s3, inventory, batch, _unit(s3, "long", 10), ROLE)
    second = _unit(s3, "waiting", 1)
    assert registration.slot_busy(iot)
    with pytest.raises(registration.RegistrationSlotBusy):
        registration.start_or_resume(iot, s3, inventory, batch, second, ROLE)
    assert inventory.registration_task(batch.run_id, "waiting")["status"] == registration.WAITING
    _wait(iot, first.registration.task_id)
    emulator.faults.reset()
    assert not registration.slot_busy(iot)
    started = registration.start_or_resume(iot, s3, inventory, batch, second, ROLE)
    assert started.started
    # A task that ended without completing (here: stopped) is followed as it ended, never replaced.
    _wait(iot, started.registration.task_id)
    emulator.faults.update({"task_line_delay": 0.2})
    stopped = _unit(s3, "stopped", 20)
    running = registration.start_or_resume(iot, s3, inventory, batch, stopped, ROLE)
    iot.stop_thing_registration_task(taskId=running.registration.task_id)
    state = _wait(iot, running.registration.task_id)
    assert state.status == "Cancelled"
    again = registration.start_or_resume(iot, s3, inventory, batch, stopped, ROLE)
    assert again.resumed and again.done and again.registration.task_id == state.task_id
    assert len(iot.list_thing_registration_tasks()["taskIds"]) == 3
