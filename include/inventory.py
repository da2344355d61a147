"""The asset inventory: batches, runs, stage timings, registration tasks, row outcomes, devices, claims.

Each method is one short transaction. Bulk methods take rows as tuples and go through a staging table (see
include.inventory_schema), so the pipeline writes each row once per state change in one statement.

Claims: before any key or certificate is made for a device, its run claims it by inserting (or, for a device
that failed before, updating) its devices row with status ``claimed`` and its run id, in one statement guarded
by the primary key and a status condition. Two runs claiming the same thing at the same moment cannot both
win, on SQLite or PostgreSQL; the loser reads back who holds the device.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from include.inventory_schema import (
    batches,
    devices,
    engine_for,
    insert_for,
    registration_tasks,
    row_outcomes,
    runs,
    stage,
    stage_timings,
    staging_table,
)
from include.outcomes import (
    ALREADY_PROVISIONED,
    CLAIMABLE_STATES,
    CLAIMED,
    CLAIMED_BY_RUN,
    DEVICE_PROVISIONED,
    KNOWN_UNDER_OTHER_NAME,
    PENDING,
    RUN_RUNNING,
    SKIPPED,
)

QUERY_BATCH = 900  # bound parameters per IN (...) list, under SQLite's limit


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


# Staging tables of the bulk methods (temporary, per connection).
_CLAIM_REQUEST = staging_table(
    "stage_claims",
    [
        ("thing_name", sa.String(128)),
        ("manifest_row", sa.Integer),
        ("model", sa.String(128)),
        ("serial_number", sa.String(128)),
    ],
)
_NAMES = staging_table("stage_names", [("thing_name", sa.String(128))])
_OUTCOMES = staging_table(
    "stage_outcomes",
    [
        ("manifest_row", sa.Integer),
        ("outcome", sa.String(16)),
        ("reason_code", sa.String(64)),
        ("reason", sa.Text),
        ("model", sa.Text),
        ("serial_number", sa.Text),
        ("thing_name", sa.String(128)),
        ("unit", sa.String(160)),
        ("param_line", sa.Integer),
        ("certificate_id", sa.String(64)),
    ],
)
OUTCOME_FIELDS = tuple(c.name for c in _OUTCOMES.columns)
_DEVICES = staging_table(
    "stage_devices",
    [
        ("thing_name", sa.String(128)),
        ("model", sa.String(128)),
        ("serial_number", sa.String(128)),
        ("status", sa.String(16)),
        ("thing_arn", sa.Text),
        ("certificate_id", sa.String(64)),
        ("certificate_arn", sa.Text),
        ("issuer", sa.String(250)),
        ("manifest_row", sa.Integer),
        ("registration_task_id", sa.String(40)),
        ("error_code", sa.String(128)),
        ("error_message", sa.Text),
    ],
)
DEVICE_FIELDS = tuple(c.name for c in _DEVICES.columns)


def _retry_on_deadlock(attempt: Any, tries: int = 5) -> Any:
    """Run a transaction again when PostgreSQL chose it as a deadlock victim (idempotent claims only)."""
    for remaining in range(tries - 1, -1, -1):
        try:
            return attempt()
        except sa.exc.OperationalError as error:
            if remaining == 0 or getattr(error.orig, "pgcode", None) not in ("40P01", "40001"):
                raise


def _held_by(run_id: str, dry_run: bool) -> Any:
    """The device row is this run's: claimed by it, or (a dry run claims nothing) free to claim."""
    mine = (devices.c.status == CLAIMED) & (devices.c.run_id == run_id)
    return mine | devices.c.status.in_(CLAIMABLE_STATES) if dry_run else mine


@dataclass(frozen=True)
class Holder:
    """Who holds a device another run wanted: its state, run and batch (or the name it is known under)."""

    thing_name: str
    status: str
    run_id: str
    batch_id: str
    other_name: str | None = None


