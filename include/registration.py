"""Bulk thing registration tasks: start one per unit, or resume the one already started; describe; reports.

Written once and used by the register operator, the benchmark and the tests. The rule that keeps every device
at one certificate: a unit's parameter file is registered by at most one AWS task, ever. The task is found
by the inventory's record (written as an intent before StartThingRegistrationTask, and with the task id
right after), or, when a run died between the two, by the task's inputFileKey in AWS itself. A task that
ended Failed or Cancelled is reconciled as it is, never started again: a new run retries the failed devices.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from include.aws_errors import error_code
from include.inventory import Inventory
from include.records import Batch, Registration, RegistrationUnit
from include.reports import download_report_lines

TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Cancelled"})
IN_PROGRESS = "InProgress"
STARTING = "Starting"  # the inventory's status between the intent and AWS's answer
WAITING = "WaitingForSlot"  # refused for the account's single slot: no task exists yet
REPORT_TYPES = ("RESULTS", "ERRORS")
# AWS runs one registration task per account at a time; a start refused for that is waited for, not retried.
SLOT_BUSY_CODES = frozenset({"LimitExceededException"})


class RegistrationSlotBusy(Exception):
    """Another registration task holds the account's single slot; wait until it ends, then start."""


@dataclass(frozen=True)
class Progress:
    """Where a unit's registration stands after start_or_resume."""

    registration: Registration
    started: bool  # True when this call started the AWS task
    resumed: bool  # True when it found one already started (by this run, an earlier try, or a dead run)

    @property
    def done(self) -> bool:
        return self.registration.status in TERMINAL_STATUSES


def describe(iot: Any, task_id: str) -> Registration:
    """DescribeThingRegistrationTask, trimmed to what the pipeline keeps (no template body)."""
    found = iot.describe_thing_registration_task(taskId=task_id)
    return Registration(
        task_id=task_id,
        status=str(found.get("status")),
        success_count=int(found.get("successCount") or 0),
        failure_count=int(found.get("failureCount") or 0),
        percentage_progress=int(found.get("percentageProgress") or 0),
        message=str(found.get("message") or ""),
    )


def start_task(iot: Any, *, template_body: str, bucket: str, key: str, role_arn: str) -> str:
    """StartThingRegistrationTask; RegistrationSlotBusy when another task holds the account's slot."""
    try:
        response = iot.start_thing_registration_task(
            templateBody=template_body, inputFileBucket=bucket, inputFileKey=key, roleArn=role_arn
        )
    except Exception as exc:
        if error_code(exc) in SLOT_BUSY_CODES:
            raise RegistrationSlotBusy(str(exc)) from None
        raise
    return str(response["taskId"])


def find_task_for_input(iot: Any, bucket: str, key: str) -> str | None:
    """The task that reads this parameter file, if AWS has one (running ones are looked at first)."""
    paginator = iot.get_paginator("list_thing_registration_tasks")
    seen: set[str] = set()
    for status in (IN_PROGRESS, None):
        pages = paginator.paginate(**({"status": status} if status else {}))
        for task_id in (t for page in pages for t in page.get("taskIds", [])):
            if task_id in seen:
                continue
            seen.add(task_id)
            found = iot.describe_thing_registration_task(taskId=task_id)
            if found.get("inputFileBucket") == bucket and found.get("inputFileKey") == key:
                return task_id
    return None


def slot_busy(iot: Any) -> bool:
    """Whether any registration task of the account is running."""
    return bool(iot.list_thing_registration_tasks(status=IN_PROGRESS).get("taskIds"))


def report_lines(iot: Any, task_id: str, report_type: str) -> Iterator[bytes]:
    """Every line of every report file of one type (RESULTS or ERRORS), from the presigned links."""
    if report_type not in REPORT_TYPES:
        raise ValueError(f"report_type must be one of {', '.join(REPORT_TYPES)}, got {report_type!r}")
    pages = iot.get_paginator("list_thing_registration_task_reports").paginate(
        taskId=task_id, reportType=report_type
    )
    for link in [link for page in pages for link in page.get("resourceLinks", [])]:
        yield from download_report_lines(link)


def start_or_resume(
    iot: Any, s3: Any, inventory: Inventory, batch: Batch, unit: RegistrationUnit, role_arn: str
) -> Progress:
    """The unit's registration task: the recorded one, the one AWS has for its parameter file, or a new one.

    Raises RegistrationSlotBusy when a new one cannot start yet (the caller waits, deferred, and calls again).
    """
    recorded = inventory.registration_task(batch.run_id, unit.unit) or {}
    task_id = recorded.get("task_id") or unit.task_id
    if task_id is None and (recorded.get("status") == STARTING or unit.adopted_from):
        # An intent without an answer: the run died between the two, so ask AWS itself.
        task_id = find_task_for_input(iot, unit.bucket, unit.params_key)
    if task_id is not None:
        state = describe(iot, task_id)
        inventory.record_registration(
            batch.run_id, batch.batch_id, _spec(unit, task_id), task_id, state.status
        )
        return Progress(state, started=False, resumed=True)
    inventory.record_registration(batch.run_id, batch.batch_id, _spec(unit, None), None, STARTING)
    template = s3.get_object(Bucket=unit.bucket, Key=unit.template_key)["Body"].read().decode("utf-8")
    try:
        task_id = start_task(
            iot, template_body=template, bucket=unit.bucket, key=unit.params_key, role_arn=role_arn
        )
    except RegistrationSlotBusy:
        inventory.record_registration(batch.run_id, batch.batch_id, _spec(unit, None), None, WAITING)
        raise
    inventory.record_registration(batch.run_id, batch.batch_id, _spec(unit, task_id), task_id, IN_PROGRESS)
    return Progress(Registration(task_id=task_id, status=IN_PROGRESS), started=True, resumed=False)


def record_final(inventory: Inventory, batch: Batch, unit: RegistrationUnit, state: Registration) -> None:
    inventory.record_registration_status(batch.run_id, unit.unit, state.model_dump())


def _spec(unit: RegistrationUnit, task_id: str | None) -> dict[str, Any]:
    return unit.model_copy(update={"task_id": task_id}).to_xcom()


def run_to_end(
    iot: Any,
    s3: Any,
    inventory: Inventory,
    batch: Batch,
    unit: RegistrationUnit,
    role_arn: str,
    *,
    poll: float = 0.25,
    timeout: float = 3600.0,
    on_progress: Any = None,
) -> Registration:
    """Register a unit in this process (no Airflow): wait for the slot, start or resume, poll to the end.

    What the register operator does deferred; the benchmark and the tests use it. `on_progress(state)` is
    called about every five seconds while the task runs.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            progress = start_or_resume(iot, s3, inventory, batch, unit, role_arn)
            break
        except RegistrationSlotBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(poll)
    state, noted = progress.registration, time.monotonic()
    started = time.monotonic()
    while state.status not in TERMINAL_STATUSES:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"registration task {state.task_id} of unit {unit.unit} is still {state.status}"
            )
        if on_progress is not None and time.monotonic() - noted >= 5:
            noted = time.monotonic()
            on_progress(state)
        # Small tasks end within a second: poll often at first, then gently (each describe costs a call).
        time.sleep(min(poll, 0.02) if time.monotonic() - started < 2 else poll)
        state = describe(iot, state.task_id)
    record_final(inventory, batch, unit, state)
    return state
