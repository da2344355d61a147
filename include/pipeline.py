"""The pipeline stages: each reads its inputs, calls the domain's pure parts, writes its outputs.

Intake and validation live here; pre-flight, credentials and parameter files, reconcile and the summary
each in its own include.stage_* module, all reached through this one (callers say pipeline.<stage>).
One Airflow task calls one stage. Rows travel between stages as Parquet tables in S3 (include.run_files says
where); XCom carries only the small records of include.records. Each stage writes each row once, and the
inventory records each row's outcome once per change of state.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any

from include.catalog import load_catalog
from include.errors import ManifestError
from include.manifest import full_verdict, quarantine_csv, read_manifest, validate_manifest
from include.outcomes import QUARANTINED
from include.records import Batch, Validated
from include.settings import Settings
from include.stage_credentials import issue_credentials, write_parameter_files
from include.stage_preflight import IsLive, preflight
from include.stage_reconcile import reconcile, reconcile_task
from include.stage_summary import run_summary, summarize
from include.stage_support import open_inventory, outcome_tuple, own_settings, timed
from include.storage import get_bytes, object_exists, put_bytes, put_table, read_source


# -- 1. intake -------------------------------------------------------------------------------------------
def intake(
    s3: Any,
    settings: Settings,
    source: str,
    *,
    run_id: str,
    dag_id: str | None = None,
    product: str | None = None,
    dry_run: bool = False,
    max_devices: int | None = None,
    catalog: str | None = None,
) -> Batch:
    """Read the manifest (s3:// URI or local path), key the batch by its SHA-256, copy it to the work area."""
    started = time.perf_counter()
    product, catalog = product or None, catalog or None
    if catalog is not None:
        settings = replace(settings, catalog_path=catalog)
    if product is not None and product not in load_catalog(settings.catalog_path):
        raise ManifestError(f"product override {product!r} is not in the product catalog")
    if max_devices is not None and max_devices < 1:
        raise ManifestError(f"max_devices must be at least 1, got {max_devices}")
    data = read_source(s3, source)
    batch = Batch(
        batch_id=hashlib.sha256(data).hexdigest(),
        run_id=run_id,
        dag_id=dag_id,
        source=source,
        bucket=settings.bucket,
        work_prefix=settings.work_prefix,
        product=product,
        catalog=catalog,
        dry_run=bool(dry_run),
        max_devices=max_devices,
        bytes=len(data),
    )
    files = batch.files
    if not object_exists(s3, settings.bucket, files.manifest):
        put_bytes(s3, settings.bucket, files.manifest, data, "text/csv")
    inventory = open_inventory(settings)
    new_batch = inventory.record_batch(batch.batch_id, source, files.manifest, len(data))
    inventory.record_run(
        run_id,
        batch.batch_id,
        source,
        dag_id=dag_id,
        product=product,
        dry_run=dry_run,
        max_devices=max_devices,
    )
    inventory.record_stage(run_id, "intake", time.perf_counter() - started, None)
    return batch.model_copy(update={"new_batch": new_batch})


def fail_run(settings: Settings, run_id: str, source: str, error: BaseException) -> None:
    """Record why a run stopped (the message of a domain error: never key material)."""
    open_inventory(settings).fail_run(run_id, source, f"{type(error).__name__}: {error}")


# -- 2. validate -----------------------------------------------------------------------------------------
def validate(s3: Any, settings: Settings, batch: Batch) -> Validated:
    """Validate the manifest against contract v1 and the catalog; write accepted rows and quarantine.csv."""
    settings = own_settings(settings, batch)
    counter: dict[str, int] = {}
    files = batch.files
    with timed(settings, batch, "validate", counter):
        table = read_manifest(get_bytes(s3, settings.bucket, files.manifest))
        catalog = load_catalog(settings.catalog_path)
        # A dry run issues nothing, so it also runs the checks that issuing makes (device CSRs): its verdict
        # is the one a real run would reach (include.check_manifest gives the same).
        verdict = full_verdict if batch.dry_run else validate_manifest
        result = verdict(table, catalog, product=batch.product, max_devices=batch.max_devices)
        counter["devices"] = result.rows
        put_table(s3, settings.bucket, files.accepted, result.accepted)
        put_bytes(
            s3, settings.bucket, files.quarantine, quarantine_csv(table, result.quarantined), "text/csv"
        )
        refused = [row for row, _, _ in result.quarantined]
        serials, models = _cells(table, "serial_number", refused), _cells(table, "model", refused)
        inventory = open_inventory(settings)
        inventory.record_outcomes(
            batch.run_id,
            batch.batch_id,
            (
                outcome_tuple(
                    row,
                    QUARANTINED,
                    code,
                    sentence,
                    serial_number=serials.get(row),
                    model=batch.product or models.get(row),
                )
                for row, code, sentence in result.quarantined
            ),
        )
        inventory.update_run(batch.run_id, rows=result.rows)
    return Validated(
        rows=result.rows,
        accepted=result.accepted.num_rows,
        quarantined=len(result.quarantined),
        reasons=result.reasons,
        ignored_columns=result.ignored_columns,
        accepted_key=files.accepted,
        quarantine_key=files.quarantine,
    )


def _cells(table: Any, column: str, rows: list[int]) -> dict[int, str | None]:
    """Refused rows' cells of a column (trimmed, at most 128 characters), for their inventory records."""
    if column not in table.columns:
        return {}
    at = table.columns.index(column)
    return {row: cells[at].strip()[:128] for row, cells in zip(rows, table.cells_of(rows), strict=True)}


__all__ = [
    "IsLive",
    "fail_run",
    "intake",
    "issue_credentials",
    "preflight",
    "reconcile",
    "reconcile_task",
    "run_summary",
    "summarize",
    "validate",
    "write_parameter_files",
]
