"""Bulk thing registration tasks as operations: start, describe, list, stop and list their reports.

The work itself runs in the background (``bulk_runner``); a task's record in the state is its checkpoint.
Reports are JSON lines in AWS's format (aws-iot-facts.md 1.7), stored as parts ``<taskId>-1``, ``-2``...
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from iot_emulator.errors import invalid_request, limit_exceeded, not_found
from iot_emulator.paging import paginate
from iot_emulator.service_base import ServiceBase
from iot_emulator.template_language import compile_template

if TYPE_CHECKING:
    from iot_emulator.bulk_runner import BulkRunner

ACTIVE_STATUSES = ("InProgress", "Cancelling")
STATUSES = ("InProgress", "Completed", "Failed", "Cancelled", "Cancelling")
REPORT_TYPES = ("RESULTS", "ERRORS")
CANCELLED_MESSAGE = "The task was cancelled by StopThingRegistrationTask."
_DESCRIBE_FIELDS = (
    "taskId",
    "creationDate",
    "lastModifiedDate",
    "templateBody",
    "inputFileBucket",
    "inputFileKey",
    "roleArn",
    "status",
    "message",
    "successCount",
    "failureCount",
    "percentageProgress",
)


def report_bucket(account_id: str) -> str:
    """The internal bucket the reports of an account's tasks are written to."""
    return f"aws-iot-bulk-registration-reports-{account_id}"


def report_key(task_id: str, report_type: str, part: int) -> str:
    return f"{report_type.lower()}/{task_id}-{part}"


def count_lines(data: bytes) -> int:
    """Lines of a JSON-lines file: a final newline does not start another line."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


class BulkMixin(ServiceBase):
    """The operations on thing registration tasks; ``runner`` does the registering."""

    runner: BulkRunner

    def _bulk_task(self, task_id: str) -> dict[str, Any]:
        task = self.state.bulk_tasks.get(task_id)
        if task is None:
            raise not_found(f"Thing registration task {task_id} does not exist.")
        return task

    def start_thing_registration_task(
        self, templateBody: str, inputFileBucket: str, inputFileKey: str, roleArn: str
    ) -> dict[str, Any]:
        tasks = self.state.bulk_tasks
        running = [t["taskId"] for t in tasks.values() if t["status"] in ACTIVE_STATUSES]
        if running:
            # AWS allows one registration task at a time per account; the error it returns is undocumented.
            raise limit_exceeded(
                f"Task {running[0]} is still running: "
                "only one bulk registration task can be in progress at a time"
            )
        compile_template(templateBody)
        data = self.s3.get_object(inputFileBucket, inputFileKey)
        now = self.now()
        task_id = str(uuid.uuid4())
        tasks[task_id] = {
            "taskId": task_id,
            "creationDate": now,
            "lastModifiedDate": now,
            "templateBody": templateBody,
            "inputFileBucket": inputFileBucket,
            "inputFileKey": inputFileKey,
            "roleArn": roleArn,
            "status": "InProgress",
            "message": None,
            "successCount": 0,
            "failureCount": 0,
            "percentageProgress": 0,
            # checkpoint: where the runner resumes, and report lines not yet written as a part
            "totalLines": count_lines(data),
            "linesDone": 0,
            "offset": 0,
            "pending": {"RESULTS": [], "ERRORS": []},
            "parts": {"RESULTS": 0, "ERRORS": 0},
        }
        self.runner.start(task_id, data)
        return {"taskId": task_id}

    def describe_thing_registration_task(self, taskId: str) -> dict[str, Any]:
        task = self._bulk_task(taskId)
        return {k: task[k] for k in _DESCRIBE_FIELDS if task[k] is not None}

    def list_thing_registration_tasks(
        self, nextToken: str | None = None, maxResults: int | None = None, status: str | None = None
    ) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise invalid_request(f"status must be one of {', '.join(STATUSES)}")
        tasks = sorted(self.state.bulk_tasks.values(), key=lambda t: t["creationDate"], reverse=True)
        ids = [t["taskId"] for t in tasks if status is None or t["status"] == status]
        page, token = paginate(ids, nextToken, maxResults, 250)
        return {"taskIds": page, **({"nextToken": token} if token else {})}

    def stop_thing_registration_task(self, taskId: str) -> dict[str, Any]:
        task = self._bulk_task(taskId)
        if task["status"] not in ACTIVE_STATUSES:
            raise invalid_request(
                f"Thing registration task {taskId} is already {task['status']} and cannot be stopped."
            )
        if task["status"] == "InProgress":
            task["status"] = "Cancelling"
            task["lastModifiedDate"] = self.now()
            if not self.runner.is_running(taskId):  # stopped workers: nobody else will end it
                self.runner.finish(task, "Cancelled", CANCELLED_MESSAGE)
        return {}

    def list_thing_registration_task_reports(
        self, taskId: str, reportType: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        if reportType not in REPORT_TYPES:
            raise invalid_request(f"reportType must be one of {', '.join(REPORT_TYPES)}")
        task = self.state.bulk_tasks.get(taskId)
        if task is None:  # the operation models no ResourceNotFoundException
            raise invalid_request(f"Thing registration task {taskId} does not exist.")
        bucket = report_bucket(self.account_id)
        links = [
            self.s3.presigned_get_url(bucket, report_key(taskId, reportType, part))
            for part in range(1, task["parts"][reportType] + 1)
        ]
        page, token = paginate(links, nextToken, maxResults, 250)
        return {"resourceLinks": page, "reportType": reportType, **({"nextToken": token} if token else {})}
