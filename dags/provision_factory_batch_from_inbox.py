"""
# Provision factory batches as they land in the inbox (event-driven)

The factory's MES uploads a manifest under `s3://<bucket>/inbox/`. S3 sends an ObjectCreated
notification to an SQS queue; an `AssetWatcher` with the amazon provider's `SqsSensorTrigger`
(running in the triggerer) receives and deletes the message and raises an event on the
`factory_inbox` asset, which schedules this DAG. It reads the manifest keys from the triggering
events, drops content that was already provisioned, and starts one `provision_factory_batch` run per
new manifest (run id `inbox__<sha256>`, so the same content never runs twice).

The queue URL comes from `PIPELINE_INBOX_QUEUE_URL` (created by `scripts/bootstrap.py`); without it the
asset has no watcher and only manual asset events schedule this DAG.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger
from airflow.sdk import Asset, AssetWatcher, dag, task

from plugins.iot_provisioning.connections import AWS_CONN_ID
from plugins.iot_provisioning.dag_parts import START_DATE, retry_policy
from plugins.iot_provisioning.inbox_tasks import start_provisioning_runs

BUCKET = os.environ.get("PIPELINE_BUCKET", "factory-provisioning")
INBOX_PREFIX = os.environ.get("PIPELINE_INBOX_PREFIX", "inbox/")
QUEUE_URL = os.environ.get("PIPELINE_INBOX_QUEUE_URL", "")

FACTORY_INBOX = Asset(
    name="factory_inbox",
    uri=f"s3://{BUCKET}/{INBOX_PREFIX.strip('/')}",
    watchers=[
        AssetWatcher(
            name="factory_inbox_notifications",
            trigger=SqsSensorTrigger(
                sqs_queue=QUEUE_URL, aws_conn_id=AWS_CONN_ID, max_messages=10, waiter_delay=10
            ),
        )
    ]
    if QUEUE_URL
    else [],
)


@task
def manifests_from_events(triggering_asset_events: dict | None = None) -> list[str]:
    """s3:// URIs of the manifests the S3 notifications in the triggering events announce."""
    from plugins.iot_provisioning.inbox import manifest_uris_from_s3_events, messages_from_asset_events

    events = (triggering_asset_events or {}).get(FACTORY_INBOX, [])
    return manifest_uris_from_s3_events(messages_from_asset_events(events), INBOX_PREFIX)


@dag(
    dag_id="provision_factory_batch_from_inbox",
    doc_md=__doc__,
    schedule=[FACTORY_INBOX],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["iot", "provisioning", "factory", "intake"],
    default_args=retry_policy(
        retries=2, delay=timedelta(seconds=15), timeout=timedelta(minutes=15), backoff=False
    ),
)
def provision_factory_batch_from_inbox() -> None:
    start_provisioning_runs(manifests_from_events())


provision_factory_batch_from_inbox()
