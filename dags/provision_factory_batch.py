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
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

from plugins.iot_provisioning.connections import AWS_CONN_ID, REGISTRATION_POOL
from plugins.iot_provisioning.dag_parts import (
    FORM_SECTION,
    START_DATE,
    dry_run_param,
    form_models,
    retry_policy,
    s3_client,
)
from plugins.iot_provisioning.notifications import BatchEndNotifier
from plugins.iot_provisioning.operators import StartThingRegistrationTaskOperator
from plugins.iot_provisioning.settings_source import pipeline_settings

DAG_ID = "provision_factory_batch"
BUCKET = os.environ.get("PIPELINE_BUCKET", "factory-provisioning")
log = logging.getLogger(__name__)
# Seconds between polls of the deferred register task (its AWS task, or the account's registration slot).
REGISTRATION_POLL_SECONDS = int(os.environ.get("PIPELINE_REGISTRATION_POLL_SECONDS", "10"))
PROVISIONED_BATCHES = Asset(name="provisioned_factory_batches", uri=f"s3://{BUCKET}/provisioned-batches")


@task
def intake(params: dict | None = None, run_id: str | None = None, dag: Any = None) -> dict:
    """Read the manifest and record the batch (content hash) and this run."""
    from include import pipeline
    from plugins.iot_provisioning.run_state import fail_fast_on_input_errors

    with fail_fast_on_input_errors(run_id, params["manifest"]):
        batch = pipeline.intake(
            s3_client(),
            pipeline_settings(),
            params["manifest"],
            run_id=run_id,
            dag_id=dag.dag_id,
            product=params.get("product"),
            dry_run=bool(params.get("dry_run")),
            max_devices=params.get("max_devices"),
            catalog=params.get("catalog"),
        )
    return batch.to_xcom()


@task
def validate(batch: dict) -> dict:
    """Validate every row; refused rows go to the quarantine CSV with a reason."""
    from include import pipeline
    from include.records import Batch
    from plugins.iot_provisioning.run_state import fail_fast_on_input_errors

    record = Batch.of(batch)
    with fail_fast_on_input_errors(record.run_id, record.source):
        return pipeline.validate(s3_client(), pipeline_settings(), record).to_xcom()


@task
def preflight(batch: dict, ti: Any = None) -> dict:
    """IoT prerequisites, then claims: what is provisioned or held elsewhere, what a dead run left, chunks."""
    from include import pipeline
    from include.records import Batch
    from plugins.iot_provisioning.connections import acm_pca_client, aws_clients, factory_ca_certificate
    from plugins.iot_provisioning.run_state import airflow_liveness, fail_fast_on_input_errors

    record = Batch.of(batch)
    s3, iot = aws_clients(AWS_CONN_ID)
    with fail_fast_on_input_errors(record.run_id, record.source):
        checks = pipeline.preflight(
            s3,
            iot,
            pipeline_settings(),
            record,
            ca_certificate_pem=factory_ca_certificate(),
            is_live=airflow_liveness(ti, DAG_ID),
            acm_pca=acm_pca_client(AWS_CONN_ID),
        )
    return checks.to_xcom()


@task.short_circuit(ignore_downstream_trigger_rules=False)
def continue_unless_dry_run(checks: dict) -> bool:
    """A dry run issues and registers nothing: the work after pre-flight is skipped; the summary runs."""
    return not checks.get("dry_run")


@task
def chunk_plan(checks: dict) -> list[dict]:
    """The chunks of devices to issue credentials for (one mapped task each; none if all were skipped)."""
    return list(checks["chunks"])


@task(map_index_template="{{ chunk_label }}")
def issue_credentials(batch: dict, chunk: dict) -> dict:
    """Keys and certificates for one chunk of devices, signed by the factory CA."""
    from include import pipeline
    from include.records import Batch, Chunk
    from plugins.iot_provisioning.connections import acm_pca_client, aws_clients, factory_ca_pems
    from plugins.iot_provisioning.run_state import fail_fast_on_input_errors

    record, part = Batch.of(batch), Chunk.of(chunk)
    get_current_context()["chunk_label"] = part.label
    certificate_pem, private_key_pem = factory_ca_pems()
    s3, iot = aws_clients(AWS_CONN_ID)
    with fail_fast_on_input_errors(record.run_id, record.source):
        result = pipeline.issue_credentials(
            s3,
            pipeline_settings(),
            record,
            part,
            certificate_pem,
            private_key_pem,
            iot=iot,
            acm_pca=acm_pca_client(AWS_CONN_ID),
        )
    return result.to_xcom()


@task(trigger_rule="none_failed")
def write_parameter_files(batch: dict, checks: dict, chunks: list[dict]) -> list[dict]:
    """One parameter file per registration unit (none when every device was skipped)."""
    from include import pipeline
    from include.records import Batch, Checks, ChunkResult
    from plugins.iot_provisioning.run_state import fail_fast_on_input_errors

    record = Batch.of(batch)
    with fail_fast_on_input_errors(record.run_id, record.source):
        units = pipeline.write_parameter_files(
            s3_client(), pipeline_settings(), record, Checks.of(checks), [ChunkResult.of(c) for c in chunks]
        )
    return [unit.to_xcom() for unit in units]


