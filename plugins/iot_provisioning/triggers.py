"""Deferrable triggers for bulk registration: a task's end, and the account's registration slot freeing."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger

from plugins.iot_provisioning.hooks import IotHook

# One JMESPath multi-select so each poll logs a readable line such as
# "{'status': 'InProgress', 'percentageProgress': 40, 'successCount': 400, 'failureCount': 2}".
PROGRESS_QUERY = (
    "{status: status, percentageProgress: percentageProgress, successCount: successCount, "
    "failureCount: failureCount}"
)


class ThingRegistrationTaskTrigger(AwsBaseWaiterTrigger):
    """
    Poll DescribeThingRegistrationTask until the task is Completed, Failed or Cancelled.

    Yields exactly one event: ``{"status": "success", "task_id": ...}`` on Completed, or
    ``{"status": "error", "message": ..., "task_id": ...}`` (AWS's message included) otherwise.

    :param task_id: the registration task to watch.
    :param waiter_delay: seconds between polls.
    :param waiter_max_attempts: polls before giving up.
    :param aws_conn_id: the Airflow connection used for AWS credentials.
    """

    aws_hook_class = IotHook

    def __init__(
        self,
        *,
        task_id: str,
        waiter_delay: int = 10,
        waiter_max_attempts: int = 8640,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            serialized_fields={"task_id": task_id},
            waiter_name="thing_registration_task_complete",
            waiter_args={"taskId": task_id},
            failure_message=f"Thing registration task {task_id} did not complete",
            status_message=f"Thing registration task {task_id}",
            status_queries=[PROGRESS_QUERY, "message"],
            return_key="task_id",
            return_value=task_id,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            aws_conn_id=aws_conn_id,
            **kwargs,
        )

    async def on_kill(self) -> None:
        """The deferred register task was cleared or marked failed: stop its AWS task (it holds the
        account's only registration slot) and record it. Airflow calls this on a user's action only, never
        on a triggerer restart or hand-over, which is why it is not done in cleanup()."""
        import asyncio

        task_id = self.waiter_args["taskId"]
        state = await asyncio.to_thread(self._stop, task_id)
        self.log.warning("Register task killed: registration task %s is now %s", task_id, state)

    def _stop(self, task_id: str) -> object:
        from include.inventory import Inventory
        from include.registration_cancel import stop_registration
        from plugins.iot_provisioning.settings_source import pipeline_settings

        inventory = Inventory(pipeline_settings().inventory_url)
        why = "its deferred register task was cleared or marked failed"
        return stop_registration(self.hook().conn, inventory, task_id, why)


class RegistrationSlotTrigger(AwsBaseWaiterTrigger):
    """
    Poll ListThingRegistrationTasks(status=InProgress) until no task of the account is running.

    AWS runs one registration task per account at a time; a start refused for that waits here, in the
    triggerer, not in a worker slot. Yields ``{"status": "success", "unit": ...}`` once the slot is free.

    :param unit: the registration unit waiting (named in the log and the event).
    :param waiter_delay: seconds between polls.
    :param waiter_max_attempts: polls before giving up.
    :param aws_conn_id: the Airflow connection used for AWS credentials.
    """

    aws_hook_class = IotHook

    def __init__(
        self,
        *,
        unit: str,
        waiter_delay: int = 30,
        waiter_max_attempts: int = 2880,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            serialized_fields={"unit": unit},
            waiter_name="registration_slot_free",
            waiter_args={"status": "InProgress"},
            failure_message=f"The registration slot did not come free for unit {unit}",
            status_message=f"Unit {unit} waits for the running registration task",
            status_queries=["taskIds"],
            return_key="unit",
            return_value=unit,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            aws_conn_id=aws_conn_id,
            **kwargs,
        )
