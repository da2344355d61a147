"""
# Audit drift between the inventory and AWS IoT

Daily (and by hand, for one batch or everything): does the registry still hold what the inventory says?
Things missing, certificates whose status differs, certificates not on their thing, policy attachments
that differ from the product's, what a deleted or failed device left behind, and things (of the
pipeline's thing types) or certificates (of its CAs) the inventory does not know.

1. `plan_audit`: the inventory's devices in scope (provisioned, deleted, failed), in chunks.
2. `audit_chunk`: one mapped task per chunk; each device against the registry.
3. `find_unknown`: for a batch, its manifest's thing names (a bounded listing, not a call per device);
   for everything, the things of the pipeline's thing types and the certificates of its CAs.
4. `report`: counts by kind and a CSV of every difference (`drift.csv`) in S3 and this log. With
   **repair**, the inventory is updated from the registry (records set or adopted); the registry is
   never changed here: that is `manage_devices`, on an explicit action.
5. `announce_drift`: an event on the `iot_registry_drift` asset, only when drift was found.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

from plugins.iot_provisioning.connections import AWS_CONN_ID
from plugins.iot_provisioning.dag_parts import (
    FORM_SECTION,
    START_DATE,
    rate_limit_param,
    retry_policy,
)
from plugins.iot_provisioning.run_state import fail_fast
from plugins.iot_provisioning.settings_source import pipeline_settings

DAG_ID = "audit_drift"
BUCKET = os.environ.get("PIPELINE_BUCKET", "factory-provisioning")
PARALLEL_CHUNKS = 4
DRIFT_FOUND = Asset(name="iot_registry_drift", uri=f"s3://{BUCKET}/audits")


def _clients() -> tuple[Any, Any]:
    from plugins.iot_provisioning.connections import aws_clients

    return aws_clients(AWS_CONN_ID)


@task
def plan_audit(params: dict | None = None, run_id: str | None = None) -> dict:
    """The inventory's devices in scope, in chunks."""
    from include import drift

    plan = drift.plan_audit(
        _clients()[0],
        pipeline_settings(),
        run_id=run_id,
        batch_id=params.get("batch_id") or None,
        repair=bool(params.get("repair")),
    )
    return plan.to_xcom()


@task
def chunk_list(plan: dict) -> list[dict]:
    return list(plan["chunks"])


def _rate(params: dict) -> float | None:
    rate = params.get("rate_limit")
    return None if rate is None else float(rate) / PARALLEL_CHUNKS


@task(
    map_index_template="{{ chunk_label }}",
    max_active_tis_per_dagrun=PARALLEL_CHUNKS,
    execution_timeout=timedelta(hours=6),
)
def audit_chunk(plan: dict, chunk: dict, params: dict | None = None) -> dict:
    """Each device of one chunk against the registry."""
    from include import drift
    from include.lifecycle_records import AuditPlan, DeviceChunk

    part = DeviceChunk.of(chunk)
    get_current_context()["chunk_label"] = part.label
    s3, iot = _clients()
    result = drift.audit_chunk(
        iot, s3, pipeline_settings(), AuditPlan.of(plan), part, rate_limit=_rate(params)
    )
    return result.to_xcom()


@task(execution_timeout=timedelta(hours=6))
def find_unknown(plan: dict, params: dict | None = None) -> dict:
    """What the registry has and the inventory does not know."""
    from include import drift
    from include.lifecycle_records import AuditPlan

    s3, iot = _clients()
    with fail_fast(ValueError):  # e.g. a batch id with no manifest in S3
        return drift.find_unknown(
            iot, s3, pipeline_settings(), AuditPlan.of(plan), rate_limit=_rate(params)
        ).to_xcom()


@task(trigger_rule="none_failed")
def report(plan: dict, chunks: list[dict], unknown: dict) -> dict:
    """drift.csv, counts, the report; the inventory repaired from the registry in repair mode."""
    from include import drift
    from include.lifecycle_records import AuditPlan, ChunkDrift

    results = [ChunkDrift.of(c) for c in [*chunks, unknown]]
    return drift.report(_clients()[0], pipeline_settings(), AuditPlan.of(plan), results)  # logs the report


@task.short_circuit(ignore_downstream_trigger_rules=False)
def drift_found(summary: dict) -> bool:
    """Only drift is announced."""
    return bool(summary["drift"])


@task(outlets=[DRIFT_FOUND])
def announce_drift(summary: dict, outlet_events: Any = None) -> None:
    """An event on the drift asset: downstream DAGs (alerts, tickets) start from it."""
    outlet_events[DRIFT_FOUND].extra = {
        key: summary.get(key) for key in ("run_id", "scope", "differences", "kinds", "repair")
    } | {"drift_csv": summary["files"]["drift"]}


@task(trigger_rule="none_failed")
def finish(summary: dict) -> dict:
    """The audit's summary, as the run's result."""
    return summary


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["iot", "lifecycle", "audit"],
    default_args=retry_policy(retries=3, delay=timedelta(seconds=30), timeout=timedelta(hours=1)),
    params={
        "batch_id": Param(
            None,
            type=["null", "string"],
            title="Batch id",
            section=FORM_SECTION,
            description="Audit this batch only (its manifest's thing names too); empty: everything.",
        ),
        "repair": Param(
            False,
            type="boolean",
            title="Repair the inventory",
            section=FORM_SECTION,
            description="Update the inventory from the registry (never the other way).",
        ),
        "rate_limit": rate_limit_param("the whole audit"),
    },
)
def audit_drift() -> None:
    planned = plan_audit()
    chunks = audit_chunk.partial(plan=planned).expand(chunk=chunk_list(planned))
    summary = report(planned, chunks, find_unknown(planned))
    drift_found(summary) >> announce_drift(summary) >> finish(summary)


audit_drift()
