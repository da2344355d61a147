"""What the project's DAG files declare alike: start date, retry policy, the form's section, shared fields.

Light at import (the DAG processor parses every file often): clients are built inside tasks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")

# Airflow 3.3's trigger form opens only its default section, "Run Parameters", and starts every other
# section collapsed: every field of these DAGs matters, so all of them are in that one.
FORM_SECTION = "Run Parameters"


def retry_policy(
    *, retries: int, delay: timedelta, timeout: timedelta, backoff: bool = True
) -> dict[str, Any]:
    """A DAG's ``default_args``: Airflow's retries for what can succeed later, a bound on every try."""
    policy: dict[str, Any] = {"retries": retries, "retry_delay": delay, "execution_timeout": timeout}
    if backoff:
        policy["retry_exponential_backoff"] = True
    return policy


def dry_run_param(description: str) -> Param:
    return Param(False, type="boolean", title="Dry run", section=FORM_SECTION, description=description)


def rate_limit_param(scope: str) -> Param:
    """AWS IoT requests per second for ``scope``; empty: only AWS's throttling and botocore's retries."""
    return Param(
        None,
        type=["null", "number"],
        exclusiveMinimum=0,
        title="Rate limit",
        section=FORM_SECTION,
        description=f"AWS IoT requests per second for {scope} (empty: only AWS's own throttling).",
    )


def form_models(*, fleet: bool) -> list[str]:
    """The catalog's bulk (or fleet) models for a trigger form's product list: the deployment's catalog
    (PIPELINE_CATALOG), a small local YAML file read at parse time."""
    from include.fleet_catalog import form_models as read_models
    from include.settings import Settings

    return read_models(Settings.from_env().catalog_path, fleet=fleet)


def s3_client() -> Any:
    """boto3 S3 client of the ``aws_default`` connection."""
    from plugins.iot_provisioning.connections import AWS_CONN_ID, aws_clients

    return aws_clients(AWS_CONN_ID)[0]
