"""
# Provision a factory batch

One production batch (a CSV manifest from the factory's MES) becomes things, certificates and policies
in AWS IoT, and every row of the manifest ends in exactly one outcome in the asset inventory:
**provisioned**, **failed** (AWS said no), **quarantined** (the pipeline refused the row) or **skipped**
(already provisioned).

1. `intake`: reads the manifest (s3:// URI or local path); the batch id is the SHA-256 of its content.
2. `validate`: every row against manifest v1 and the product catalog; refused rows go to
   `quarantine.csv` with a reason code and a sentence.
3. `preflight`: IoT prerequisites (thing types, groups, policies, the factory CA); devices already
   provisioned are skipped. A **dry run** stops here, with the full report.
4. `issue_credentials`: one mapped task per chunk; keys and certificates from the factory CA. Private
   keys go only into the encrypted bundle for the factory line.
5. `write_parameter_files`: one JSON-lines parameter file and rendered template per registration group.
6. `register`: StartThingRegistrationTask per group, in pool `iot_bulk_registration` (one slot: AWS
   runs one task at a time); waits deferred; a retried or cleared task resumes the recorded AWS task.
7. `reconcile`: RESULTS/ERRORS reports back to manifest rows; inventory upserted; `failed.csv`.
8. `summarize`: counts per outcome, the report in S3 and in this log, an event on the
   `provisioned_factory_batches` asset for downstream DAGs.

Trigger it from the form (manifest, product override, dry run, device cap); the inbox DAGs
`provision_factory_batch_from_inbox` (S3 event via SQS) and `scan_factory_inbox` (schedule) start it too.
Running the same manifest again is safe: its provisioned devices are reported as skipped.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from itertools import chain
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from plugins.iot_provisioning.connections import AWS_CONN_ID, REGISTRATION_POOL
from plugins.iot_provisioning.operators import StartThingRegistrationTaskOperator

SAMPLE_MANIFEST = str(Path(__file__).resolve().parent.parent / "data" / "sample" / "manifest.csv")
BUCKET = os.environ.get("PIPELINE_BUCKET", "factory-provisioning")
log = logging.getLogger(__name__)
# Seconds between DescribeThingRegistrationTask polls of the deferred register task.
REGISTRATION_POLL_SECONDS = int(os.environ.get("PIPELINE_REGISTRATION_POLL_SECONDS", "10"))
PROVISIONED_BATCHES = Asset(name="provisioned_factory_batches", uri=f"s3://{BUCKET}/provisioned-batches")


def _catalog_models() -> list[str]:
    """Models of the product catalog, for the trigger form's product list (a small local YAML file)."""
    import yaml

    from include.settings import Settings

    try:
        document = yaml.safe_load(Path(Settings.from_env().catalog_path).read_text(encoding="utf-8"))
        return sorted(str(model) for model in document["products"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []  # the validate task reports a broken catalog precisely; the form stays usable


def _settings() -> Any:
    from include.settings import Settings

    return Settings.from_env()


@task
def intake(params: dict | None = None, run_id: str | None = None) -> dict:
    """Read the manifest and record the batch (content hash) and this run."""
    from include import pipeline
    from plugins.iot_provisioning.connections import aws_clients

    s3, _ = aws_clients(AWS_CONN_ID)
    return pipeline.intake(
        s3,
        _settings(),
        params["manifest"],
        run_id=run_id,
        product=params.get("product"),
        dry_run=bool(params.get("dry_run")),
        max_devices=params.get("max_devices"),
    )


@task
def validate(batch: dict) -> dict:
    """Validate every row; refused rows go to the quarantine CSV with a reason."""
    from include import pipeline
    from plugins.iot_provisioning.connections import aws_clients

    s3, _ = aws_clients(AWS_CONN_ID)
    return pipeline.validate(s3, _settings(), batch)


@task
def preflight(batch: dict) -> dict:
    """IoT prerequisites and the inventory: what is missing, what is already provisioned, the chunks."""
    from include import pipeline
    from plugins.iot_provisioning.connections import aws_clients, factory_ca_certificate

    s3, iot = aws_clients(AWS_CONN_ID)
    return pipeline.preflight(s3, iot, _settings(), batch, ca_certificate_pem=factory_ca_certificate())


@task.short_circuit
def continue_unless_dry_run(checks: dict) -> bool:
    """A dry run ends after pre-flight (its report is complete); everything downstream is skipped."""
    return not checks.get("dry_run")


@task
def chunk_plan(checks: dict) -> list[dict]:
    """The chunks of devices to issue credentials for (one mapped task each; none if all were skipped)."""
    return list(checks["chunks"])


@task(map_index_template="{{ chunk_label }}")
def issue_credentials(batch: dict, chunk: dict) -> dict:
    """Keys and certificates for one chunk of devices, signed by the factory CA."""
    from include import pipeline
    from plugins.iot_provisioning.connections import aws_clients, factory_ca_pems

    get_current_context()["chunk_label"] = f"chunk {chunk['index']}: rows {chunk['start']}-{chunk['stop']}"
    s3, _ = aws_clients(AWS_CONN_ID)
    certificate_pem, private_key_pem = factory_ca_pems()
    return pipeline.issue_credentials(s3, _settings(), batch, chunk, certificate_pem, private_key_pem)


@task(trigger_rule="none_failed")
def write_parameter_files(batch: dict, chunks: list[dict]) -> list[dict]:
    """One parameter file and template per registration group (none when every device was skipped)."""
    from include import pipeline
    from plugins.iot_provisioning.connections import aws_clients

    s3, _ = aws_clients(AWS_CONN_ID)
    return pipeline.write_parameter_files(s3, _settings(), batch, sorted(chunks, key=lambda c: c["index"]))


@task(map_index_template="{{ group_label }}")
def reconcile(batch: dict, registration: dict) -> dict:
    """Map the task's RESULTS and ERRORS reports to manifest rows and update the inventory."""
    from include import pipeline
    from include.reports import download_report_lines
    from plugins.iot_provisioning.connections import aws_clients
    from plugins.iot_provisioning.hooks import IotHook

    get_current_context()["group_label"] = registration["group"]
    hook = IotHook(aws_conn_id=AWS_CONN_ID)
    task_id = registration["task_id"]

    def lines(report_type: str) -> Any:
        links = hook.list_thing_registration_task_report_links(task_id, report_type)
        return chain.from_iterable(download_report_lines(link) for link in links)

    s3, _ = aws_clients(AWS_CONN_ID)
    return pipeline.reconcile(
        s3,
        _settings(),
        batch,
        registration["registration_group"],
        registration,
        lines("RESULTS"),
        lines("ERRORS"),
    )


@task(trigger_rule="none_failed", outlets=[PROVISIONED_BATCHES])
def summarize(batch: dict, reconciled: list[dict], outlet_events: Any = None) -> dict:
    """Count every row's outcome, write the report, log it, and tell downstream DAGs."""
    from include import pipeline
    from plugins.iot_provisioning.connections import aws_clients
    from plugins.iot_provisioning.reporting import format_summary

    s3, _ = aws_clients(AWS_CONN_ID)
    summary = pipeline.summarize(s3, _settings(), batch)
    log.info("Batch report\n%s", format_summary(summary))
    outlet_events[PROVISIONED_BATCHES].extra = {
        key: summary.get(key)
        for key in ("batch_id", "run_id", "rows", "provisioned", "failed", "quarantined", "skipped")
    }
    return summary


@dag(
    dag_id="provision_factory_batch",
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    tags=["iot", "provisioning", "factory"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=15),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=2),
    },
    params={
        "manifest": Param(
            SAMPLE_MANIFEST,
            type="string",
            minLength=1,
            title="Manifest",
            description="The batch's CSV manifest: an s3://bucket/key URI or a path readable by the workers.",
            section="Batch",
        ),
        "product": Param(
            None,
            type=["null", "string"],
            enum=[None, *_catalog_models()],
            title="Product override",
            description="Treat every row as this catalog model (e.g. TH-100); empty keeps each row's model.",
            section="Batch",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Validate and run pre-flight only: nothing is created in AWS IoT.",
            section="Options",
        ),
        "max_devices": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Device cap",
            description="Provision at most this many devices of the manifest (empty: all).",
            section="Options",
        ),
    },
)
def provision_factory_batch() -> None:
    batch = intake()
    validation = validate(batch)
    checks = preflight(batch)
    validation >> checks
    chunks = chunk_plan(checks)
    continue_unless_dry_run(checks) >> chunks
    credentials = issue_credentials.partial(batch=batch).expand(chunk=chunks)
    groups = write_parameter_files(batch, credentials)
    registrations = StartThingRegistrationTaskOperator.partial(
        task_id="register",
        batch=batch,
        aws_conn_id=AWS_CONN_ID,
        pool=REGISTRATION_POOL,
        waiter_delay=REGISTRATION_POLL_SECONDS,
        map_index_template="{{ task.registration_group['group'] }}",
        # A registration can run for hours; the waiting happens deferred, not in a worker slot.
        execution_timeout=timedelta(hours=12),
    ).expand(registration_group=groups)
    reconciled = reconcile.partial(batch=batch).expand(registration=registrations.output)
    summarize(batch, reconciled)


provision_factory_batch()
