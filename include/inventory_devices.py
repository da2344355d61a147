"""Devices and row outcomes in the inventory: reconciled results, devices found in the registry, outcomes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.inventory_schema import (
    NAMES_STAGE,
    devices,
    insert_for,
    row_outcomes,
    runs,
    stage,
    staging_table,
    utcnow,
)
from include.outcomes import (
    ALREADY_PROVISIONED,
    CLAIMABLE_STATES,
    CLAIMED,
    CLAIMED_BY_RUN,
    DEVICE_PROVISIONED,
    PENDING,
    SKIPPED,
)

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
# A reconciled line: its device's result and its row's place in the unit (one staging for both writes).
_RESULTS = staging_table(
    "stage_results",
    [*((c.name, c.type) for c in _DEVICES.columns), ("unit", sa.String(160)), ("param_line", sa.Integer)],
    key="manifest_row",  # the outcome update joins on it (unique within a unit)
)
RESULT_FIELDS = tuple(c.name for c in _RESULTS.columns)


def _update_outcomes_from_stage(
    connection: Connection, staged: sa.Table, conditions: list[Any], values: dict[str, Any]
) -> sa.Update:
    """The row outcomes of the staged manifest rows (and `conditions`) set to `values`.

    PostgreSQL plans UPDATE ... FROM from its statistics (a hash join on the staged rows). SQLite would walk
    every row of the run (or the batch) to probe the staged ones, a million rows for ten refused devices or
    for a large batch's first unit: there each staged row finds its outcome by primary key, and its new
    values in one lookup of the staged table.
    """
    by_row = staged.c.manifest_row == row_outcomes.c.manifest_row
    if connection.dialect.name != "sqlite":
        return sa.update(row_outcomes).where(*conditions, by_row).values(**values)
    # One row-value subquery for every column (SET (a, b) = (SELECT ...)), not one lookup per column.
    targets = sa.tuple_(*(row_outcomes.c[name] for name in values))
    return (
        sa.update(row_outcomes)
        .where(*conditions, row_outcomes.c.manifest_row.in_(sa.select(staged.c.manifest_row)))
        .values({targets: sa.select(*values.values()).where(by_row).scalar_subquery()})
    )


class DeviceRecords:
    """The inventory's device and row-outcome operations (a part of include.inventory.Inventory)."""

    engine: Engine

    # -- devices --------------------------------------------------------------------------------------
    def record_devices(self, run_id: str, batch_id: str, rows: Iterable[Sequence[Any]]) -> int:
        """Upsert device results (tuples in DEVICE_FIELDS order); a failure never demotes a provisioned one.

        Provisioned rows get provisioned_at now; failed rows end any claim (the device may be claimed again).
        """
        with self.engine.begin() as connection:
            count = stage(connection, _DEVICES, rows)
            self._upsert_devices(connection, _DEVICES, run_id, batch_id)
            _DEVICES.drop(connection)
        return count

    def record_results(self, run_id: str, batch_id: str, rows: Iterable[Sequence[Any]]) -> int:
        """A registration unit's reconciled lines (tuples in RESULT_FIELDS order), in one transaction: each
        device's result (as record_devices), and the outcome of its row in every real run of the batch that
        still has it pending: the run reconciling, and an earlier run that died with the row in flight. A row
        is pending in one live run at most (claims), so this never touches another live run's rows."""
        stage_ = _RESULTS.c
        real_runs = sa.select(runs.c.run_id).where(runs.c.batch_id == batch_id, runs.c.dry_run.is_(False))
        values = {
            "outcome": stage_.status,
            "reason_code": stage_.error_code,
            "reason": stage_.error_message,
            "unit": stage_.unit,
            "param_line": stage_.param_line,
            "certificate_id": stage_.certificate_id,
        }
        with self.engine.begin() as connection:
            count = stage(connection, _RESULTS, rows)
            self._upsert_devices(connection, _RESULTS, run_id, batch_id)
            if connection.dialect.name == "sqlite":
                # With no statistics SQLite prefers the (run_id, outcome) index: the outcome test is kept
                # out of index use (`+`).
                pending = sa.text("+row_outcomes.outcome = :pending").bindparams(pending=PENDING)
            else:
                pending = row_outcomes.c.outcome == PENDING
            conditions = [pending, row_outcomes.c.run_id.in_(real_runs)]
            statement = _update_outcomes_from_stage(connection, _RESULTS, conditions, values)
            connection.execute(statement.values(updated_at=utcnow()))
            _RESULTS.drop(connection)
        return count

    def _upsert_devices(self, connection: Connection, staged: sa.Table, run_id: str, batch_id: str) -> None:
        now = utcnow()
        stage_ = staged.c
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

    # -- devices found in the registry (fleet provisioning by claim: include.fleet_reconcile) ------------
    def device_states(self, thing_names: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(status, run_id) of each of these thing names the inventory has a record of."""
        names = sorted(set(thing_names))
        with self.engine.begin() as connection:
            stage(connection, NAMES_STAGE, ((name,) for name in names))
            found = connection.execute(
                sa.select(devices.c.thing_name, devices.c.status, devices.c.run_id).join(
                    NAMES_STAGE, NAMES_STAGE.c.thing_name == devices.c.thing_name
                )
            )
            states = {name: (status, run) for name, status, run in found}
            NAMES_STAGE.drop(connection)
        return states

    def record_found_devices(
        self, run_id: str, batch_id: str, rows: Iterable[Sequence[Any]]
    ) -> dict[str, int]:
        """Rows of a run that found devices the registry has (tuples in RESULT_FIELDS order, manifest_row
        numbering the run's rows), in one transaction; returns the run's count per outcome.

        A row of status provisioned becomes the device's record, unless the inventory already holds that
        thing (provisioned or claimed by another run): never a second record, and the row is skipped
        (already_provisioned or claimed_by_run). A failed or deleted device is recorded again; a retried run
        rewrites its own rows. Any other status (quarantined, failed) is only the row's outcome, with the
        row's error_code and error_message as its reason.
        """
        now = sa.literal(utcnow(), sa.DateTime(timezone=True))
        stage_ = _RESULTS.c
        with self.engine.begin() as connection:
            stage(connection, _RESULTS, rows)
            columns = [*DEVICE_FIELDS, "batch_id", "run_id", "provisioned_at", "updated_at"]
            found = sa.select(
                *(stage_[name] for name in DEVICE_FIELDS), sa.literal(batch_id), sa.literal(run_id), now, now
            ).where(stage_.status == DEVICE_PROVISIONED)
            insert = insert_for(connection, devices).from_select(columns, found)
            connection.execute(
                insert.on_conflict_do_update(
                    index_elements=["thing_name"],
                    set_={name: insert.excluded[name] for name in columns if name != "thing_name"},
                    where=devices.c.status.in_(CLAIMABLE_STATES) | (devices.c.run_id == run_id),
                )
            )
            self._record_found_outcomes(connection, run_id, batch_id)
            counts = connection.execute(
                sa.select(row_outcomes.c.outcome, sa.func.count())
                .where(row_outcomes.c.run_id == run_id)
                .group_by(row_outcomes.c.outcome)
            )
            result = {outcome: int(n) for outcome, n in counts}
            _RESULTS.drop(connection)
        return result

    def _record_found_outcomes(self, connection: Connection, run_id: str, batch_id: str) -> None:
        stage_ = _RESULTS.c
        device = stage_.status == DEVICE_PROVISIONED
        mine = devices.c.run_id == run_id
        holder = sa.func.coalesce(devices.c.run_id, sa.literal("?"))
        selected = (
            sa.select(
                sa.literal(run_id),
                sa.literal(batch_id),
                stage_.manifest_row,
                sa.case((~device, stage_.status), (mine, sa.literal(DEVICE_PROVISIONED)), else_=SKIPPED),
                sa.case(
                    (~device, stage_.error_code),
                    (mine, sa.null()),
                    (devices.c.status == CLAIMED, sa.literal(CLAIMED_BY_RUN)),
                    else_=sa.literal(ALREADY_PROVISIONED),
                ),
                sa.case(
                    (~device, stage_.error_message),
                    (mine, sa.null()),
                    else_=sa.literal("thing ")
                    + stage_.thing_name
                    + sa.literal(" is already in the inventory (run ")
                    + holder
                    + sa.literal(")"),
                ),
                stage_.model,
                stage_.serial_number,
                stage_.thing_name,
                stage_.unit,
                stage_.param_line,
                stage_.certificate_id,
                sa.literal(utcnow(), sa.DateTime(timezone=True)),
            )
            .select_from(_RESULTS)
            .outerjoin(devices, devices.c.thing_name == stage_.thing_name)
            .where(sa.true())
        )
        columns = ["run_id", "batch_id", "manifest_row", "outcome", "reason_code", "reason"]
        columns += ["model", "serial_number", "thing_name", "unit", "param_line", "certificate_id"]
        columns += ["updated_at"]
        statement = insert_for(connection, row_outcomes).from_select(columns, selected)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["run_id", "manifest_row"],
                set_={c: statement.excluded[c] for c in columns[3:]},
            )
        )

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

    def set_outcomes(self, run_id: str, rows: Iterable[Sequence[Any]]) -> int:
        """Change outcome, reason, unit, line and certificate of rows of one run (its other columns stay)."""
        stage_ = _OUTCOMES.c
        names = ("outcome", "reason_code", "reason", "unit", "param_line", "certificate_id")
        values = {name: stage_[name] for name in names}
        with self.engine.begin() as connection:
            count = stage(connection, _OUTCOMES, rows)
            conditions = [row_outcomes.c.run_id == run_id]
            statement = _update_outcomes_from_stage(connection, _OUTCOMES, conditions, values)
            connection.execute(statement.values(updated_at=utcnow()))
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