@task(map_index_template="{{ unit_label }}")
def reconcile(batch: dict, registration: dict) -> dict:
    """Match the task's RESULTS and ERRORS reports to the unit's rows and update the inventory."""
    from include import pipeline
    from include.records import Batch, Registration, RegistrationUnit
    from plugins.iot_provisioning.connections import aws_clients
    from plugins.iot_provisioning.run_state import fail_fast_on_input_errors

    record, unit = Batch.of(batch), RegistrationUnit.of(registration["unit"])
    state = Registration.of(registration["registration"])
    get_current_context()["unit_label"] = unit.label
    s3, iot = aws_clients(AWS_CONN_ID)
    with fail_fast_on_input_errors(record.run_id, record.source):
        result = pipeline.reconcile_task(iot, s3, pipeline_settings(), record, unit, state)
    return result.to_xcom()


@task(trigger_rule="none_failed", outlets=[PROVISIONED_BATCHES])
def summarize(batch: dict, reconciled: list[dict], outlet_events: Any = None) -> dict:
    """Count every row's outcome, write the report, log it, and tell downstream DAGs."""
    from include import pipeline
    from include.records import Batch
    from include.summary import render_report
    from plugins.iot_provisioning.run_state import fail_fast_on_input_errors

    record = Batch.of(batch)
    with fail_fast_on_input_errors(record.run_id, record.source):
        summary = pipeline.summarize(s3_client(), pipeline_settings(), record)
    log.info("Batch report\n%s", render_report(summary))
    outlet_events[PROVISIONED_BATCHES].extra = {
        key: summary.get(key)
        for key in ("batch_id", "run_id", "rows", "provisioned", "failed", "quarantined", "skipped")
    }
    return summary


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=4,
    tags=["iot", "provisioning", "factory"],
    # Who hears of a batch's end is configuration (Variable factory_notifications), not code.
    on_success_callback=BatchEndNotifier(state="success"),
    on_failure_callback=BatchEndNotifier(state="failed"),
    default_args=retry_policy(retries=2, delay=timedelta(seconds=15), timeout=timedelta(hours=2)),
    params={
        "manifest": Param(
            # The inbox, to be completed with the manifest's name: no path of any one machine. (A Param
            # without a default breaks dag.test() once the DAG has callbacks: Airflow 3.3 builds their
            # context from the task's params before the run's conf.)
            f"s3://{BUCKET}/inbox/",
            type="string",
            minLength=1,
            title="Manifest",
            section=FORM_SECTION,
            description=(
                "The batch's CSV manifest: an s3://bucket/key URI (complete the inbox's with the file "
                f"name, for example s3://{BUCKET}/inbox/batch-0042.csv) or a path every worker can read."
            ),
        ),
        "product": Param(
            None,
            type=["null", "string"],
            enum=[None, *form_models(fleet=False)],
            values_display={None: "Each row's own model"},
            title="Product override",
            section=FORM_SECTION,
            description="Treat every row as this catalog model; the default keeps each row's model.",
        ),
        "dry_run": dry_run_param("Validate and run pre-flight only: nothing is created in AWS IoT."),
        "max_devices": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Device cap",
            section=FORM_SECTION,
            description="Provision at most this many devices of the manifest (empty: all).",
        ),
        "catalog": Param(
            None,
            type=["null", "string"],
            minLength=1,
            title="Product catalog",
            section=FORM_SECTION,
            description=(
                "A product catalog (YAML) of this run's own, readable by every worker (the CDF API's bulk "
                "requests bring one); empty: the deployment's."
            ),
        ),
    },
)
def provision_factory_batch() -> None:
    batch = intake()
    validation = validate(batch)
    checks = preflight(batch)
    validation >> checks
    chunks = chunk_plan(checks)
    credentials = issue_credentials.partial(batch=batch).expand(chunk=chunks)
    units = write_parameter_files(batch, checks, credentials)
    continue_unless_dry_run(checks) >> [chunks, units]
    registrations = StartThingRegistrationTaskOperator.partial(
        task_id="register",
        batch=batch,
        aws_conn_id=AWS_CONN_ID,
        pool=REGISTRATION_POOL,
        waiter_delay=REGISTRATION_POLL_SECONDS,
        slot_delay=REGISTRATION_POLL_SECONDS,
        map_index_template="{{ task.unit['unit'] }}",
        # A registration can run for hours; the waiting happens deferred, not in a worker slot.
        execution_timeout=timedelta(hours=12),
    ).expand(unit=units)
    reconciled = reconcile.partial(batch=batch).expand(registration=registrations.output)
    summarize(batch, reconciled)


provision_factory_batch()
