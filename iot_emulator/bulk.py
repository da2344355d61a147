"""Bulk thing registration tasks, run in the background like AWS runs them.

StartThingRegistrationTask reads the JSON-lines input from S3 and hands it to a worker thread that runs the
template for each line in small batches under the backend lock, so DescribeThingRegistrationTask sees
successCount, failureCount and percentageProgress move. Reports are JSON lines in AWS's format
(aws-iot-facts.md 1.7), written to an internal bucket as parts ``<taskId>-1``, ``<taskId>-2``...
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from typing import Any

import orjson

from iot_emulator.errors import IotError, invalid_request, limit_exceeded, not_found
from iot_emulator.registry import paginate
from iot_emulator.template_engine import Template, compile_template, provision

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("InProgress", "Cancelling")
STATUSES = ("InProgress", "Completed", "Failed", "Cancelled", "Cancelling")
REPORT_TYPES = ("RESULTS", "ERRORS")
MAX_LINE_BYTES = 256 * 1024  # "AWS IoT Bulk Thing Registration Limits": 256K per line
BATCH_LINES = 100  # lines processed per hold of the backend lock
PART_LINES = 10_000  # report lines per report object
CHECKPOINT_SECONDS = 5.0  # how often a running task asks for its state to be persisted
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


def java_error_message(code: str, message: str, status: int) -> str:
    """An error as AWS's Java SDK prints it, the form ERRORS reports carry (aws-iot-facts.md 1.7)."""
    return (
        f"com.amazonaws.services.iot.model.{code}: {message} (Service: AWSIot; Status Code: {status}; "
        f"Error Code: {code}; Request ID: {uuid.uuid4()}; Proxy: null)"
    )


