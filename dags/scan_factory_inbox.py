"""
# Scan the factory inbox (scheduled)

Every 15 minutes, list the manifests under `s3://<bucket>/inbox/` and start one
`provision_factory_batch` run per manifest whose content (SHA-256) the inventory has never seen.
The run id carries the content hash, so two scans (or the event-driven DAG) racing on the same file,
or the same file uploaded under two names, still give one run. This is the safety net behind the
event-driven `provision_factory_batch_from_inbox` (a lost notification is picked up here).
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import dag, task

from plugins.iot_provisioning.connections import AWS_CONN_ID
from plugins.iot_provisioning.dag_parts import START_DATE, retry_policy
from plugins.iot_provisioning.inbox_tasks import start_provisioning_runs

BUCKET = os.environ.get("PIPELINE_BUCKET", "factory-provisioning")
INBOX_PREFIX = os.environ.get("PIPELINE_INBOX_PREFIX", "inbox/")


@task
def list_manifests() -> list[str]:
    """Every CSV manifest under the inbox prefix, oldest first."""
    from plugins.iot_provisioning.connections import aws_clients
    from plugins.iot_provisioning.inbox import list_inbox

    s3, _ = aws_clients(AWS_CONN_ID)
    return list_inbox(s3, BUCKET, INBOX_PREFIX)


@dag(
    dag_id="scan_factory_inbox",
    doc_md=__doc__,
    schedule=timedelta(minutes=15),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["iot", "provisioning", "factory", "intake"],
    default_args=retry_policy(
        retries=2, delay=timedelta(seconds=15), timeout=timedelta(minutes=15), backoff=False
    ),
)
def scan_factory_inbox() -> None:
    start_provisioning_runs(list_manifests())


scan_factory_inbox()
