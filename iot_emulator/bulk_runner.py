"""The background work of bulk registration: one thread per task, batches of lines under the region's lock.

Batches are small so DescribeThingRegistrationTask sees successCount, failureCount and percentageProgress
move, and request threads get the lock between them. The task record in the state is the checkpoint (next
line, byte offset, report lines not yet written), so a restarted emulator resumes where the last left off.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from iot_emulator.bulk import (
    ACTIVE_STATUSES,
    CANCELLED_MESSAGE,
    REPORT_TYPES,
    report_bucket,
    report_key,
)
from iot_emulator.errors import IotError, invalid_request
from iot_emulator.template_language import Template, compile_template
from iot_emulator.template_provisioning import provision

if TYPE_CHECKING:
    from iot_emulator.service import IotService

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 256 * 1024  # "AWS IoT Bulk Thing Registration Limits": 256K per line
BATCH_LINES = 100  # lines processed per hold of the lock
PART_LINES = 10_000  # report lines per report object
CHECKPOINT_SECONDS = 5.0  # how often a running task asks for its state to be persisted


def java_error_message(code: str, message: str, status: int) -> str:
    """An error as AWS's Java SDK prints it, the form ERRORS reports carry (aws-iot-facts.md 1.7)."""
    return (
        f"com.amazonaws.services.iot.model.{code}: {message} (Service: AWSIot; Status Code: {status}; "
        f"Error Code: {code}; Request ID: {uuid.uuid4()}; Proxy: null)"
    )


class BulkRunner:
    """Runs the thing registration tasks of one service (account and region)."""

    def __init__(self, service: IotService) -> None:
        self._service = service
        self._workers: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()

    def start(self, task_id: str, data: bytes) -> None:
        """Run the task (its record already in the state) over ``data``, the input file's bytes."""
        if self._stopping.is_set():  # workers told to stop before stay stopped; new ones run
            self._stopping = threading.Event()
        worker = threading.Thread(
            target=self._run, args=(task_id, data, self._stopping), name=f"bulk-{task_id}", daemon=True
        )
        self._workers[task_id] = worker
        worker.start()

    def is_running(self, task_id: str) -> bool:
        worker = self._workers.get(task_id)
        return worker is not None and worker.is_alive()

    def resume_interrupted(self) -> None:
        """After a restart: InProgress tasks resume from their checkpoint, Cancelling ones end Cancelled."""
        service = self._service
        with service.lock:
            for task in service.state.bulk_tasks.values():
                if task["status"] == "Cancelling":
                    self.finish(task, "Cancelled", CANCELLED_MESSAGE)
                elif task["status"] == "InProgress" and not self.is_running(task["taskId"]):
                    try:
                        data = service.s3.get_object(task["inputFileBucket"], task["inputFileKey"])
                    except IotError as exc:
                        self.finish(
                            task, "Failed", f"The task could not resume after a restart: {exc.message}"
                        )
                        continue
                    self.start(task["taskId"], data)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the workers at their next batch, leaving tasks InProgress so a restart resumes them."""
        self._stopping.set()
        for worker in list(self._workers.values()):
            worker.join(timeout)

    def finish(self, task: dict[str, Any], status: str, message: str | None) -> None:
        """End ``task`` with ``status``: write the pending report lines, then ask for a save."""
        for report_type in REPORT_TYPES:
            self._flush_report(task, report_type)
        task["status"] = status
        task["message"] = message
        task["lastModifiedDate"] = self._service.now()
        if status == "Completed":
            task["percentageProgress"] = 100
        self._service.on_change()

    # ------------------------------------------------------------------ the worker thread

    def _run(self, task_id: str, data: bytes, stopping: threading.Event) -> None:
        try:
            self._process(task_id, data, stopping)
        except Exception:  # a bug must end the task Failed, not leave it InProgress forever
            log.exception("thing registration task %s crashed", task_id)
            with self._service.lock:
                task = self._service.state.bulk_tasks.get(task_id)
                if task is not None and task["status"] in ACTIVE_STATUSES:
                    self.finish(task, "Failed", "InternalFailureException: the task stopped unexpectedly.")

    def _process(self, task_id: str, data: bytes, stopping: threading.Event) -> None:
        service = self._service
        last_checkpoint = time.monotonic()
        while not stopping.is_set():
            delay = service.faults.task_line_delay
            with service.lock:
                task = service.state.bulk_tasks.get(task_id)
                if task is None or task["status"] not in ACTIVE_STATUSES:
                    return  # deleted by a reset, or finished
                if task["status"] == "Cancelling":
                    self.finish(task, "Cancelled", CANCELLED_MESSAGE)
                    return
                template = compile_template(task["templateBody"])
                self._process_batch(task, template, data, 1 if delay else BATCH_LINES)
                if task["linesDone"] >= task["totalLines"]:
                    self.finish(task, "Completed", None)
                    return
                if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
                    service.on_change()
                    last_checkpoint = time.monotonic()
            time.sleep(delay)  # also lets request threads take the lock between batches

    def _process_batch(self, task: dict[str, Any], template: Template, data: bytes, lines: int) -> None:
        faults = self._service.faults
        cache: dict[str, set[str]] = {}
        for _ in range(min(lines, task["totalLines"] - task["linesDone"])):
            start = task["offset"]
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end + 1
            number = task["linesDone"] + 1
            # the faults' seeded RNG keeps forced failures deterministic
            if number in faults.fail_lines or (faults.fail_rate and faults.rng.random() < faults.fail_rate):
                error: IotError | None = IotError("ThrottlingException", "Rate exceeded")
                response = None
            else:
                error, response = self._register_line(template, data[start:end], cache)
                if error is None and number in faults.partial_fail_lines:
                    # made, then failed: AWS rolls nothing back (e.g. throttled on the line's last step)
                    error, response = IotError("ThrottlingException", "Rate exceeded"), None
            if error is None:
                line = {"errorMessage": None, "lineNumber": number, "offset": end, "response": response}
                task["successCount"] += 1
                report = "RESULTS"
            else:
                message = java_error_message(error.code, error.message, error.status)
                line = {"errorMessage": message, "lineNumber": number, "offset": end, "response": None}
                task["failureCount"] += 1
                report = "ERRORS"
            # kept as text: the task record is saved as JSON with the rest of the state
            task["pending"][report].append(orjson.dumps(line, option=orjson.OPT_SORT_KEYS).decode())
            if len(task["pending"][report]) >= PART_LINES:
                self._flush_report(task, report)
            task["offset"], task["linesDone"] = end, number
        task["percentageProgress"] = task["linesDone"] * 100 // max(task["totalLines"], 1)
        task["lastModifiedDate"] = self._service.now()

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
            parameters = orjson.loads(raw)  # orjson's own depth limit (1024) fails deep lines cleanly
        except orjson.JSONDecodeError as exc:
            return invalid_request(f"The line is not valid JSON: {exc.args[0]}"), None
        if not isinstance(parameters, dict):
            return invalid_request("The line must be a JSON object of parameter values."), None
        try:
            result = provision(self._service, template, parameters, cache=cache)
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
        service = self._service
        part = task["parts"][report_type] + 1
        bucket, key = report_bucket(service.account_id), report_key(task["taskId"], report_type, part)
        body = ("\n".join(lines) + "\n").encode()
        try:
            service.s3.put_object(bucket, key, body)
        except IotError:  # first report of this account: the internal bucket does not exist yet
            service.s3.create_bucket(bucket, service.region)
            service.s3.put_object(bucket, key, body)
        task["parts"][report_type] = part
        task["pending"][report_type] = []
        service.on_change()
