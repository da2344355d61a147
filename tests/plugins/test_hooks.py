"""IotHook: request builders without AWS, the waiter JSON with canned responses, paging on the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import WaiterError
from botocore.stub import Stubber

from plugins.iot_provisioning.hooks import (
    IotHook,
    _report_args,
    _start_task_args,
    _task_summary,
    _with_default_retries,
)

WAITER_JSON = Path(__file__).resolve().parents[2] / "plugins" / "iot_provisioning" / "waiters" / "iot.json"


def test_start_task_args_use_botocore_member_names():
    assert _start_task_args(
        template_body="{}",
        input_file_bucket="b",
        input_file_key="k/params.jsonl",
        role_arn="arn:aws:iam::1:role/r",
    ) == {
        "templateBody": "{}",
        "inputFileBucket": "b",
        "inputFileKey": "k/params.jsonl",
        "roleArn": "arn:aws:iam::1:role/r",
    }


def test_start_task_args_name_every_missing_member():
    with pytest.raises(ValueError, match="template_body, role_arn"):
        _start_task_args(template_body="", input_file_bucket="b", input_file_key="k", role_arn="")


def test_report_args_refuse_unknown_type():
    assert _report_args("t1", "ERRORS") == {"taskId": "t1", "reportType": "ERRORS"}
    with pytest.raises(ValueError, match="RESULTS, ERRORS"):
        _report_args("t1", "results")


def test_task_summary_keeps_counts_and_message_not_the_template():
    summary = _task_summary(
        {
            "taskId": "t1",
            "status": "Failed",
            "templateBody": "{...}",
            "message": "Access denied",
            "successCount": 2,
        }
    )
    assert summary == {
        "task_id": "t1",
        "status": "Failed",
        "success_count": 2,
        "failure_count": 0,
        "percentage_progress": 0,
        "message": "Access denied",
    }


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


@pytest.fixture
def offline_hook(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return IotHook(aws_conn_id=None, region_name="us-east-1")


def _describe(status: str, progress: int = 0) -> dict:
    return {
        "taskId": "t1",
        "status": status,
        "percentageProgress": progress,
        "successCount": 1,
        "failureCount": 0,
    }


def test_custom_waiter_found_by_the_hook_and_polls_until_completed(offline_hook):
    assert "thing_registration_task_complete" in offline_hook.list_waiters()
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


def test_hook_pages_through_tasks_and_reports_on_the_emulator(fresh_emulator, aws_connection_env):
    s3 = fresh_emulator.client("s3")
    s3.create_bucket(Bucket="hook-test")
    s3.put_object(Bucket="hook-test", Key="p.jsonl", Body=b'{"ThingName": "hook-test-1"}\n')
    template = {
        "Parameters": {"ThingName": {"Type": "String"}},
        "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}}},
    }
    hook = IotHook(aws_conn_id="aws_default")
    task_id = hook.start_thing_registration_task(
        template_body=json.dumps(template),
        input_file_bucket="hook-test",
        input_file_key="p.jsonl",
        role_arn="arn:aws:iam::123456789012:role/FactoryBulkRegistration",
    )
    hook.get_waiter("thing_registration_task_complete").wait(taskId=task_id, WaiterConfig={"Delay": 1})
    assert hook.describe_thing_registration_task(task_id)["status"] == "Completed"
    assert hook.list_thing_registration_tasks() == [task_id]
    assert hook.list_thing_registration_tasks(status="InProgress") == []
    links = hook.list_thing_registration_task_report_links(task_id, "RESULTS")
    assert links and all(link.startswith("http") for link in links)
