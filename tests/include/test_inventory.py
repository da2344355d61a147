"""The inventory on SQLite and PostgreSQL: idempotent upserts, never demoting a provisioned device."""

from __future__ import annotations

from include.inventory import Inventory


def _device(status: str, **extra):
    record = {
        "thing_name": "TH-100-A1",
        "model": "TH-100",
        "serial_number": "A1",
        "status": status,
        "thing_arn": None,
        "certificate_id": None,
        "certificate_arn": None,
        "batch_id": "b" * 64,
        "run_id": "r1",
        "manifest_row": 1,
        "registration_task_id": "t",
        "error_code": None,
        "error_message": None,
        "provisioned_at": None,
    }
    record.update(extra)
    return record


def test_batches_and_runs(inventory_url):
    inventory = Inventory(inventory_url)
    assert inventory.record_batch("a" * 64, "s3://b/k", "batches/a/manifest.csv", 10) is True
    assert inventory.record_batch("a" * 64, "s3://b/k", "batches/a/manifest.csv", 10) is False
    assert inventory.batch_known("a" * 64) and not inventory.batch_known("c" * 64)
    for _ in range(2):
        inventory.record_run("r1", "a" * 64, "s3://b/k", product=None, dry_run=True, max_devices=5)
    assert inventory.count("runs") == 1 and inventory.run("r1")["dry_run"] is True
    inventory.record_stage("r1", "validate", 0.25, 10)
    inventory.record_stage("r1", "validate", 0.5, 10)
    assert inventory.stage_timings("r1") == [{"stage": "validate", "seconds": 0.5, "devices": 10}]


def test_outcomes_upsert_and_count(inventory_url):
    inventory = Inventory(inventory_url)
    rows = [{"manifest_row": n, "outcome": "pending", "thing_name": f"T{n}"} for n in range(1, 2501)]
    inventory.record_outcomes("r1", "b", rows)
    inventory.record_outcomes("r1", "b", rows[:10])  # a retried stage writes the same rows again
    inventory.update_outcomes(
        "r1", [{"manifest_row": 1, "outcome": "failed", "reason_code": "X", "reason": "y"}]
    )
    assert inventory.outcome_counts("r1") == {"pending": 2499, "failed": 1}
    assert inventory.reason_counts("r1", "failed") == {"X": 1}
    assert inventory.count("row_outcomes") == 2500
    assert next(inventory.outcomes("r1", "failed"))["thing_name"] == "T1"


def test_devices_are_unique_and_never_demoted(inventory_url):
    inventory = Inventory(inventory_url)
    inventory.upsert_devices([_device("failed", error_code="ThrottlingException")])
    assert inventory.provisioned(["TH-100-A1"]) == set()
    inventory.upsert_devices([_device("provisioned", thing_arn="arn:t", certificate_id="c" * 64)])
    inventory.upsert_devices(
        [_device("failed", run_id="r2", error_code="X")]
    )  # a later failure of the same thing
    device = inventory.device("TH-100-A1")
    assert (device["status"], device["thing_arn"], device["run_id"], device["error_code"]) == (
        "provisioned",
        "arn:t",
        "r1",
        None,
    )
    assert inventory.provisioned(["TH-100-A1", "TH-100-A2"]) == {"TH-100-A1"}
    assert inventory.count("devices") == 1


def test_registration_tasks_resume(inventory_url):
    inventory = Inventory(inventory_url)
    assert inventory.registration_task("b", "r1", "TH-100") is None
    inventory.record_registration_task("b", "r1", "TH-100", "task-1")
    inventory.record_registration_status(
        "b", "r1", "TH-100", {"status": "Completed", "success_count": 3, "failure_count": 1, "message": None}
    )
    task = inventory.registration_task("b", "r1", "TH-100")
    assert (task["task_id"], task["status"], task["success_count"]) == ("task-1", "Completed", 3)
    assert inventory.registration_task("b", "r2", "TH-100") is None  # another run starts its own task


def test_bulk_writes_across_pages_are_idempotent(inventory_url):
    """More rows than one write page, written twice, then updated: one row per key, last update wins."""
    import datetime as dt

    inventory = Inventory(inventory_url)
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    records = [
        _device(
            "provisioned" if n % 3 else "failed",
            thing_name=f"TH-100-S{n}",
            serial_number=f"S{n}",
            manifest_row=n,
            thing_arn=f"arn:t/{n}" if n % 3 else None,
            provisioned_at=when if n % 3 else None,
            error_message=None if n % 3 else "100% 'quoted' %s %(x)s ? \\ failure",
        )
        for n in range(1, 2502)
    ]
    inventory.upsert_devices(records)
    inventory.upsert_devices(records)
    assert inventory.count("devices") == 2501
    assert inventory.provisioned(f"TH-100-S{n}" for n in (1, 2, 3)) == {"TH-100-S1", "TH-100-S2"}
    stored = inventory.device("TH-100-S2")["provisioned_at"]
    assert (stored if stored.tzinfo else stored.replace(tzinfo=dt.UTC)) == when  # SQLite reads naive UTC
    assert inventory.device("TH-100-S3")["error_message"] == "100% 'quoted' %s %(x)s ? \\ failure"
    assert inventory.device("TH-100-S3")["provisioned_at"] is None

    rows = [{"manifest_row": n, "outcome": "pending", "reason": "it's 50%"} for n in range(1, 2502)]
    assert inventory.record_outcomes("r1", "b", iter(rows)) == 2501  # a generator is fine
    assert inventory.record_outcomes("r1", "b", rows) == 2501
    updates = [{"manifest_row": n, "outcome": "provisioned", "certificate_id": "c"} for n in range(1, 2502)]
    updates.append({"manifest_row": 7, "outcome": "failed", "reason_code": "X", "reason": "100% it's late"})
    inventory.update_outcomes("r1", updates)
    assert inventory.outcome_counts("r1") == {"provisioned": 2500, "failed": 1}
    failed = next(inventory.outcomes("r1", "failed"))
    assert (failed["manifest_row"], failed["reason"], failed["certificate_id"]) == (7, "100% it's late", None)
    assert inventory.count("row_outcomes") == 2501
    assert next(inventory.outcomes("r1", "provisioned"))["updated_at"] is not None


def test_outcome_rows_given_twice_keep_the_last(inventory_url):
    inventory = Inventory(inventory_url)
    rows = [
        {"manifest_row": 1, "outcome": "pending"},
        {"manifest_row": 1, "outcome": "skipped", "reason": "r"},
    ]
    assert inventory.record_outcomes("r1", "b", rows) == 2
    assert inventory.outcome_counts("r1") == {"skipped": 1}
    assert inventory.record_outcomes("r1", "b", []) == 0
    inventory.update_outcomes("r1", [])
    inventory.upsert_devices([])
    assert inventory.count("row_outcomes") == 1 and inventory.count("devices") == 0
