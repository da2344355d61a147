"""StartThingRegistrationTaskOperator with the hook mocked: exact requests, resume, retries, completion."""

from __future__ import annotations

from unittest import mock

import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from botocore.exceptions import ClientError

from plugins.iot_provisioning.operators import StartThingRegistrationTaskOperator, _backoff_delays
from plugins.iot_provisioning.triggers import ThingRegistrationTaskTrigger

BATCH = {"batch_id": "a" * 64, "run_id": "manual__1"}
GROUP = {
    "group": "TH-100",
    "lines": 3,
    "bucket": "factory-provisioning",
    "params_key": "batches/aaa/TH-100/params.jsonl",
    "template_key": "batches/aaa/TH-100/template.json",
}
ROLE = "arn:aws:iam::123456789012:role/FactoryBulkRegistration"


def _state(task_id: str, status: str, message: str = "") -> dict:
    return {
        "task_id": task_id,
        "status": status,
        "success_count": 3 if status == "Completed" else 0,
        "failure_count": 0,
        "percentage_progress": 100 if status == "Completed" else 40,
        "message": message,
    }


class Inventory:
    """Fake of include.pipeline's registration bookkeeping."""

    def __init__(self, recorded: str | None = None) -> None:
        self.recorded = recorded
        self.started: list[str] = []
        self.statuses: list[dict] = []

    def registration_task_for(self, settings, batch, group):
        assert (batch, group) == (BATCH, "TH-100")
        return self.recorded

    def record_registration_task(self, settings, batch, group, task_id):
        self.started.append(task_id)
        self.recorded = task_id

    def record_registration_status(self, settings, batch, group, registration):
        self.statuses.append(registration)


@pytest.fixture
def inventory(monkeypatch):
    from include import pipeline

    def install(recorded: str | None = None) -> Inventory:
        fake = Inventory(recorded)
        for name in ("registration_task_for", "record_registration_task", "record_registration_status"):
            monkeypatch.setattr(pipeline, name, getattr(fake, name))
        return fake

    return install


@pytest.fixture
def operator(monkeypatch):
    monkeypatch.setattr(S3Hook, "read_key", mock.Mock(return_value='{"Resources": {}}'))
    op = StartThingRegistrationTaskOperator(
        task_id="register", batch=BATCH, registration_group=GROUP, role_arn=ROLE, start_backoff=0.5
    )
    op.hook = mock.Mock()
    return op


def test_starts_records_and_defers_with_exact_request(operator, inventory):
    fake = inventory(None)
    operator.hook.start_thing_registration_task.return_value = "task-1"
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({})
    operator.hook.start_thing_registration_task.assert_called_once_with(
        template_body='{"Resources": {}}',
        input_file_bucket="factory-provisioning",
        input_file_key="batches/aaa/TH-100/params.jsonl",
        role_arn=ROLE,
    )
    S3Hook.read_key.assert_called_once_with(key=GROUP["template_key"], bucket_name=GROUP["bucket"])
    assert fake.started == ["task-1"]
    trigger = deferred.value.trigger
    assert isinstance(trigger, ThingRegistrationTaskTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert trigger.serialize()[1]["task_id"] == "task-1"


def test_resumes_a_recorded_task_that_still_runs_without_starting_another(operator, inventory):
    fake = inventory("task-0")
    operator.hook.describe_thing_registration_task.return_value = _state("task-0", "InProgress")
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({})
    operator.hook.start_thing_registration_task.assert_not_called()
    assert fake.started == []
    assert deferred.value.trigger.serialize()[1]["task_id"] == "task-0"


def test_a_recorded_completed_task_is_reused(operator, inventory):
    fake = inventory("task-0")
    operator.hook.describe_thing_registration_task.return_value = _state("task-0", "Completed")
    result = operator.execute({})
    operator.hook.start_thing_registration_task.assert_not_called()
    assert result["task_id"] == "task-0" and result["status"] == "Completed"
    assert result["registration_group"] == GROUP and result["group"] == "TH-100"
    assert fake.statuses[-1]["status"] == "Completed"


def test_a_recorded_failed_task_is_replaced_by_a_new_one(operator, inventory):
    fake = inventory("task-0")
    operator.hook.describe_thing_registration_task.return_value = _state("task-0", "Failed", "bad template")
    operator.hook.start_thing_registration_task.return_value = "task-2"
    with pytest.raises(TaskDeferred):
        operator.execute({})
    assert fake.started == ["task-2"]


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "Rate exceeded"}}, "StartThingRegistrationTask")


def test_throttled_start_is_retried_with_backoff(operator, inventory, monkeypatch):
    inventory(None)
    sleeps: list[float] = []
    monkeypatch.setattr("plugins.iot_provisioning.operators.time.sleep", sleeps.append)
    operator.hook.start_thing_registration_task.side_effect = [
        _client_error("ThrottlingException"),
        _client_error("LimitExceededException"),
        "task-3",
    ]
    with pytest.raises(TaskDeferred):
        operator.execute({})
    assert operator.hook.start_thing_registration_task.call_count == 3
    assert sleeps == [0.5, 1.0]


def test_retries_are_bounded(operator, inventory, monkeypatch):
    inventory(None)
    monkeypatch.setattr("plugins.iot_provisioning.operators.time.sleep", lambda _: None)
    operator.hook.start_thing_registration_task.side_effect = _client_error("ThrottlingException")
    with pytest.raises(ClientError):
        operator.execute({})
    assert operator.hook.start_thing_registration_task.call_count == operator.start_attempts


def test_other_errors_are_not_retried(operator, inventory):
    inventory(None)
    operator.hook.start_thing_registration_task.side_effect = _client_error("InvalidRequestException")
    with pytest.raises(ClientError):
        operator.execute({})
    assert operator.hook.start_thing_registration_task.call_count == 1


def test_execute_complete_returns_counts_and_records_status(operator, inventory):
    fake = inventory("task-1")
    operator.hook.describe_thing_registration_task.return_value = _state("task-1", "Completed")
    result = operator.execute_complete({}, {"status": "success", "task_id": "task-1"})
    assert result["success_count"] == 3 and result["task_id"] == "task-1"
    assert fake.statuses == [_state("task-1", "Completed")]


@pytest.mark.parametrize("status", ["Failed", "Cancelled"])
def test_execute_complete_fails_with_aws_message(operator, inventory, status):
    fake = inventory("task-1")
    operator.hook.describe_thing_registration_task.return_value = _state(
        "task-1", status, "Access denied reading s3://factory-provisioning/x"
    )
    with pytest.raises(AirflowException, match=f"ended {status}: Access denied reading s3://"):
        operator.execute_complete({}, {"status": "error", "task_id": "task-1", "message": "waiter"})
    assert fake.statuses[-1]["status"] == status


def test_execute_complete_without_event_fails():
    op = StartThingRegistrationTaskOperator(task_id="r", batch=BATCH, registration_group=GROUP)
    with pytest.raises(AirflowException, match="event is None"):
        op.execute_complete({}, None)


def test_init_does_no_io_and_declares_template_fields():
    with mock.patch.object(S3Hook, "read_key") as read_key:
        op = StartThingRegistrationTaskOperator(task_id="r", batch=BATCH, registration_group=GROUP)
    read_key.assert_not_called()
    assert {"batch", "registration_group", "role_arn", "aws_conn_id"} <= set(op.template_fields)
    assert op.deferrable is True


def test_backoff_doubles_and_caps():
    assert _backoff_delays(5, 10) == [10, 20, 40, 60]
    assert _backoff_delays(1, 10) == []
