"""The asset inventory: batches, runs, stage timings, registration tasks, row outcomes, devices, claims.

Each method is one short transaction. Bulk methods take rows as tuples and go through a staging table (see
include.inventory_schema), so the pipeline writes each row once per state change in one statement. Claims
are in include.inventory_claims, devices and row outcomes in include.inventory_devices.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from include.inventory_claims import ClaimRecords, Holder
from include.inventory_devices import DEVICE_FIELDS, OUTCOME_FIELDS, RESULT_FIELDS, DeviceRecords
from include.inventory_schema import (
    batches,
    engine_for,
    insert_for,
    registration_tasks,
    runs,
    stage_timings,
    utcnow,
)
from include.outcomes import RUN_RUNNING

__all__ = ["DEVICE_FIELDS", "OUTCOME_FIELDS", "RESULT_FIELDS", "Holder", "Inventory", "utcnow"]


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class Inventory(ClaimRecords, DeviceRecords):
    """Store operations the pipeline needs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)

    # -- batches and runs -----------------------------------------------------------------------------
    def record_batch(self, batch_id: str, source: str, manifest_key: str, size: int) -> bool:
        """Remember a manifest by content hash; True when it was new."""
        with self.engine.begin() as connection:
            inserted = connection.execute(
                insert_for(connection, batches)
                .values(
                    batch_id=batch_id,
                    source=source,
                    manifest_key=manifest_key,
                    manifest_bytes=size,
                    first_seen_at=utcnow(),
                )
                .on_conflict_do_nothing()
            )
            return inserted.rowcount == 1

    def batch_known(self, batch_id: str) -> bool:
        with self.engine.connect() as connection:
            found = connection.execute(sa.select(batches.c.batch_id).where(batches.c.batch_id == batch_id))
            return found.first() is not None

    def record_run(self, run_id: str, batch_id: str | None, source: str, **fields: Any) -> None:
        """Start (or restart, on a retried intake) a run: dag_id, product, dry_run, max_devices."""
        values = dict(batch_id=batch_id, source=source, state=RUN_RUNNING, error=None, **fields)
        statement = insert_for(self.engine, runs).values(run_id=run_id, started_at=utcnow(), **values)
        with self.engine.begin() as connection:
            connection.execute(statement.on_conflict_do_update(index_elements=["run_id"], set_=values))

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of a run: rows, state, error, adopted_by, finished_at, summary."""
        with self.engine.begin() as connection:
            connection.execute(sa.update(runs).where(runs.c.run_id == run_id).values(**fields))

    def fail_run(self, run_id: str, source: str, error: str) -> None:
        """Record why a run failed (a run that failed before intake recorded it is created here)."""
        statement = insert_for(self.engine, runs).values(
            run_id=run_id, source=source, state="failed", error=error, started_at=utcnow()
        )
        with self.engine.begin() as connection:
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["run_id"], set_={"state": "failed", "error": error}
                )
            )

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            found = connection.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
        if found is None:
            return None
        result = dict(found)
        for column in ("started_at", "finished_at"):
            result[column] = _as_utc(result[column])
        return result

    def record_stage(self, run_id: str, stage_name: str, seconds: float, devices_count: int | None) -> None:
        values = dict(seconds=seconds, devices=devices_count, recorded_at=utcnow())
        statement = insert_for(self.engine, stage_timings).values(run_id=run_id, stage=stage_name, **values)
        with self.engine.begin() as connection:
            connection.execute(
                statement.on_conflict_do_update(index_elements=["run_id", "stage"], set_=values)
            )

    def stage_timings(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            result = connection.execute(
                sa.select(stage_timings.c.stage, stage_timings.c.seconds, stage_timings.c.devices)
                .where(stage_timings.c.run_id == run_id)
                .order_by(stage_timings.c.recorded_at)
            )
            return [dict(r) for r in result.mappings()]

    # -- registration tasks ---------------------------------------------------------------------------
    def registration_task(self, run_id: str, unit: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(registration_tasks).where(
                    registration_tasks.c.run_id == run_id, registration_tasks.c.unit == unit
                )
            )
            row = found.mappings().first()
        return dict(row) if row else None

    def registration_tasks(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(registration_tasks)
                .where(registration_tasks.c.run_id == run_id)
                .order_by(registration_tasks.c.unit)
            )
            return [dict(r) for r in found.mappings()]

    def record_registration(
        self, run_id: str, batch_id: str, spec: dict[str, Any], task_id: str | None, status: str
    ) -> None:
        """The intent (task_id None, status Starting) before StartThingRegistrationTask, then its id."""
        now = utcnow()
        values = dict(task_id=task_id, status=status, updated_at=now, spec=spec)
        statement = insert_for(self.engine, registration_tasks).values(
            run_id=run_id,
            unit=spec["unit"],
            batch_id=batch_id,
            group_name=spec["group"],
            started_at=now,
            **values,
        )
        with self.engine.begin() as connection:
            connection.execute(
                statement.on_conflict_do_update(index_elements=["run_id", "unit"], set_=values)
            )

    def record_registration_status(self, run_id: str, unit: str, state: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(registration_tasks)
                .where(registration_tasks.c.run_id == run_id, registration_tasks.c.unit == unit)
                .values(
                    status=state.get("status"),
                    success_count=state.get("success_count"),
                    failure_count=state.get("failure_count"),
                    message=state.get("message"),
                    updated_at=utcnow(),
                )
            )

    def record_registration_stopped(self, task_id: str, status: str, message: str) -> int:
        """The registration task `task_id` was stopped (its Airflow task killed): its status and why."""
        with self.engine.begin() as connection:
            return int(
                connection.execute(
                    sa.update(registration_tasks)
                    .where(registration_tasks.c.task_id == task_id)
                    .values(status=status, message=message, updated_at=utcnow())
                ).rowcount
            )

    def count(self, table: str) -> int:
        from include.inventory_schema import metadata

        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(metadata.tables[table])).scalar()
            )
