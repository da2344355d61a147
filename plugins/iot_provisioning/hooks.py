"""IotHook: a thin wrapper over boto3's IoT client for bulk thing registration tasks."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.config import Config

TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Cancelled"})
REPORT_TYPES = ("RESULTS", "ERRORS")

# Standard mode retries ThrottlingException/LimitExceededException and 5xx with jittered backoff.
DEFAULT_RETRIES: dict[str, Any] = {"mode": "standard", "max_attempts": 8}


def _with_default_retries(config: Config | dict[str, Any] | None) -> Config:
    """The caller's botocore config, with the standard retry mode unless it chose its own retries."""
    default = Config(retries=dict(DEFAULT_RETRIES))
    if config is None:
        return default
    if isinstance(config, dict):
        config = Config(**config)
    return default.merge(config)


def _start_task_args(
    *, template_body: str, input_file_bucket: str, input_file_key: str, role_arn: str
) -> dict[str, str]:
    """Request of StartThingRegistrationTask; every member is required by the service model."""
    missing = [
        name
        for name, value in (
            ("template_body", template_body),
            ("input_file_bucket", input_file_bucket),
            ("input_file_key", input_file_key),
            ("role_arn", role_arn),
        )
        if not value
    ]
    if missing:
        raise ValueError(f"StartThingRegistrationTask needs a value for: {', '.join(missing)}")
    return {
        "templateBody": template_body,
        "inputFileBucket": input_file_bucket,
        "inputFileKey": input_file_key,
        "roleArn": role_arn,
    }


def _report_args(task_id: str, report_type: str) -> dict[str, str]:
    """Request of ListThingRegistrationTaskReports."""
    if report_type not in REPORT_TYPES:
        raise ValueError(f"report_type must be one of {', '.join(REPORT_TYPES)}, got {report_type!r}")
    return {"taskId": task_id, "reportType": report_type}


def _task_summary(description: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of DescribeThingRegistrationTask that the pipeline keeps (no template body)."""
    return {
        "task_id": description["taskId"],
        "status": description.get("status"),
        "success_count": int(description.get("successCount") or 0),
        "failure_count": int(description.get("failureCount") or 0),
        "percentage_progress": int(description.get("percentageProgress") or 0),
        "message": description.get("message") or "",
    }


class IotHook(AwsBaseHook):
    """
    Interact with AWS IoT bulk registration (boto3 ``iot`` client).

    Additional arguments (such as ``aws_conn_id``, ``region_name``, ``config``) are passed to
    :class:`~airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook`. Unless ``config`` sets its own
    ``retries``, the client uses botocore's standard retry mode (throttling retried with backoff).
    The custom waiter ``thing_registration_task_complete`` comes from ``waiters/iot.json`` next to this file.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "iot"
        kwargs["config"] = _with_default_retries(kwargs.get("config"))
        super().__init__(*args, **kwargs)

    @cached_property
    def waiter_path(self) -> os.PathLike[str] | None:
        return Path(__file__).parent / "waiters" / "iot.json"

    def start_thing_registration_task(
        self, *, template_body: str, input_file_bucket: str, input_file_key: str, role_arn: str
    ) -> str:
        """Start a bulk registration task and return its task id."""
        args = _start_task_args(
            template_body=template_body,
            input_file_bucket=input_file_bucket,
            input_file_key=input_file_key,
            role_arn=role_arn,
        )
        return self.conn.start_thing_registration_task(**args)["taskId"]

    def describe_thing_registration_task(self, task_id: str) -> dict[str, Any]:
        """Status, counts, progress and message of a task, as a small JSON-safe dict."""
        return _task_summary(self.conn.describe_thing_registration_task(taskId=task_id))

    def list_thing_registration_tasks(self, status: str | None = None) -> list[str]:
        """Every task id (optionally only those in ``status``), across pages."""
        args = {"status": status} if status else {}
        paginator = self.conn.get_paginator("list_thing_registration_tasks")
        return [task_id for page in paginator.paginate(**args) for task_id in page.get("taskIds", [])]

    def list_thing_registration_task_report_links(self, task_id: str, report_type: str) -> list[str]:
        """Presigned links of every report file of one type (RESULTS or ERRORS), across pages."""
        paginator = self.conn.get_paginator("list_thing_registration_task_reports")
        return [
            link
            for page in paginator.paginate(**_report_args(task_id, report_type))
            for link in page.get("resourceLinks", [])
        ]
