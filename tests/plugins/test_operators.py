"""StartThingRegistrationTaskOperator's branches, with include.registration replaced: start -> defer,
resume, done, a busy slot -> deferred wait, completion, and a waiter that gave up. The domain calls it makes
are tested against the emulator in tests/include/test_registration.py; here they are stand-ins."""

from __future__ import annotations

from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from include import registration
from include.records import Registration
from plugins.iot_provisioning.operators import StartThingRegistrationTaskOperator
from plugins.iot_provisioning.triggers import RegistrationSlotTrigger, ThingRegistrationTaskTrigger

BATCH = {"batch_id": "a" * 64, "run_id": "manual__1", "source": "m.csv", "bucket": "b", "work_prefix": "w/"}
UNIT = {
    "unit": "TH-100.1",
    "group": "TH-100",
    "part": 1,
    "lines": 3,
    "chunks": [0],
    "run_id": "manual__1",
    "params_key": "w/params/TH-100.1.jsonl",
    "template_key": "w/templates/TH-100.json",
    "bucket": "b",
}
ROLE = "arn:aws:iam::123456789012:role/FactoryBulkRegistration"


def _state(status: str) -> Registration:
    return Registration(task_id="t1", status=status, success_count=3 if status == "Completed" else 0)


@pytest.fixture
def domain(monkeypatch):
    calls = mock.Mock()
    monkeypatch.setattr(registration, "start_or_resume", calls.start_or_resume)
    monkeypatch.setattr(registration, "describe", calls.describe)
    monkeypatch.setattr(registration, "record_final", calls.record_final)
    monkeypatch.setattr("airflow.providers.amazon.aws.hooks.s3.S3Hook.get_conn", mock.Mock())
    return calls


@pytest.fixture
def operator(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_INVENTORY_URL", f"sqlite:///{tmp_path / 'inventory.db'}")
    op = StartThingRegistrationTaskOperator(
        task_id="register", batch=BATCH, unit=UNIT, role_arn=ROLE, waiter_delay=3, slot_delay=7
    )
    op.hook = mock.Mock()
    return op


def test_starts_and_defers_to_the_task_trigger(operator, domain):
    domain.start_or_resume.return_value = registration.Progress(
        _state("InProgress"), started=True, resumed=False
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({})
    iot, _s3, _inventory, batch, unit, role = domain.start_or_resume.call_args.args
    assert iot is operator.hook.conn and (batch.run_id, unit.unit, role) == ("manual__1", "TH-100.1", ROLE)
    trigger = deferred.value.trigger
    assert (
        isinstance(trigger, ThingRegistrationTaskTrigger) and deferred.value.method_name == "execute_complete"
    )
    assert trigger.serialize()[1]["task_id"] == "t1" and trigger.serialize()[1]["waiter_delay"] == 3


def test_a_task_that_already_ended_is_finished_without_waiting(operator, domain):
    domain.start_or_resume.return_value = registration.Progress(
        _state("Completed"), started=False, resumed=True
    )
    domain.describe.return_value = _state("Completed")
    result = operator.execute({})
    assert result["registration"]["status"] == "Completed" and result["unit"]["unit"] == "TH-100.1"
    domain.record_final.assert_called_once()


def test_a_busy_slot_defers_to_the_slot_trigger_and_comes_back_to_start(operator, domain):
    domain.start_or_resume.side_effect = registration.RegistrationSlotBusy("LimitExceededException")
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, RegistrationSlotTrigger) and deferred.value.method_name == "execute_after_slot"
    assert trigger.serialize()[1] == {
        "unit": "TH-100.1",
        "waiter_delay": 7,
        "waiter_max_attempts": 8640,
        "aws_conn_id": "aws_default",
    }
    domain.start_or_resume.side_effect = None
    domain.start_or_resume.return_value = registration.Progress(
        _state("InProgress"), started=True, resumed=False
    )
    with pytest.raises(TaskDeferred) as again:
        operator.execute_after_slot({}, {"status": "success", "unit": "TH-100.1"})
    assert isinstance(again.value.trigger, ThingRegistrationTaskTrigger)


@pytest.mark.parametrize("status", ["Completed", "Failed", "Cancelled"])
def test_execute_complete_returns_every_ended_task_for_reconcile(operator, domain, status):
    domain.describe.return_value = _state(status)
    result = operator.execute_complete(
        {}, {"status": "success" if status == "Completed" else "error", "task_id": "t1"}
    )
    assert result["registration"]["status"] == status
    assert domain.record_final.call_args.args[3].status == status


def test_a_task_still_running_when_the_waiter_gave_up_fails_this_try(operator, domain):
    domain.describe.return_value = _state("InProgress")
    with pytest.raises(AirflowException, match="still InProgress.*resumes it"):
        operator.execute_complete({}, {"status": "error", "task_id": "t1", "message": "max attempts"})
    domain.record_final.assert_not_called()


def test_execute_complete_without_event_fails(operator, domain):
    with pytest.raises(AirflowException):
        operator.execute_complete({}, None)


def test_init_does_no_io_and_declares_template_fields():
    with mock.patch.object(registration, "start_or_resume") as start:
        op = StartThingRegistrationTaskOperator(task_id="register", batch=BATCH, unit=UNIT)
    start.assert_not_called()
    assert {"batch", "unit", "role_arn"} <= set(op.template_fields)
