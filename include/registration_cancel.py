"""Stopping the AWS task of a register task that was cleared, marked failed or killed.

A registration task holds the account's only registration slot until it ends: one whose Airflow task is
gone would keep every later batch waiting. The operator's on_kill (while it runs in a worker) and the
trigger's on_kill (while it waits deferred) both call `stop_registration`; what happened goes to the
inventory's registration_tasks row, so the batch's next run reconciles the task as it ended (Cancelled:
its finished lines provisioned, the others failed and claimable again).
"""

from __future__ import annotations

from typing import Any

from include.aws_errors import error_code, is_not_found
from include.inventory import Inventory
from include.records import Registration
from include.registration import TERMINAL_STATUSES, describe

# StopThingRegistrationTask on a task that already ended (nothing to stop).
ALREADY_ENDED_CODES = frozenset({"InvalidRequestException"})


def stop_registration(iot: Any, inventory: Inventory, task_id: str, why: str) -> Registration | None:
    """StopThingRegistrationTask unless the task already ended; its state recorded. None: unknown task."""
    try:
        current = describe(iot, task_id)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise
    if current.status not in TERMINAL_STATUSES:
        try:
            iot.stop_thing_registration_task(taskId=task_id)
        except Exception as exc:
            if error_code(exc) not in ALREADY_ENDED_CODES:
                raise
        current = describe(iot, task_id)
        inventory.record_registration_stopped(task_id, current.status, f"stopped: {why}")
    return current
