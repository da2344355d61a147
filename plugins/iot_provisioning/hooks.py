"""IotHook: the boto3 IoT client from the Airflow AWS connection, with standard retries and IoT waiters."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.config import Config

# Standard mode retries ThrottlingException and 5xx with jittered backoff (no retry loop of our own).
DEFAULT_RETRIES: dict[str, Any] = {"mode": "standard", "max_attempts": 8}


def _with_default_retries(config: Config | dict[str, Any] | None) -> Config:
    """The caller's botocore config, with the standard retry mode unless it chose its own retries."""
    default = Config(retries=dict(DEFAULT_RETRIES))
    if config is None:
        return default
    if isinstance(config, dict):
        config = Config(**config)
    return default.merge(config)


class IotHook(AwsBaseHook):
    """
    Interact with AWS IoT (boto3 ``iot`` client); the registration logic itself is include.registration's.

    Additional arguments (such as ``aws_conn_id``, ``region_name``, ``config``) are passed to
    :class:`~airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook`. Unless ``config`` sets its own
    ``retries``, the client uses botocore's standard retry mode (throttling retried with backoff).
    The custom waiters ``thing_registration_task_complete`` and ``registration_slot_free`` come from
    ``waiters/iot.json`` next to this file.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "iot"
        kwargs["config"] = _with_default_retries(kwargs.get("config"))
        super().__init__(*args, **kwargs)

    @cached_property
    def waiter_path(self) -> os.PathLike[str] | None:
        return Path(__file__).parent / "waiters" / "iot.json"
