"""IotHook: standard retries by default, and the custom waiters found, valid, and working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import WaiterError
from botocore.stub import Stubber

from plugins.iot_provisioning.hooks import IotHook, _with_default_retries

WAITER_JSON = Path(__file__).resolve().parents[2] / "plugins" / "iot_provisioning" / "waiters" / "iot.json"


def test_default_retry_mode_is_standard_unless_the_caller_chose():
    assert _with_default_retries(None).retries == {"mode": "standard", "max_attempts": 8}
    assert _with_default_retries({"retries": {"mode": "legacy", "max_attempts": 2}}).retries == {
        "mode": "legacy",
        "max_attempts": 2,
    }
    merged = _with_default_retries({"connect_timeout": 3})
    assert merged.connect_timeout == 3 and merged.retries["mode"] == "standard"


def test_waiter_json_is_a_valid_botocore_model():
    from botocore.waiter import WaiterModel

    model = WaiterModel(json.loads(WAITER_JSON.read_text()))
    waiter = model.get_waiter("thing_registration_task_complete")
    assert waiter.operation == "DescribeThingRegistrationTask"
    states = {a.expected: a.state for a in waiter.acceptors}
    assert states == {
        "Completed": "success",
        "Failed": "failure",
        "Cancelled": "failure",
        "InProgress": "retry",
        "Cancelling": "retry",
    }
    slot = model.get_waiter("registration_slot_free")
    assert slot.operation == "ListThingRegistrationTasks"
    assert [(a.argument, a.expected, a.state) for a in slot.acceptors] == [("length(taskIds)", 0, "success")]


@pytest.fixture
def offline_hook(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return IotHook(aws_conn_id=None, region_name="us-east-1")


def _describe(status: str, progress: int = 0) -> dict:
    return {"taskId": "t1", "status": status, "percentageProgress": progress, "successCount": 1}


def test_custom_waiter_found_by_the_hook_and_polls_until_completed(offline_hook):
    assert {"thing_registration_task_complete", "registration_slot_free"} <= set(offline_hook.list_waiters())
    waiter = offline_hook.get_waiter("thing_registration_task_complete")
    with Stubber(offline_hook.conn) as stub:
        for status, progress in (("InProgress", 10), ("InProgress", 60), ("Completed", 100)):
            stub.add_response(
                "describe_thing_registration_task", _describe(status, progress), {"taskId": "t1"}
            )
        waiter.wait(taskId="t1", WaiterConfig={"Delay": 0, "MaxAttempts": 5})
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("status", ["Failed", "Cancelled"])
def test_custom_waiter_fails_on_failed_and_cancelled(offline_hook, status):
    waiter = offline_hook.get_waiter("thing_registration_task_complete")
    with Stubber(offline_hook.conn) as stub:
        stub.add_response("describe_thing_registration_task", _describe(status), {"taskId": "t1"})
        with pytest.raises(WaiterError, match="terminal failure"):
            waiter.wait(taskId="t1", WaiterConfig={"Delay": 0, "MaxAttempts": 5})


def test_slot_waiter_waits_until_no_task_runs(offline_hook):
    waiter = offline_hook.get_waiter("registration_slot_free")
    with Stubber(offline_hook.conn) as stub:
        for running in (["t1"], ["t1"], []):
            stub.add_response("list_thing_registration_tasks", {"taskIds": running}, {"status": "InProgress"})
        waiter.wait(status="InProgress", WaiterConfig={"Delay": 0, "MaxAttempts": 5})
        stub.assert_no_pending_responses()
