"""StartThingRegistrationTaskOperator: start (or resume) one unit's bulk registration task and wait for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.amazon.aws.utils.waiter_with_logging import wait
from airflow.sdk.exceptions import AirflowException

from plugins.iot_provisioning.hooks import IotHook
from plugins.iot_provisioning.triggers import (
    PROGRESS_QUERY,
    RegistrationSlotTrigger,
    ThingRegistrationTaskTrigger,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class StartThingRegistrationTaskOperator(AwsBaseOperator[IotHook]):
    """
    Register one registration unit of a batch with an AWS IoT thing registration task, then wait for it.

    Resumable (include.registration.start_or_resume): a retried, cleared or adopted unit follows the task
    already started for its parameter file instead of starting a second one. While another task holds the
    account's single registration slot, it waits deferred (RegistrationSlotTrigger), not in a worker slot.
    Returns ``{"unit": ..., "registration": ...}`` for reconcile, also when the task ended Failed or
    Cancelled: its reports (or their absence) decide each row's outcome.

    :param batch: the batch record of ``include.pipeline.intake`` (XCom form).
    :param unit: one registration unit of ``include.pipeline.write_parameter_files`` (XCom form).
    :param role_arn: IAM role IoT assumes to read the parameter file (default: the pipeline settings').
    :param deferrable: wait in the triggerer instead of holding a worker slot (default True).
    :param waiter_delay: seconds between status polls.
    :param waiter_max_attempts: polls before giving up.
    :param slot_delay: seconds between polls for a free registration slot.
    """

    aws_hook_class = IotHook
    template_fields: Sequence[str] = aws_template_fields("batch", "unit", "role_arn")
    ui_color = "#f3d9b1"

    def __init__(
        self,
        *,
        batch: dict[str, Any],
        unit: dict[str, Any],
        role_arn: str | None = None,
        deferrable: bool = True,
        waiter_delay: int = 10,
        waiter_max_attempts: int = 8640,
        slot_delay: int = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.unit = unit
        self.role_arn = role_arn
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self.slot_delay = slot_delay
        self._registration_task_id: str | None = None  # the AWS task this try started or resumed

    def _domain(self) -> tuple[Any, Any, Any, Any]:
        """(registration module, settings, batch record, unit record); imported late: parsing stays light."""
        from include import registration
        from include.records import Batch, RegistrationUnit
        from plugins.iot_provisioning.settings_source import pipeline_settings

        return registration, pipeline_settings(), Batch.of(self.batch), RegistrationUnit.of(self.unit)

    def _aws_kwargs(self) -> dict[str, Any]:
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "botocore_config": self.botocore_config,
        }

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from include.inventory import Inventory

        registration, settings, batch, unit = self._domain()
        s3 = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).get_conn()
        try:
            progress = registration.start_or_resume(
                self.hook.conn,
                s3,
                Inventory(settings.inventory_url),
                batch,
                unit,
                self.role_arn or settings.registration_role_arn,
            )
        except registration.RegistrationSlotBusy:
            return self._wait_for_slot(context, unit.unit)
        state = progress.registration
        self._registration_task_id = state.task_id
        if progress.started:
            self.log.info(
                "Started registration task %s for unit %s (%s lines).", state.task_id, unit.unit, unit.lines
            )
        else:
            self.log.info(
                "Resuming registration task %s for unit %s (%s, %s%%); not starting another.",
                state.task_id,
                unit.label,
                state.status,
                state.percentage_progress,
            )
        if progress.done:
            return self._finish(state.task_id)
        if self.deferrable:
            self.defer(
                trigger=ThingRegistrationTaskTrigger(
                    task_id=state.task_id,
                    waiter_delay=self.waiter_delay,
                    waiter_max_attempts=self.waiter_max_attempts,
                    **self._aws_kwargs(),
                ),
                method_name="execute_complete",
            )
        try:
            wait(
                waiter=self.hook.get_waiter("thing_registration_task_complete"),
                waiter_delay=self.waiter_delay,
                waiter_max_attempts=self.waiter_max_attempts,
                args={"taskId": state.task_id},
                failure_message=f"Thing registration task {state.task_id} did not complete",
                status_message=f"Thing registration task {state.task_id}",
                status_args=[PROGRESS_QUERY, "message"],
            )
        except AirflowException as error:
            self.log.warning("%s", error)
        return self._finish(state.task_id)

    def _wait_for_slot(self, context: Context, unit: str) -> dict[str, Any]:
        self.log.info("Another registration task holds the account's slot; unit %s waits for it.", unit)
        if self.deferrable:
            self.defer(
                trigger=RegistrationSlotTrigger(
                    unit=unit,
                    waiter_delay=self.slot_delay,
                    waiter_max_attempts=self.waiter_max_attempts,
                    **self._aws_kwargs(),
                ),
                method_name="execute_after_slot",
            )
        wait(
            waiter=self.hook.get_waiter("registration_slot_free"),
            waiter_delay=self.slot_delay,
            waiter_max_attempts=self.waiter_max_attempts,
            args={"status": "InProgress"},
            failure_message=f"The registration slot did not come free for unit {unit}",
            status_message=f"Unit {unit} waits for the running registration task",
            status_args=["taskIds"],
        )
        return self.execute(context)

    def execute_after_slot(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Back from RegistrationSlotTrigger: try to start again (another unit may have taken the slot)."""
        event = validate_execute_complete_event(event)
        if event.get("status") != "success":
            raise AirflowException(f"Waiting for the registration slot failed: {event.get('message')}")
        return self.execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = validate_execute_complete_event(event)
        return self._finish(event["task_id"])

    def on_kill(self) -> None:
        """Cleared, marked failed or killed while running here: stop the AWS task, which holds the
        account's only registration slot (while deferred, the trigger's on_kill does the same)."""
        from include.inventory import Inventory
        from include.registration_cancel import stop_registration

        _, settings, batch, unit = self._domain()
        inventory = Inventory(settings.inventory_url)
        task_id = self._registration_task_id or (
            inventory.registration_task(batch.run_id, unit.unit) or {}
        ).get("task_id")
        if task_id:
            state = stop_registration(
                self.hook.conn, inventory, task_id, f"{self.task_id} of {batch.run_id} killed"
            )
            self.log.warning("Killed: registration task %s of unit %s is now %s", task_id, unit.unit, state)

    def _finish(self, task_id: str) -> dict[str, Any]:
        """Record the task's final state; a task still running (the waiter gave up) fails this try."""
        from include.inventory import Inventory

        registration, settings, batch, unit = self._domain()
        state = registration.describe(self.hook.conn, task_id)
        if state.status not in registration.TERMINAL_STATUSES:
            raise AirflowException(
                f"Thing registration task {task_id} is still {state.status} ({state.percentage_progress}%); "
                "the next try resumes it"
            )
        registration.record_final(Inventory(settings.inventory_url), batch, unit, state)
        if state.status == "Completed":
            self.log.info(
                "Registration task %s completed: %s succeeded, %s failed.",
                task_id,
                state.success_count,
                state.failure_count,
            )
        else:
            self.log.warning(
                "Registration task %s ended %s: %s. Reconcile records every line's outcome.",
                task_id,
                state.status,
                state.message or "no message from AWS",
            )
        return {"unit": unit.to_xcom(), "registration": state.to_xcom()}
