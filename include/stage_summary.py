"""Stage 7, summary: every row's outcome counted (nothing lost), failed.csv, summary.json and report.md."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from include.csv_safety import write_csv
from include.errors import AccountingError
from include.inventory import Inventory
from include.lifecycle_orphans import orphans_summary
from include.manifest import quarantine_csv, read_header, read_manifest, retry_csv
from include.outcomes import FAILED, OUTCOMES, PENDING, QUARANTINED, RUN_FINISHED, SKIPPED
from include.records import Batch
from include.settings import Settings
from include.stage_support import open_inventory
from include.storage import get_bytes, put_bytes
from include.summary import render_report


def _counts(inventory: Inventory, run_id: str, dry_run: bool) -> dict[str, Any]:
    """The run's rows by outcome and reason, and whether they add up to the manifest's data rows."""
    run = inventory.run(run_id) or {}
    counts = inventory.outcome_counts(run_id)
    rows = int(run.get("rows") or 0)
    pending = counts.get(PENDING, 0)
    total = sum(counts.get(o, 0) for o in OUTCOMES)
    return {
        "rows": rows,
        **{outcome: counts.get(outcome, 0) for outcome in OUTCOMES},
        "planned": pending if dry_run else 0,
        "pending": 0 if dry_run else pending,
        "accounted": (total + pending == rows) if dry_run else (total == rows and pending == 0),
        "reasons": inventory.reason_counts(run_id, QUARANTINED),
        "skip_reasons": inventory.reason_counts(run_id, SKIPPED),
        "errors": inventory.reason_counts(run_id, FAILED),
    }


def run_summary(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """What the inventory knows of a run that stopped early: counts so far and why it stopped."""
    inventory = open_inventory(settings)
    run = inventory.run(run_id)
    if run is None:
        return None
    if run.get("summary"):
        return dict(run["summary"])
    return {
        "batch_id": run.get("batch_id") or None,
        "run_id": run_id,
        "source": run.get("source"),
        "dry_run": bool(run.get("dry_run")),
        **_counts(inventory, run_id, bool(run.get("dry_run"))),
        "state": run.get("state"),
        "error": run.get("error"),
    }


def summarize(s3: Any, settings: Settings, batch: Batch) -> dict[str, Any]:
    """Count every row's outcome (asserting nothing is lost); failed.csv, summary.json and report.md.

    Raises AccountingError (after writing the files) when the outcomes do not add up to the data rows.
    """
    inventory = open_inventory(settings)
    files = batch.files
    run = inventory.run(batch.run_id) or {}
    counts = _counts(inventory, batch.run_id, batch.dry_run)
    if not batch.dry_run:
        _write_row_files(s3, settings, inventory, batch)
    tasks = [
        {
            "unit": task["unit"],
            "group": task["group_name"],
            "task_id": task["task_id"],
            "status": task["status"],
            "success_count": task["success_count"],
            "failure_count": task["failure_count"],
            "adopted_from": task["spec"].get("adopted_from"),
        }
        for task in inventory.registration_tasks(batch.run_id)
    ]
    started = run.get("started_at")
    total_seconds = (dt.datetime.now(dt.UTC) - started).total_seconds() if started else 0.0
    bundles = _keys_under(s3, settings.bucket, files.bundles_prefix)
    certificates = {
        key.rsplit("/", 1)[-1].removesuffix(".tar"): key
        for key in _keys_under(s3, settings.bucket, files.certificates_prefix)
    }
    summary: dict[str, Any] = {
        "batch_id": batch.batch_id,
        "run_id": batch.run_id,
        "source": batch.source,
        "dry_run": batch.dry_run,
        **counts,
        "registration_tasks": tasks,
        "orphans": orphans_summary(s3, settings.bucket, files.prefix, settings.orphans),
        "durations": {
            "total_seconds": round(total_seconds, 3),
            "stages": inventory.stage_timings(batch.run_id),
        },
        "files": {
            "bucket": settings.bucket,
            "manifest": files.manifest,
            "accepted": files.accepted,
            "quarantine": files.quarantine,
            "preflight": files.preflight,
            **({} if batch.dry_run else {"failed": files.failed}),
            "summary": files.summary,
            "report": files.report,
            "bundles": bundles,
            "certificates": certificates,
        },
    }
    put_bytes(s3, settings.bucket, files.summary, json.dumps(summary, indent=2).encode(), "application/json")
    put_bytes(s3, settings.bucket, files.report, render_report(summary).encode("utf-8"), "text/markdown")
    inventory.update_run(
        batch.run_id, state=RUN_FINISHED, finished_at=dt.datetime.now(dt.UTC), summary=summary
    )
    if not counts["accounted"]:
        raise AccountingError(
            f"run {batch.run_id}: outcomes do not add up to the manifest's {counts['rows']} data rows "
            f"({ {o: counts[o] for o in (*OUTCOMES, 'pending')} })"
        )
    return summary


def _keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _write_row_files(s3: Any, settings: Settings, inventory: Inventory, batch: Batch) -> None:
    """failed.csv always; quarantine.csv again when rows were refused after validation (while issuing).

    The manifest is parsed here only when some row needs its original cells.
    """
    failed = inventory.outcome_rows(batch.run_id, FAILED)
    late = [o for o in inventory.outcomes(batch.run_id, QUARANTINED) if o["unit"]]
    data = get_bytes(s3, settings.bucket, batch.files.manifest)
    if not failed and not late:
        put_bytes(s3, settings.bucket, batch.files.failed, write_csv(read_header(data), []), "text/csv")
        return
    table = read_manifest(data)
    put_bytes(s3, settings.bucket, batch.files.failed, retry_csv(table, failed), "text/csv")
    if late:
        quarantined = [
            (o["manifest_row"], o["reason_code"], o["reason"])
            for o in inventory.outcomes(batch.run_id, QUARANTINED)
        ]
        put_bytes(s3, settings.bucket, batch.files.quarantine, quarantine_csv(table, quarantined), "text/csv")
