"""ThingRegistrationTaskTrigger: JSON-safe serialisation, one event per run, progress in the log."""

from __future__ import annotations

import asyncio
import json
import logging
from unittest import mock

import pytest
from botocore.exceptions import WaiterError

from plugins.iot_provisioning.hooks import IotHook
from plugins.iot_provisioning.triggers import ThingRegistrationTaskTrigger


def test_serialize_round_trips_with_json_safe_kwargs():
    trigger = ThingRegistrationTaskTrigger(
        task_id="t1", waiter_delay=3, waiter_max_attempts=7, aws_conn_id="aws_x", region_name="eu-west-1"
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "plugins.iot_provisioning.triggers.ThingRegistrationTaskTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs == {
        "task_id": "t1",
        "waiter_delay": 3,
        "waiter_max_attempts": 7,
        "aws_conn_id": "aws_x",
        "region_name": "eu-west-1",
    }
    again = ThingRegistrationTaskTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert isinstance(again.hook(), IotHook)


def _waiter_error(status: str, progress: int) -> WaiterError:
    response = {"taskId": "t1", "status": status, "percentageProgress": progress, "successCount": progress}
    reason = "Waiter encountered a terminal failure state" if status == "Failed" else "Max attempts exceeded"
    return WaiterError(name="thing_registration_task_complete", reason=reason, last_response=response)


def _run(trigger, waiter) -> list:
    client = mock.MagicMock()
    context = mock.AsyncMock()
    context.__aenter__.return_value = client
    with (
        mock.patch.object(IotHook, "get_async_conn", mock.AsyncMock(return_value=context)),
        mock.patch.object(IotHook, "get_waiter", return_value=waiter),
    ):

        async def collect():
            return [event async for event in trigger.run()]

        return asyncio.run(collect())


def test_run_logs_progress_each_poll_and_yields_one_success_event(caplog):
    waiter = mock.MagicMock()
    waiter.wait = mock.AsyncMock(
        side_effect=[_waiter_error("InProgress", 30), _waiter_error("InProgress", 80), None]
    )
    trigger = ThingRegistrationTaskTrigger(task_id="t1", waiter_delay=0, waiter_max_attempts=5)
    with caplog.at_level(logging.INFO):
        events = _run(trigger, waiter)
    assert [event.payload for event in events] == [{"status": "success", "task_id": "t1"}]
    progress = [r.getMessage() for r in caplog.records if "Thing registration task t1" in r.getMessage()]
    assert any("'percentageProgress': 30" in line for line in progress)
    assert any("'percentageProgress': 80" in line for line in progress)
    waiter.wait.assert_awaited_with(taskId="t1", WaiterConfig={"MaxAttempts": 1})


def test_run_yields_one_error_event_on_failed():
    waiter = mock.MagicMock()
    waiter.wait = mock.AsyncMock(side_effect=[_waiter_error("Failed", 10)])
    events = _run(ThingRegistrationTaskTrigger(task_id="t1", waiter_delay=0, waiter_max_attempts=5), waiter)
    assert len(events) == 1
    assert events[0].payload["status"] == "error" and events[0].payload["task_id"] == "t1"
    assert "did not complete" in events[0].payload["message"]


@pytest.mark.parametrize("attempts", [2])
def test_run_gives_up_after_max_attempts_with_one_error_event(attempts):
    waiter = mock.MagicMock()
    waiter.wait = mock.AsyncMock(side_effect=[_waiter_error("InProgress", 1)] * attempts)
    events = _run(
        ThingRegistrationTaskTrigger(task_id="t1", waiter_delay=0, waiter_max_attempts=attempts), waiter
    )
    assert len(events) == 1 and events[0].payload["status"] == "error"
    assert "max attempts" in events[0].payload["message"]


def test_slot_trigger_is_configuration_and_yields_one_event_when_the_slot_is_free():
    from plugins.iot_provisioning.triggers import RegistrationSlotTrigger

    trigger = RegistrationSlotTrigger(
        unit="TH-100.2", waiter_delay=5, waiter_max_attempts=9, aws_conn_id="aws_x"
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "plugins.iot_provisioning.triggers.RegistrationSlotTrigger"
    assert kwargs == {"unit": "TH-100.2", "waiter_delay": 5, "waiter_max_attempts": 9, "aws_conn_id": "aws_x"}
    waiter = mock.MagicMock()
    busy = WaiterError(
        name="registration_slot_free", reason="Max attempts exceeded", last_response={"taskIds": ["t"]}
    )
    waiter.wait = mock.AsyncMock(side_effect=[busy, None])
    events = _run(RegistrationSlotTrigger(unit="TH-100.2", waiter_delay=0, waiter_max_attempts=5), waiter)
    assert [event.payload for event in events] == [{"status": "success", "unit": "TH-100.2"}]
    waiter.wait.assert_awaited_with(status="InProgress", WaiterConfig={"MaxAttempts": 1})
