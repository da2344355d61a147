"""
# Manage provisioned devices

Deactivate, revoke, reactivate, delete or rekey devices the pipeline provisioned, selected from the
inventory by **batch id**, **provisioning run id**, a list of **serial numbers**, or the outcome
**failed** (every filter given must hold). Every device's result goes to the inventory's action log
with the time and reason, and its record changes (certificate status, deleted, new certificate).

1. `plan`: the selected devices, cut into chunks (files in S3).
2. `act`: one mapped task per chunk. Each device is read from the registry first, and only what it
   still needs is done, in the safe order: deactivate (or revoke) the certificate, detach its
   policies, detach it from the thing, delete it when no other thing holds it, delete the thing.
   Deletes refused by AWS's eventual consistency right after a detach are retried with backoff.
   A retried or cleared chunk skips the devices it already finished: nothing is done twice.
   `rekey` issues a new certificate per thing (a new key, sealed in a key bundle for the factory
   line, or the device's new CSR from `csr_source`), attaches it, then deactivates the old one.
3. `summarize`: counts, eventual-consistency retries and AWS requests; every device's steps in
   `changes.csv`, the report in S3 and in this log.

A **dry run** reads the registry and lists exactly what each device would get; it changes nothing.
The **rate limit** caps this run's AWS IoT requests per second (shared by its chunks).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.outcomes import ACTIONS, DEACTIVATE, FAILED, REKEY
from plugins.iot_provisioning.connections import AWS_CONN_ID
from plugins.iot_provisioning.dag_parts import (
    FORM_SECTION,
    START_DATE,
    dry_run_param,
    rate_limit_param,
    retry_policy,
    s3_client,
)
from plugins.iot_provisioning.run_state import fail_fast
from plugins.iot_provisioning.settings_source import pipeline_settings

DAG_ID = "manage_devices"
PARALLEL_CHUNKS = 4  # chunk tasks of one run at a time; the rate limit is shared among them
log = logging.getLogger(__name__)


@task
def plan(params: dict | None = None, run_id: str | None = None) -> dict:
    """Select the devices from the inventory and cut them into chunks."""
    from include import lifecycle
    from include.lifecycle_store import Selection

    selection = Selection(
        batch_id=params.get("batch_id") or None,
        run_id=params.get("run_id") or None,
        serials=tuple(params.get("serials") or ()),
        outcome=params.get("outcome") or None,
    )
    with fail_fast(ValueError):
        result = lifecycle.plan(
            s3_client(),
            pipeline_settings(),
            run_id=run_id,
            action=params["action"],
            selection=selection,
            dry_run=bool(params.get("dry_run")),
            reason=params.get("reason") or "",
            rate_limit=params.get("rate_limit"),
            csr_source=params.get("csr_source"),
            parallel_chunks=PARALLEL_CHUNKS,
        )
    log.info(
        "%s: %d devices (%s) in %d chunks",
        result.action,
        result.devices,
        selection.describe(),
        len(result.chunks),
    )
    return result.to_xcom()


@task
def chunk_list(plan: dict) -> list[dict]:
    """The chunks to act on (none when the selection is empty)."""
    return list(plan["chunks"])


@task(
    map_index_template="{{ chunk_label }}",
    max_active_tis_per_dagrun=PARALLEL_CHUNKS,
    execution_timeout=timedelta(hours=6),
)
def act(plan: dict, chunk: dict) -> dict:
    """The action on one chunk's devices, device by device (finished ones skipped on a retry)."""
    from include import lifecycle
    from include.lifecycle_records import DeviceChunk, LifecyclePlan
    from plugins.iot_provisioning.connections import aws_clients, factory_ca_pems

    record, part = LifecyclePlan.of(plan), DeviceChunk.of(chunk)
    get_current_context()["chunk_label"] = part.label
    s3, iot = aws_clients(AWS_CONN_ID)
    ca_pems = factory_ca_pems() if record.action == REKEY and not record.dry_run else None
    with fail_fast(ValueError):
        return lifecycle.run_chunk(iot, s3, pipeline_settings(), record, part, ca_pems=ca_pems).to_xcom()


@task(trigger_rule="none_failed")
def summarize(plan: dict, chunks: list[dict]) -> dict:
    """Counts by state, retries and requests; changes.csv and the report."""
    from include import lifecycle_report
    from include.lifecycle_records import ChunkActions, LifecyclePlan

    results = [ChunkActions.of(c) for c in chunks]
    summary = lifecycle_report.summarize(s3_client(), pipeline_settings(), LifecyclePlan.of(plan), results)
    log.info("Lifecycle report\n%s", lifecycle_report.render_report(summary))
    return summary


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=2,
    tags=["iot", "lifecycle"],
    default_args=retry_policy(retries=3, delay=timedelta(seconds=30), timeout=timedelta(hours=1)),
    params={
        "action": Param(
            DEACTIVATE,
            type="string",
            enum=list(ACTIONS),
            title="Action",
            section=FORM_SECTION,
            description="deactivate, revoke or reactivate the certificates; delete the devices from AWS IoT; "
            "rekey: a new certificate per thing, the old one deactivated after.",
        ),
        "batch_id": Param(
            None,
            type=["null", "string"],
            title="Batch id",
            section=FORM_SECTION,
            description="The devices of this batch (the manifest's SHA-256, as in the batch summary).",
        ),
        "run_id": Param(
            None,
            type=["null", "string"],
            title="Provisioning run id",
            section=FORM_SECTION,
            description="The devices this provision_factory_batch run provisioned or failed.",
        ),
        "serials": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Serial numbers",
            section=FORM_SECTION,
            description="Only devices with these serial numbers.",
        ),
        "outcome": Param(
            None,
            type=["null", "string"],
            enum=[None, FAILED],
            title="Outcome",
            section=FORM_SECTION,
            description="failed: only devices whose provisioning failed (with delete: what they left).",
        ),
        "dry_run": dry_run_param("List exactly what would change, device by device; change nothing."),
        "rate_limit": rate_limit_param("the whole run"),
        "reason": Param(
            "",
            type="string",
            maxLength=500,
            title="Reason",
            section=FORM_SECTION,
            description="Why: recorded with every device's result in the inventory.",
        ),
        "csr_source": Param(
            None,
            type=["null", "string"],
            title="New CSRs (rekey)",
            section=FORM_SECTION,
            description="For rekey of device-CSR products: a CSV (s3:// URI or path) with columns csr and "
            "thing_name or serial_number.",
        ),
    },
)
def manage_devices() -> None:
    planned = plan()
    results = act.partial(plan=planned).expand(chunk=chunk_list(planned))
    summarize(planned, results)


manage_devices()
