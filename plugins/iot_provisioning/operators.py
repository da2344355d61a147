"""StartThingRegistrationTaskOperator: start (or resume) one bulk registration task and wait for it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.amazon.aws.utils.waiter_with_logging import wait
from airflow.sdk.exceptions import AirflowException
from botocore.exceptions import ClientError

from plugins.iot_provisioning.hooks import TERMINAL_STATUSES, IotHook
from plugins.iot_provisioning.triggers import PROGRESS_QUERY, ThingRegistrationTaskTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

# Error codes worth another StartThingRegistrationTask after botocore's own retries gave up:
# throttling, the one-task-per-account refusal, and transient service faults.
RETRYABLE_START_CODES = frozenset(
    {
        "ThrottlingException",
        "LimitExceededException",
        "ServiceUnavailableException",
        "InternalFailureException",
    }
)


def _backoff_delays(attempts: int, base: float, cap: float = 60.0) -> list[float]:
    """Exponential delays between start attempts (base, 2*base, 4*base, ... capped)."""
    return [min(cap, base * 2**n) for n in range(max(attempts - 1, 0))]


class StartThingRegistrationTaskOperator(AwsBaseOperator[IotHook]):
    """
    Start an AWS IoT thing registration task for one registration group of a batch, then wait for it.

    Resumable: the task id is recorded in the inventory right after the start. When the Airflow task
    runs again (retry, clear, worker lost) and the recorded task is still running, it polls that task
    instead of starting a second one; a recorded Completed task is reused as is. Run it in the pool
    ``iot_bulk_registration`` (one slot): AWS runs one registration task at a time per account.

    :param batch: the batch dict returned by ``include.pipeline.intake``.
    :param registration_group: one entry of ``include.pipeline.write_parameter_files``
        (``group``, ``lines``, ``params_key``, ``template_key``, ``bucket``).
    :param role_arn: IAM role IoT assumes to read the parameter file (default: the pipeline settings').
    :param deferrable: wait in the triggerer instead of holding a worker slot (default True).
    :param waiter_delay: seconds between status polls.
    :param waiter_max_attempts: polls before giving up.
    :param start_attempts: StartThingRegistrationTask attempts on throttling/limit errors, beyond
        botocore's own standard-mode retries.
    :param start_backoff: first delay in seconds between those attempts (doubles each time).
    """

    aws_hook_class = IotHook
    template_fields: Sequence[str] = aws_template_fields("batch", "registration_group", "role_arn")
    ui_color = "#f3d9b1"

    def __init__(
        self,
        *,
        batch: dict[str, Any],
        registration_group: dict[str, Any],
        role_arn: str | None = None,
        deferrable: bool = True,
        waiter_delay: int = 10,
        waiter_max_attempts: int = 8640,
        start_attempts: int = 6,
        start_backoff: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.registration_group = registration_group
        self.role_arn = role_arn
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self.start_attempts = start_attempts
        self.start_backoff = start_backoff

    # The inventory bookkeeping lives in the domain package; imported lazily so DAG parsing stays light.
    @staticmethod
    def _domain() -> tuple[Any, Any]:
        from include import pipeline
        from include.settings import Settings

        return pipeline, Settings.from_env()

    @property
    def _group_name(self) -> str:
        return str(self.registration_group["group"])

    def execute(self, context: Context) -> dict[str, Any]:
        pipeline, settings = self._domain()
        task_id = pipeline.registration_task_for(settings, self.batch, self._group_name)
        if task_id:
            state = self.hook.describe_thing_registration_task(task_id)
            if state["status"] not in TERMINAL_STATUSES:
                self.log.info(
                    "Resuming registration task %s for group %s (%s, %s%%); not starting another.",
                    task_id,
                    self._group_name,
                    state["status"],
                    state["percentage_progress"],
                )
            elif state["status"] == "Completed":
                self.log.info(
                    "Registration task %s for group %s already completed.", task_id, self._group_name
                )
                pipeline.record_registration_status(settings, self.batch, self._group_name, state)
                return self._result(state)
            else:
                self.log.warning(
                    "Registration task %s for group %s ended %s (%s); starting a new one.",
                    task_id,
                    self._group_name,
                    state["status"],
                    state["message"],
                )
                task_id = None
        if not task_id:
            task_id = self._start(role_arn=self.role_arn or settings.registration_role_arn)
            pipeline.record_registration_task(settings, self.batch, self._group_name, task_id)
            self.log.info(
                "Started registration task %s for group %s (%s lines).",
                task_id,
                self._group_name,
                self.registration_group.get("lines"),
            )

        if self.deferrable:
            self.defer(
                trigger=ThingRegistrationTaskTrigger(
                    task_id=task_id,
                    waiter_delay=self.waiter_delay,
                    waiter_max_attempts=self.waiter_max_attempts,
                    aws_conn_id=self.aws_conn_id,
                    region_name=self.region_name,
                    verify=self.verify,
                    botocore_config=self.botocore_config,
                ),
                method_name="execute_complete",
            )
        try:
            wait(
                waiter=self.hook.get_waiter("thing_registration_task_complete"),
                waiter_delay=self.waiter_delay,
                waiter_max_attempts=self.waiter_max_attempts,
                args={"taskId": task_id},
                failure_message=f"Thing registration task {task_id} did not complete",
                status_message=f"Thing registration task {task_id}",
                status_args=[PROGRESS_QUERY, "message"],
            )
        except AirflowException as error:
            return self._finish(task_id, {"status": "error", "message": str(error)})
        return self._finish(task_id, {"status": "success"})

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = validate_execute_complete_event(event)
        return self._finish(event["task_id"], event)

    def _finish(self, task_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Record the final state; fail with AWS's own message unless the task Completed."""
        pipeline, settings = self._domain()
        state = self.hook.describe_thing_registration_task(task_id)
        pipeline.record_registration_status(settings, self.batch, self._group_name, state)
        if state["status"] != "Completed":
            detail = state["message"] or event.get("message") or "no message from AWS"
            raise AirflowException(f"Thing registration task {task_id} ended {state['status']}: {detail}")
        self.log.info(
            "Registration task %s completed: %s succeeded, %s failed.",
            task_id,
            state["success_count"],
            state["failure_count"],
        )
        return self._result(state)

    def _result(self, state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "group": self._group_name, "registration_group": dict(self.registration_group)}

    def _start(self, *, role_arn: str) -> str:
        """StartThingRegistrationTask with a bounded backoff on throttling and the one-task limit."""
        group = self.registration_group
        template_body = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).read_key(
            key=group["template_key"], bucket_name=group["bucket"]
        )
        delays = _backoff_delays(self.start_attempts, self.start_backoff)
        for attempt in range(len(delays) + 1):
            try:
                return self.hook.start_thing_registration_task(
                    template_body=template_body,
                    input_file_bucket=group["bucket"],
                    input_file_key=group["params_key"],
                    role_arn=role_arn,
                )
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code not in RETRYABLE_START_CODES or attempt == len(delays):
                    raise
                self.log.warning(
                    "StartThingRegistrationTask refused (%s); attempt %d of %d in %.0f s.",
                    code,
                    attempt + 2,
                    len(delays) + 1,
                    delays[attempt],
                )
                time.sleep(delays[attempt])
        raise AssertionError("unreachable")  # the loop returns or raises