class Inventory:
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

    # -- claims ---------------------------------------------------------------------------------------
    def claim(
        self,
        run_id: str,
        batch_id: str,
        requests: Iterable[tuple[str, int, str, str]],
        *,
        dry_run: bool = False,
    ) -> dict[int, Holder]:
        """Claim devices (thing_name, manifest_row, model, serial_number) for this run, atomically, and
        record each row's outcome: ``pending`` when this run holds the device, ``skipped`` (why) when not.

        Returns, by manifest row, the devices this run did NOT get: provisioned, claimed by another run, or
        the same model and serial known under another thing name. A dry run claims nothing: its rows are
        pending unless the device is provisioned or claimed.
        """
        requests = list(requests)
        return _retry_on_deadlock(lambda: self._claim(run_id, batch_id, requests, dry_run))

    def _claim(
        self, run_id: str, batch_id: str, requests: list[tuple[str, int, str, str]], dry_run: bool
    ) -> dict[int, Holder]:
        with self.engine.begin() as connection:
            stage(connection, _CLAIM_REQUEST, requests)
            if not dry_run:
                self._claim_staged(connection, run_id, batch_id)
            holders = self._holders(connection, run_id, dry_run)
            renamed = self._renamed(connection)
            for row, name, other in renamed:
                holders.setdefault(row, Holder(name, "renamed", "", "", other_name=other))
            if renamed and not dry_run:  # never two things for one device: give back what was just taken
                names = [name for _, name, _ in renamed]
                connection.execute(
                    sa.delete(devices).where(
                        devices.c.status == CLAIMED,
                        devices.c.run_id == run_id,
                        devices.c.thing_name.in_(names),
                    )
                )
            self._record_claim_outcomes(connection, run_id, batch_id, dry_run)
            _CLAIM_REQUEST.drop(connection)
        return holders

    def _claim_staged(self, connection: Connection, run_id: str, batch_id: str) -> None:
        stage_ = _CLAIM_REQUEST.c
        now = sa.literal(utcnow(), sa.DateTime(timezone=True))
        columns = ["thing_name", "model", "serial_number", "status", "batch_id", "run_id", "manifest_row"]
        fresh = sa.select(
            stage_.thing_name,
            stage_.model,
            stage_.serial_number,
            sa.literal(CLAIMED),
            sa.literal(batch_id),
            sa.literal(run_id),
            stage_.manifest_row,
            now,
            now,
        ).order_by(stage_.thing_name)  # one lock order for every run: concurrent claims cannot deadlock
        connection.execute(
            insert_for(connection, devices)
            .from_select([*columns, "claimed_at", "updated_at"], fresh)
            .on_conflict_do_nothing()
        )
        # A device that failed before is claimed again by the same atomic condition on its state.
        row_of = sa.select(stage_.manifest_row).where(stage_.thing_name == devices.c.thing_name)
        connection.execute(
            sa.update(devices)
            .where(
                devices.c.status.in_(CLAIMABLE_STATES),
                devices.c.thing_name.in_(sa.select(stage_.thing_name)),
            )
            .values(
                status=CLAIMED,
                run_id=run_id,
                batch_id=batch_id,
                manifest_row=row_of.scalar_subquery(),
                claimed_at=now,
                updated_at=now,
            )
        )

    def _holders(self, connection: Connection, run_id: str, dry_run: bool) -> dict[int, Holder]:
        stage_ = _CLAIM_REQUEST.c
        held = connection.execute(
            sa.select(
                stage_.manifest_row, stage_.thing_name, devices.c.status, devices.c.run_id, devices.c.batch_id
            )
            .join(devices, devices.c.thing_name == stage_.thing_name)
            .where(~_held_by(run_id, dry_run))
        )
        return {row: Holder(name, status, holder, batch) for row, name, status, holder, batch in held}

    def _renamed(self, connection: Connection) -> list[tuple[int, str, str]]:
        """Staged rows whose model and serial belong to a thing of another name (a changed name pattern)."""
        stage_ = _CLAIM_REQUEST.c
        other = devices.alias("other")
        found = connection.execute(
            sa.select(stage_.manifest_row, stage_.thing_name, sa.func.min(other.c.thing_name))
            .join(
                other,
                (other.c.model == stage_.model)
                & (other.c.serial_number == stage_.serial_number)
                & (other.c.thing_name != stage_.thing_name),
            )
            .where(other.c.status.in_((CLAIMED, DEVICE_PROVISIONED)))
            .group_by(stage_.manifest_row, stage_.thing_name)
        )
        return [(row, name, other_name) for row, name, other_name in found]

    def _record_claim_outcomes(
        self, connection: Connection, run_id: str, batch_id: str, dry_run: bool
    ) -> None:
        """pending for the rows this run holds, skipped with a reason for the others (one statement)."""
        stage_ = _CLAIM_REQUEST.c
        held = _held_by(run_id, dry_run) | devices.c.status.is_(None)
        held = sa.and_(held, ~stage_.thing_name.in_(self._renamed_names()))
        provisioned = devices.c.status == DEVICE_PROVISIONED
        thing = sa.literal("thing ") + stage_.thing_name
        holder = sa.func.coalesce(devices.c.run_id, sa.literal("?"))
        selected = (
            sa.select(
                sa.literal(run_id),
                sa.literal(batch_id),
                stage_.manifest_row,
                sa.case((held, sa.literal(PENDING)), else_=sa.literal(SKIPPED)),
                sa.case(
                    (held, sa.null()),
                    (provisioned, sa.literal(ALREADY_PROVISIONED)),
                    (devices.c.status == CLAIMED, sa.literal(CLAIMED_BY_RUN)),
                    else_=sa.literal(KNOWN_UNDER_OTHER_NAME),
                ),
                sa.case(
                    (held, sa.null()),
                    (
                        provisioned,
                        thing + sa.literal(" is already provisioned (run ") + holder + sa.literal(")"),
                    ),
                    (
                        devices.c.status == CLAIMED,
                        thing
                        + sa.literal(" is being provisioned by run ")
                        + holder
                        + sa.literal("; run this manifest again when that run has ended"),
                    ),
                    else_=sa.literal("this model and serial number are provisioned under another thing name"),
                ),
                stage_.model,
                stage_.serial_number,
                stage_.thing_name,
                sa.literal(utcnow(), sa.DateTime(timezone=True)),
            )
            .select_from(_CLAIM_REQUEST)
            .outerjoin(devices, devices.c.thing_name == stage_.thing_name)
            .where(sa.true())
        )
        columns = ["run_id", "batch_id", "manifest_row", "outcome", "reason_code", "reason"]
        columns += ["model", "serial_number", "thing_name", "updated_at"]
        statement = insert_for(connection, row_outcomes).from_select(columns, selected)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["run_id", "manifest_row"],
                set_={c: statement.excluded[c] for c in columns[3:]},
            )
        )

    def _renamed_names(self) -> Any:
        stage_ = _CLAIM_REQUEST.c
        other = devices.alias("renamed")
        return sa.select(stage_.thing_name).join(
            other,
            (other.c.model == stage_.model)
            & (other.c.serial_number == stage_.serial_number)
            & (other.c.thing_name != stage_.thing_name)
            & other.c.status.in_((CLAIMED, DEVICE_PROVISIONED)),
        )

    def transfer_claims(self, from_run: str, to_run: str, thing_names: Iterable[str]) -> int:
        """Move claims of a dead run to this run (only those still claimed by it); returns how many moved."""
        with self.engine.begin() as connection:
            stage(connection, _NAMES, ((name,) for name in thing_names))
            moved = connection.execute(
                sa.update(devices)
                .where(
                    devices.c.status == CLAIMED,
                    devices.c.run_id == from_run,
                    devices.c.thing_name.in_(sa.select(_NAMES.c.thing_name)),
                )
                .values(run_id=to_run, claimed_at=utcnow(), updated_at=utcnow())
            ).rowcount
            _NAMES.drop(connection)
        return int(moved)

    def release_claims(self, run_id: str, thing_names: Iterable[str]) -> int:
        """Forget this run's claims on devices it will not provision (refused before AWS saw them)."""
        with self.engine.begin() as connection:
            stage(connection, _NAMES, ((name,) for name in thing_names))
            released = connection.execute(
                sa.delete(devices).where(
                    devices.c.status == CLAIMED,
                    devices.c.run_id == run_id,
                    devices.c.thing_name.in_(sa.select(_NAMES.c.thing_name)),
                )
            ).rowcount
            _NAMES.drop(connection)
        return int(released)

    def claimed_by(self, run_id: str) -> dict[str, int]:
        """The devices this run still holds claims on: thing name -> manifest row."""
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(devices.c.thing_name, devices.c.manifest_row).where(
                    devices.c.run_id == run_id, devices.c.status == CLAIMED
                )
            )
            return dict(found.tuples().all())

    # -- devices --------------------------------------------------------------------------------------
    def record_devices(self, run_id: str, batch_id: str, rows: Iterable[Sequence[Any]]) -> int:
        """Upsert device results (tuples in DEVICE_FIELDS order); a failure never demotes a provisioned one.

        Provisioned rows get provisioned_at now; failed rows end any claim (the device may be claimed again).
        """
        now = utcnow()
        stage_ = _DEVICES.c
        with self.engine.begin() as connection:
            count = stage(connection, _DEVICES, rows)
            selected = sa.select(
                *(stage_[name] for name in DEVICE_FIELDS),
                sa.literal(batch_id),
                sa.literal(run_id),
                sa.case((stage_.status == DEVICE_PROVISIONED, sa.literal(now, sa.DateTime(timezone=True)))),
                sa.literal(now, sa.DateTime(timezone=True)),
            ).where(sa.true())
            statement = insert_for(connection, devices).from_select(
                [*DEVICE_FIELDS, "batch_id", "run_id", "provisioned_at", "updated_at"], selected
            )
            excluded = statement.excluded
            keep = [n for n in DEVICE_FIELDS if n not in ("thing_name", "model", "serial_number")]
            keep += ["batch_id", "run_id"]
            statement = statement.on_conflict_do_update(
                index_elements=["thing_name"],
                set_={
                    **{name: excluded[name] for name in keep},
                    "provisioned_at": sa.func.coalesce(excluded.provisioned_at, devices.c.provisioned_at),
                    "updated_at": excluded.updated_at,
                },
                where=~((devices.c.status == DEVICE_PROVISIONED) & (excluded.status != DEVICE_PROVISIONED)),
            )
            connection.execute(statement)
            _DEVICES.drop(connection)
        return count

    def devices_by_issuer(self) -> dict[str, int]:
        """Provisioned devices per signer (CA certificate id, ACM PCA ARN, or aws)."""
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(devices.c.issuer, sa.func.count())
                .where(devices.c.status == DEVICE_PROVISIONED)
                .group_by(devices.c.issuer)
            )
            return {str(issuer): int(count) for issuer, count in found}

    def device(self, thing_name: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            found = connection.execute(sa.select(devices).where(devices.c.thing_name == thing_name))
            row = found.mappings().first()
        return dict(row) if row else None

    # -- row outcomes ---------------------------------------------------------------------------------
    def record_outcomes(self, run_id: str, batch_id: str, rows: Iterable[Sequence[Any]]) -> int:
        """Upsert outcome rows of a run (tuples in OUTCOME_FIELDS order, one statement)."""
        stage_ = _OUTCOMES.c
        now = utcnow()
        with self.engine.begin() as connection:
            count = stage(connection, _OUTCOMES, rows)
            selected = sa.select(
                sa.literal(run_id),
                sa.literal(batch_id),
                *(stage_[name] for name in OUTCOME_FIELDS),
                sa.literal(now, sa.DateTime(timezone=True)),
            ).where(sa.true())
            statement = insert_for(connection, row_outcomes).from_select(
                ["run_id", "batch_id", *OUTCOME_FIELDS, "updated_at"], selected
            )
            statement = statement.on_conflict_do_update(
                index_elements=["run_id", "manifest_row"],
                set_={
                    name: statement.excluded[name]
                    for name in (*OUTCOME_FIELDS, "updated_at")
                    if name != "manifest_row"
                },
            )
            connection.execute(statement)
            _OUTCOMES.drop(connection)
        return count

    def settle_outcomes(self, batch_id: str, rows: Iterable[Sequence[Any]]) -> int:
        """Final outcomes (tuples in OUTCOME_FIELDS order) of rows still pending in a real run of the batch.

        That is the run reconciling, and any earlier run that died with these rows in flight. A row is
        pending in one live run at most (claims), so this never touches another live run's rows.
        """
        stage_ = _OUTCOMES.c
        real_runs = sa.select(runs.c.run_id).where(runs.c.batch_id == batch_id, runs.c.dry_run.is_(False))
        with self.engine.begin() as connection:
            count = stage(connection, _OUTCOMES, rows)
            connection.execute(
                sa.update(row_outcomes)
                .where(
                    row_outcomes.c.batch_id == batch_id,
                    row_outcomes.c.outcome == PENDING,
                    row_outcomes.c.run_id.in_(real_runs),
                    row_outcomes.c.manifest_row == stage_.manifest_row,
                )
                .values(
                    outcome=stage_.outcome,
                    reason_code=stage_.reason_code,
                    reason=stage_.reason,
                    unit=sa.func.coalesce(stage_.unit, row_outcomes.c.unit),
                    param_line=sa.func.coalesce(stage_.param_line, row_outcomes.c.param_line),
                    certificate_id=stage_.certificate_id,
                    updated_at=utcnow(),
                )
            )
            _OUTCOMES.drop(connection)
        return count

    def set_outcomes(self, run_id: str, rows: Iterable[Sequence[Any]]) -> int:
        """Change outcome, reason, unit, line and certificate of rows of one run (its other columns stay)."""
        stage_ = _OUTCOMES.c
        with self.engine.begin() as connection:
            count = stage(connection, _OUTCOMES, rows)
            connection.execute(
                sa.update(row_outcomes)
                .where(row_outcomes.c.run_id == run_id, row_outcomes.c.manifest_row == stage_.manifest_row)
                .values(
                    outcome=stage_.outcome,
                    reason_code=stage_.reason_code,
                    reason=stage_.reason,
                    unit=stage_.unit,
                    param_line=stage_.param_line,
                    certificate_id=stage_.certificate_id,
                    updated_at=utcnow(),
                )
            )
            _OUTCOMES.drop(connection)
        return count

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

    def outcome_rows(
        self, run_id: str, outcome: str, *, reason_codes: Sequence[str] | None = None
    ) -> list[int]:
        """Manifest rows of a run with this outcome (optionally only these reason codes), in order."""
        query = sa.select(row_outcomes.c.manifest_row).where(
            row_outcomes.c.run_id == run_id, row_outcomes.c.outcome == outcome
        )
        if reason_codes is not None:
            query = query.where(row_outcomes.c.reason_code.in_(list(reason_codes)))
        with self.engine.connect() as connection:
            return [r[0] for r in connection.execute(query.order_by(row_outcomes.c.manifest_row))]

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

    def pending_rows_of(self, run_id: str) -> dict[int, tuple[str | None, str | None]]:
        """Pending rows of a run: manifest row -> (thing name, unit)."""
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(row_outcomes.c.manifest_row, row_outcomes.c.thing_name, row_outcomes.c.unit).where(
                    row_outcomes.c.run_id == run_id, row_outcomes.c.outcome == "pending"
                )
            )
            return {row: (name, unit) for row, name, unit in found}

    def count(self, table: str) -> int:
        from include.inventory_schema import metadata

        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(metadata.tables[table])).scalar()
            )