def count_lines(data: bytes) -> int:
    """Lines of a JSON-lines file: a final newline does not start another line."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


class BulkMixin:
    def _init_bulk(self) -> None:
        self._bulk_tasks: dict[str, dict[str, Any]] = {}

    @property
    def bulk_report_bucket(self) -> str:
        return f"aws-iot-bulk-registration-reports-{self.account_id}"

    def _bulk_task(self, task_id: str) -> dict[str, Any]:
        task = self._bulk_tasks.get(task_id)
        if task is None:
            raise not_found(f"Thing registration task {task_id} does not exist.")
        return task

    # ------------------------------------------------------------------ operations

    def start_thing_registration_task(
        self, templateBody: str, inputFileBucket: str, inputFileKey: str, roleArn: str
    ) -> dict[str, Any]:
        running = [t["taskId"] for t in self._bulk_tasks.values() if t["status"] in ACTIVE_STATUSES]
        if running:
            # AWS allows one registration task at a time per account; the error it returns is undocumented.
            raise limit_exceeded(
                f"Task {running[0]} is still running: "
                "only one bulk registration task can be in progress at a time"
            )
        compile_template(templateBody)
        data = self._rt_s3.get_object(inputFileBucket, inputFileKey)
        now = self.now()
        task_id = str(uuid.uuid4())
        self._bulk_tasks[task_id] = {
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
            # checkpoint: where the worker resumes, and report lines not yet written as a part
            "totalLines": count_lines(data),
            "linesDone": 0,
            "offset": 0,
            "pending": {"RESULTS": [], "ERRORS": []},
            "parts": {"RESULTS": 0, "ERRORS": 0},
        }
        self._start_bulk_worker(task_id, data)
        return {"taskId": task_id}

    def describe_thing_registration_task(self, taskId: str) -> dict[str, Any]:
        task = self._bulk_task(taskId)
        return {k: task[k] for k in _DESCRIBE_FIELDS if task[k] is not None}

    def list_thing_registration_tasks(
        self, nextToken: str | None = None, maxResults: int | None = None, status: str | None = None
    ) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise invalid_request(f"status must be one of {', '.join(STATUSES)}")
        tasks = sorted(self._bulk_tasks.values(), key=lambda t: t["creationDate"], reverse=True)
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
            if not self._bulk_worker_alive(taskId):
                self._finish_task(task, "Cancelled", "The task was cancelled by StopThingRegistrationTask.")
        return {}

    def list_thing_registration_task_reports(
        self, taskId: str, reportType: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        if reportType not in REPORT_TYPES:
            raise invalid_request(f"reportType must be one of {', '.join(REPORT_TYPES)}")
        task = self._bulk_tasks.get(taskId)
        if task is None:  # the operation models no ResourceNotFoundException
            raise invalid_request(f"Thing registration task {taskId} does not exist.")
        links = [
            self._rt_s3.presigned_get_url(self.bulk_report_bucket, self._report_key(taskId, reportType, part))
            for part in range(1, task["parts"][reportType] + 1)
        ]
        page, token = paginate(links, nextToken, maxResults, 250)
        return {"resourceLinks": page, "reportType": reportType, **({"nextToken": token} if token else {})}

    # ------------------------------------------------------------------ worker

    @staticmethod
    def _report_key(task_id: str, report_type: str, part: int) -> str:
        return f"{report_type.lower()}/{task_id}-{part}"

    def _bulk_workers(self) -> dict[str, threading.Thread]:
        workers = getattr(self, "_rt_bulk_workers", None)
        if workers is None:
            workers = self._rt_bulk_workers = {}
        return workers

    def _bulk_worker_alive(self, task_id: str) -> bool:
        worker = self._bulk_workers().get(task_id)
        return worker is not None and worker.is_alive()

    def _start_bulk_worker(self, task_id: str, data: bytes) -> None:
        shutdown = getattr(self, "_rt_bulk_shutdown", None)
        if shutdown is None or shutdown.is_set():  # workers told to stop before stay stopped
            self._rt_bulk_shutdown = threading.Event()
        worker = threading.Thread(
            target=self._run_bulk_task,
            args=(task_id, data, self._rt_bulk_shutdown),
            name=f"bulk-{task_id}",
            daemon=True,
        )
        self._bulk_workers()[task_id] = worker
        worker.start()

    def resume_interrupted_tasks(self) -> None:
        """After a restart: InProgress tasks resume from their checkpoint, Cancelling ones end Cancelled."""
        with self._rt_lock:
            for task in self._bulk_tasks.values():
                if task["status"] == "Cancelling":
                    self._finish_task(
                        task, "Cancelled", "The task was cancelled by StopThingRegistrationTask."
                    )
                elif task["status"] == "InProgress" and not self._bulk_worker_alive(task["taskId"]):
                    try:
                        data = self._rt_s3.get_object(task["inputFileBucket"], task["inputFileKey"])
                    except IotError as exc:
                        self._finish_task(
                            task, "Failed", f"The task could not resume after a restart: {exc.message}"
                        )
                        continue
                    self._start_bulk_worker(task["taskId"], data)

    def shutdown_bulk_workers(self, timeout: float = 5.0) -> None:
        """Stop the workers at their next batch, leaving tasks InProgress so a restart resumes them."""
        event = getattr(self, "_rt_bulk_shutdown", None)
        if event is not None:
            event.set()
        for worker in list(self._bulk_workers().values()):
            worker.join(timeout)

    def _run_bulk_task(self, task_id: str, data: bytes, shutdown: threading.Event) -> None:
        try:
            self._process_bulk_task(task_id, data, shutdown)
        except Exception:  # a bug must end the task Failed, not leave it InProgress forever
            log.exception("thing registration task %s crashed", task_id)
            with self._rt_lock:
                task = self._bulk_tasks.get(task_id)
                if task is not None and task["status"] in ACTIVE_STATUSES:
                    self._finish_task(
                        task, "Failed", "InternalFailureException: the task stopped unexpectedly."
                    )

    def _process_bulk_task(self, task_id: str, data: bytes, shutdown: threading.Event) -> None:
        last_checkpoint = time.monotonic()
        while not shutdown.is_set():
            faults = getattr(self, "_rt_faults", None)
            delay = float(getattr(faults, "task_line_delay", 0) or 0)
            with self._rt_lock:
                task = self._bulk_tasks.get(task_id)
                if task is None or task["status"] not in ACTIVE_STATUSES:
                    return  # deleted by an admin reset, or finished
                if task["status"] == "Cancelling":
                    self._finish_task(
                        task, "Cancelled", "The task was cancelled by StopThingRegistrationTask."
                    )
                    return
                template = compile_template(task["templateBody"])
                self._process_batch(task, template, data, faults, 1 if delay else BATCH_LINES)
                if task["linesDone"] >= task["totalLines"]:
                    self._finish_task(task, "Completed", None)
                    return
                if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
                    self._checkpoint()
                    last_checkpoint = time.monotonic()
            time.sleep(delay)  # also lets request threads take the lock between batches

    def _process_batch(
        self, task: dict[str, Any], template: Template, data: bytes, faults: Any, lines: int
    ) -> None:
        fail_lines = set(getattr(faults, "fail_lines", None) or ())
        fail_rate = float(getattr(faults, "fail_rate", 0) or 0)
        rng = getattr(faults, "rng", None) or random  # the faults' seeded RNG keeps tests deterministic
        cache: dict[str, set[str]] = {}
        for _ in range(min(lines, task["totalLines"] - task["linesDone"])):
            start = task["offset"]
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end + 1
            number = task["linesDone"] + 1
            if number in fail_lines or (fail_rate and rng.random() < fail_rate):
                error: IotError | None = IotError("ThrottlingException", "Rate exceeded")
                response = None
            else:
                error, response = self._register_line(template, data[start:end], cache)
            if error is None:
                line = {"errorMessage": None, "lineNumber": number, "offset": end, "response": response}
                task["successCount"] += 1
                report = "RESULTS"
            else:
                message = java_error_message(error.code, error.message, error.status)
                line = {"errorMessage": message, "lineNumber": number, "offset": end, "response": None}
                task["failureCount"] += 1
                report = "ERRORS"
            task["pending"][report].append(orjson.dumps(line, option=orjson.OPT_SORT_KEYS))
            if len(task["pending"][report]) >= PART_LINES:
                self._flush_report(task, report)
            task["offset"], task["linesDone"] = end, number
        task["percentageProgress"] = task["linesDone"] * 100 // max(task["totalLines"], 1)
        task["lastModifiedDate"] = self.now()

    def _register_line(
        self, template: Template, raw: bytes, cache: dict[str, set[str]]
    ) -> tuple[IotError | None, dict[str, Any] | None]:
        """Run the template for one input line: (error, None) or (None, RESULTS response)."""
        if len(raw) > MAX_LINE_BYTES:
            return invalid_request(
                f"The line is {len(raw)} bytes long, the limit is {MAX_LINE_BYTES} bytes."
            ), None
        if not raw.strip():
            return invalid_request(
                "The line is blank; every line must be a JSON object of parameter values."
            ), None
        try:
            parameters = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return invalid_request(f"The line is not valid JSON: {exc.args[0]}"), None
        if not isinstance(parameters, dict):
            return invalid_request("The line must be a JSON object of parameter values."), None
        try:
            result = provision(self, template, parameters, cache=cache)
        except IotError as exc:
            return exc, None
        except Exception:  # an emulator bug fails this line, not the whole task
            log.exception("thing registration line failed unexpectedly")
            return IotError("InternalFailureException", "An internal error occurred."), None
        response: dict[str, Any] = {"ResourceArns": result.resource_arns}
        if result.certificate_pem is not None:
            response["CertificatePem"] = result.certificate_pem
        return None, response

    def _flush_report(self, task: dict[str, Any], report_type: str) -> None:
        lines = task["pending"][report_type]
        if not lines:
            return
        part = task["parts"][report_type] + 1
        key = self._report_key(task["taskId"], report_type, part)
        body = b"\n".join(lines) + b"\n"
        try:
            self._rt_s3.put_object(self.bulk_report_bucket, key, body)
        except IotError:  # first report of this account: the internal bucket does not exist yet
            self._create_report_bucket()
            self._rt_s3.put_object(self.bulk_report_bucket, key, body)
        task["parts"][report_type] = part
        task["pending"][report_type] = []
        self._checkpoint()

    def _create_report_bucket(self) -> None:
        from moto.s3.models import s3_backends

        s3_backends[self._rt_s3.account_id]["aws"].create_bucket(self.bulk_report_bucket, self.region)

    def _finish_task(self, task: dict[str, Any], status: str, message: str | None) -> None:
        for report_type in REPORT_TYPES:
            self._flush_report(task, report_type)
        task["status"] = status
        task["message"] = message
        task["lastModifiedDate"] = self.now()
        if status == "Completed":
            task["percentageProgress"] = 100
        self._checkpoint()

    def _checkpoint(self) -> None:
        on_change = getattr(self, "_rt_on_change", None)
        if on_change is not None:
            on_change()
