"""Inbox intake against the emulator: S3 notification -> SQS -> SqsSensorTrigger event -> manifest URI,
and the scheduled scan run by Airflow starting one provision_factory_batch run per new content, once."""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from tests.dags.airflow_support import DAGS_DIR

pytestmark = pytest.mark.airflow

MANIFEST = b"serial_number,model\r\nTH024999001,TH-100\r\n"


@pytest.fixture
def inbox(fresh_emulator, aws_connection_env, airflow_db, tmp_path, monkeypatch):
    from include.settings import Settings
    from scripts.bootstrap import bootstrap

    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    settings = Settings.from_env()
    report = bootstrap(
        endpoint_url=fresh_emulator.endpoint_url, local_state=tmp_path, settings=settings, region="us-east-1"
    )
    return SimpleNamespace(
        s3=fresh_emulator.client("s3"), settings=settings, queue_url=report["inbox_queue_url"]
    )


def test_s3_notification_reaches_the_asset_event_and_names_the_manifest(inbox):
    from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

    from plugins.iot_provisioning.inbox import manifest_uris_from_s3_events, messages_from_asset_events

    inbox.s3.put_object(Bucket=inbox.settings.bucket, Key="inbox/line 3/batch-1.csv", Body=MANIFEST)
    inbox.s3.put_object(Bucket=inbox.settings.bucket, Key="batches/not-inbox.csv", Body=MANIFEST)
    trigger = SqsSensorTrigger(
        sqs_queue=inbox.queue_url, aws_conn_id="aws_default", waiter_delay=1, max_messages=10
    )

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), timeout=30))
    asset_event = SimpleNamespace(extra={"from_trigger": True, "payload": event.payload})
    uris = manifest_uris_from_s3_events(
        messages_from_asset_events([asset_event]), inbox.settings.inbox_prefix
    )
    assert uris == [f"s3://{inbox.settings.bucket}/inbox/line 3/batch-1.csv"]


def test_scan_starts_one_run_per_new_content_and_never_twice(inbox):
    from airflow.models import DagBag, DagRun
    from airflow.utils.session import create_session

    from include import pipeline
    from plugins.iot_provisioning.inbox_tasks import select_new_manifests

    bucket = inbox.settings.bucket
    inbox.s3.put_object(Bucket=bucket, Key="inbox/a.csv", Body=MANIFEST)
    inbox.s3.put_object(Bucket=bucket, Key="inbox/a-again.csv", Body=MANIFEST)  # same content, new name
    known = MANIFEST.replace(b"999001", b"999002")
    inbox.s3.put_object(Bucket=bucket, Key="inbox/known.csv", Body=known)
    pipeline.intake(inbox.s3, inbox.settings, f"s3://{bucket}/inbox/known.csv", run_id="manual__earlier")

    scan = DagBag(dag_folder=str(DAGS_DIR / "scan_factory_inbox.py")).dags["scan_factory_inbox"]
    for _ in range(2):
        run = scan.test()
        assert run.state == "success"

    expected = f"inbox__{hashlib.sha256(MANIFEST).hexdigest()}"
    with create_session() as session:
        started = session.scalars(sa.select(DagRun).where(DagRun.dag_id == "provision_factory_batch")).all()
        started = [r for r in started if r.run_id.startswith("inbox__")]
    assert [r.run_id for r in started] == [expected]
    assert started[0].conf["manifest"] in {f"s3://{bucket}/inbox/a.csv", f"s3://{bucket}/inbox/a-again.csv"}
    assert select_new_manifests.function([f"s3://{bucket}/inbox/known.csv"]) == []
