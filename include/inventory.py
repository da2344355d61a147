"""The asset inventory (SQLAlchemy Core): devices, batches, runs, registration tasks, row outcomes per run.

SQLite by default, PostgreSQL by URL; every write is an upsert, so re-running a stage never duplicates a row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

OUTCOMES = ("provisioned", "failed", "quarantined", "skipped")
PENDING = "pending"  # accepted, not yet reported by AWS (only a dry run ends with pending rows)
WRITE_BATCH = 1000

metadata = sa.MetaData()

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True, comment="SHA-256 of the manifest bytes"),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("manifest_key", sa.Text, nullable=False),
    sa.Column("manifest_bytes", sa.BigInteger, nullable=False),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("product", sa.String(128)),
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("max_devices", sa.Integer),
    sa.Column("rows", sa.Integer),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("summary", sa.JSON),
)

stage_timings = sa.Table(
    "stage_timings",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("stage", sa.String(64), primary_key=True),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("devices", sa.Integer),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

registration_tasks = sa.Table(
    "registration_tasks",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("group_name", sa.String(128), primary_key=True),
    sa.Column("task_id", sa.String(40), nullable=False),
    sa.Column("status", sa.String(16)),
    sa.Column("success_count", sa.Integer),
    sa.Column("failure_count", sa.Integer),
    sa.Column("message", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("thing_name", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("serial_number", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, comment="provisioned or failed"),
    sa.Column("thing_arn", sa.Text),
    sa.Column("certificate_id", sa.String(64)),
    sa.Column("certificate_arn", sa.Text),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("manifest_row", sa.Integer, nullable=False),
    sa.Column("registration_task_id", sa.String(40)),
    sa.Column("error_code", sa.String(128)),
    sa.Column("error_message", sa.Text),
    sa.Column("provisioned_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("model", "serial_number", name="uq_devices_model_serial"),
)

row_outcomes = sa.Table(
    "row_outcomes",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("manifest_row", sa.Integer, primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.Text),
    sa.Column("serial_number", sa.Text),
    sa.Column("thing_name", sa.String(128)),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason_code", sa.String(64), comment="quarantine reason or AWS error code"),
    sa.Column("reason", sa.Text),
    sa.Column("group_name", sa.String(128)),
    sa.Column("param_line", sa.Integer, comment="1-based line in the group's parameter file"),
    sa.Column("certificate_id", sa.String(64)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_engines: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """One engine per URL per process; tables created on first use (idempotent on both dialects)."""
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = _create_engine(url)
    return engine


def dispose_engines() -> None:
    """Close every pooled connection and forget the engines (tests; processes about to fork)."""
    while _engines:
        _engines.popitem()[1].dispose()


def _create_engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    elif parsed.get_driver_name() == "psycopg2":
        # INSERTs as multi-row VALUES pages and UPDATE executemany in execute_batch pages, instead of one
        # round trip per row (measured: 2-4x less CPU per row, 3x less time).
        engine = sa.create_engine(url, pool_pre_ping=True, executemany_mode="values_plus_batch")
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        metadata.create_all(engine)
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
        # Another worker created the tables at the same moment; they exist now.
        metadata.create_all(engine)
    return engine


def _insert(engine: Engine, table: sa.Table):
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class Inventory:
    """Store operations the pipeline needs; each method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)

    # -- generic upsert -------------------------------------------------------------------------------
    def _upsert(
        self,
        table: sa.Table,
        rows: Sequence[dict[str, Any]],
        keys: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> None:
        if not rows:
            return
        # A key given twice keeps its last row: one statement may not touch a row twice (PostgreSQL).
        rows = list({tuple(row[k] for k in keys): row for row in rows}.values())
        columns = update if update is not None else [c for c in rows[0] if c not in keys]
        with self.engine.begin() as connection:
            for start in range(0, len(rows), WRITE_BATCH):
                statement = _insert(self.engine, table)
                if columns:
                    statement = statement.on_conflict_do_update(
                        index_elements=list(keys), set_={c: statement.excluded[c] for c in columns}
                    )
                else:
                    statement = statement.on_conflict_do_nothing(index_elements=list(keys))
                connection.execute(statement, list(rows[start : start + WRITE_BATCH]))

    # -- batches and runs -----------------------------------------------------------------------------
    def record_batch(self, batch_id: str, source: str, manifest_key: str, size: int) -> bool:
        """Remember a manifest by content hash; True when it was new."""
        known = self.batch_known(batch_id)
        row = dict(
            batch_id=batch_id,
            source=source,
            manifest_key=manifest_key,
            manifest_bytes=size,
            first_seen_at=utcnow(),
        )
        self._upsert(batches, [row], ["batch_id"], update=[])
        return not known

    def batch_known(self, batch_id: str) -> bool:
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(batches.c.batch_id).where(batches.c.batch_id == batch_id)
            ).first()
        return found is not None

    def record_run(
        self,
        run_id: str,
        batch_id: str,
        source: str,
        *,
        product: str | None,
        dry_run: bool,
        max_devices: int | None,
    ) -> None:
        row = dict(
            run_id=run_id,
            batch_id=batch_id,
            source=source,
            product=product,
            dry_run=dry_run,
            max_devices=max_devices,
            started_at=utcnow(),
        )
        self._upsert(
            runs, [row], ["run_id"], update=["batch_id", "source", "product", "dry_run", "max_devices"]
        )

    def set_run_rows(self, run_id: str, rows: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.update(runs).where(runs.c.run_id == run_id).values(rows=rows))

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            found = connection.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
        if found is None:
            return None
        result = dict(found)
        for column in ("started_at", "finished_at"):
            result[column] = _as_utc(result[column])
        return result

    def finish_run(self, run_id: str, summary: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(runs).where(runs.c.run_id == run_id).values(finished_at=utcnow(), summary=summary)
            )

    def record_stage(self, run_id: str, stage: str, seconds: float, devices: int | None = None) -> None:
        row = dict(run_id=run_id, stage=stage, seconds=seconds, devices=devices, recorded_at=utcnow())
        self._upsert(stage_timings, [row], ["run_id", "stage"])

    def stage_timings(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            result = connection.execute(
                sa.select(stage_timings.c.stage, stage_timings.c.seconds, stage_timings.c.devices)
                .where(stage_timings.c.run_id == run_id)
                .order_by(stage_timings.c.recorded_at)
            )
            return [dict(r) for r in result.mappings()]

    # -- registration tasks ---------------------------------------------------------------------------
    def registration_task(self, batch_id: str, run_id: str, group: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            found = (
                connection.execute(
                    sa.select(registration_tasks).where(
                        registration_tasks.c.batch_id == batch_id,
                        registration_tasks.c.run_id == run_id,
                        registration_tasks.c.group_name == group,
                    )
                )
                .mappings()
                .first()
            )
        return dict(found) if found else None

    def record_registration_task(self, batch_id: str, run_id: str, group: str, task_id: str) -> None:
        now = utcnow()
        row = dict(
            batch_id=batch_id,
            run_id=run_id,
            group_name=group,
            task_id=task_id,
            status="InProgress",
            started_at=now,
            updated_at=now,
        )
        self._upsert(
            registration_tasks, [row], ["batch_id", "run_id", "group_name"], update=["task_id", "updated_at"]
        )

    def record_registration_status(self, batch_id: str, run_id: str, group: str, registration: dict) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(registration_tasks)
                .where(
                    registration_tasks.c.batch_id == batch_id,
                    registration_tasks.c.run_id == run_id,
                    registration_tasks.c.group_name == group,
                )
                .values(
                    status=registration.get("status"),
                    success_count=registration.get("success_count"),
                    failure_count=registration.get("failure_count"),
                    message=registration.get("message"),
                    updated_at=utcnow(),
                )
            )

    # -- row outcomes ---------------------------------------------------------------------------------
    def record_outcomes(self, run_id: str, batch_id: str, outcomes: Iterable[dict[str, Any]]) -> int:
        """Upsert outcome rows: dicts with manifest_row, outcome and any of the optional columns."""
        now = utcnow()
        optional = ("model", "serial_number", "thing_name", "reason_code", "reason", "group_name")
        optional += ("param_line", "certificate_id")
        rows = [
            {
                "run_id": run_id,
                "batch_id": batch_id,
                "manifest_row": o["manifest_row"],
                "outcome": o["outcome"],
                **{c: o.get(c) for c in optional},
                "updated_at": now,
            }
            for o in outcomes
        ]
        self._upsert(row_outcomes, rows, ["run_id", "manifest_row"])
        return len(rows)

    def update_outcomes(self, run_id: str, updates: Sequence[dict[str, Any]]) -> None:
        """Change outcome/reason/certificate of existing rows (keeps the ledger columns)."""
        if not updates:
            return
        statement = (
            sa.update(row_outcomes)
            .where(row_outcomes.c.run_id == run_id, row_outcomes.c.manifest_row == sa.bindparam("row"))
            .values(
                outcome=sa.bindparam("new_outcome"),
                reason_code=sa.bindparam("new_reason_code"),
                reason=sa.bindparam("new_reason"),
                certificate_id=sa.bindparam("new_certificate_id"),
                updated_at=sa.bindparam("now"),
            )
        )
        now = utcnow()
        params = [
            {
                "row": u["manifest_row"],
                "new_outcome": u["outcome"],
                "new_reason_code": u.get("reason_code"),
                "new_reason": u.get("reason"),
                "new_certificate_id": u.get("certificate_id"),
                "now": now,
            }
            for u in updates
        ]
        with self.engine.begin() as connection:
            for start in range(0, len(params), WRITE_BATCH):
                connection.execute(statement, params[start : start + WRITE_BATCH])

    def outcomes(self, run_id: str, outcome: str | None = None) -> Iterator[dict[str, Any]]:
        query = (
            sa.select(row_outcomes)
            .where(row_outcomes.c.run_id == run_id)
            .order_by(row_outcomes.c.manifest_row)
        )
        if outcome is not None:
            query = query.where(row_outcomes.c.outcome == outcome)
        with self.engine.connect() as connection:
            yield from (dict(r) for r in connection.execute(query).mappings())

    def groups(self, run_id: str) -> list[str]:
        """Registration groups that hold rows of this run."""
        with self.engine.connect() as connection:
            result = connection.execute(
                sa.select(row_outcomes.c.group_name)
                .where(row_outcomes.c.run_id == run_id, row_outcomes.c.group_name.is_not(None))
                .distinct()
            )
            return sorted(r[0] for r in result)

    def outcome_counts(self, run_id: str) -> dict[str, int]:
        with self.engine.connect() as connection:
            result = connection.execute(
                sa.select(row_outcomes.c.outcome, sa.func.count())
                .where(row_outcomes.c.run_id == run_id)
                .group_by(row_outcomes.c.outcome)
            )
            return {outcome: int(n) for outcome, n in result}

    def reason_counts(self, run_id: str, outcome: str) -> dict[str, int]:
        with self.engine.connect() as connection:
            result = connection.execute(
                sa.select(row_outcomes.c.reason_code, sa.func.count())
                .where(row_outcomes.c.run_id == run_id, row_outcomes.c.outcome == outcome)
                .group_by(row_outcomes.c.reason_code)
            )
            return {str(code): int(n) for code, n in result}

    # -- devices --------------------------------------------------------------------------------------
    def provisioned(self, thing_names: Iterable[str]) -> set[str]:
        """Which of these things the inventory already holds as provisioned."""
        names = list(thing_names)
        found: set[str] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(names), 500):
                part = names[start : start + 500]
                result = connection.execute(
                    sa.select(devices.c.thing_name).where(
                        devices.c.thing_name.in_(part), devices.c.status == "provisioned"
                    )
                )
                found.update(r[0] for r in result)
        return found

    def upsert_devices(self, records: Sequence[dict[str, Any]]) -> None:
        """Upsert device records by thing name; a failure never demotes a provisioned device."""
        if not records:
            return
        now = utcnow()
        rows = [{**r, "updated_at": now} for r in records]
        columns = [c for c in rows[0] if c != "thing_name"]
        with self.engine.begin() as connection:
            for start in range(0, len(rows), WRITE_BATCH):
                statement = _insert(self.engine, devices)
                excluded = statement.excluded
                keep = (devices.c.status == "provisioned") & (excluded.status == "failed")
                set_ = {
                    c: sa.case((keep, devices.c[c]), else_=excluded[c])
                    if c not in ("provisioned_at",)
                    else sa.func.coalesce(devices.c[c], excluded[c])
                    for c in columns
                }
                statement = statement.on_conflict_do_update(index_elements=["thing_name"], set_=set_)
                connection.execute(statement, rows[start : start + WRITE_BATCH])

    def device(self, thing_name: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            found = (
                connection.execute(sa.select(devices).where(devices.c.thing_name == thing_name))
                .mappings()
                .first()
            )
        return dict(found) if found else None

    def count(self, table: str) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(metadata.tables[table])).scalar()
            )
