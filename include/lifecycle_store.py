"""The inventory's side of lifecycle actions and drift repair: selections, the per-device action log, and
the device records those change.

Each method is one short transaction on the inventory's engine (include.inventory_schema). The action log
(`device_actions`, one row per run and device) is what makes a lifecycle run resumable: a device is marked
``started`` before its first change in AWS and gets its final state right after its last, so a retried
chunk skips every device whose state is final and redoes at most the one it was working on (whose steps are
planned again from what the registry shows, so nothing is done twice).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from include.inventory import Inventory
from include.inventory_schema import device_actions, devices, insert_for, row_outcomes, stage, staging_table
from include.outcomes import (
    ACTION_DONE,
    ACTION_UNCHANGED,
    CLAIMED,
    DEVICE_DELETED,
    DEVICE_FAILED,
    DEVICE_PROVISIONED,
    FAILED,
    FINAL_ACTION_STATES,
    PROVISIONED,
    REKEY,
)

# The device columns a lifecycle or audit chunk carries (chunk files, in this order).
DEVICE_COLUMNS = (
    "thing_name",
    "model",
    "serial_number",
    "status",
    "batch_id",
    "manifest_row",
    "thing_arn",
    "certificate_id",
    "certificate_arn",
    "certificate_status",
    "issuer",
    "lifecycle_action",
)
DEVICE_SCHEMA = pa.schema(
    [(name, pa.int64() if name == "manifest_row" else pa.string()) for name in DEVICE_COLUMNS]
)
_NAMES = staging_table("stage_lifecycle_names", [("name", sa.String(128))])
# known_names reads an index range instead of staging when it spans at most this many inventory rows per name.
RANGE_SCAN_SHARE = 4


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Selection:
    """Which devices a lifecycle run acts on: every given filter must hold (at least one is needed)."""

    batch_id: str | None = None
    run_id: str | None = None  # the provisioning run whose provisioned or failed devices these are
    serials: tuple[str, ...] = ()
    outcome: str | None = None  # "failed": only devices whose provisioning failed

    def describe(self) -> str:
        parts = [
            f"batch {self.batch_id}" if self.batch_id else "",
            f"run {self.run_id}" if self.run_id else "",
            f"{len(self.serials)} serial numbers" if self.serials else "",
            f"outcome {self.outcome}" if self.outcome else "",
        ]
        return ", ".join(p for p in parts if p) or "nothing"


@dataclass
class ActionRecord:
    """One device's result in one run: the action log row, and what it changes in the device record."""

    thing_name: str
    action: str
    state: str
    batch_id: str | None = None
    certificate_id: str | None = None
    new_certificate_id: str | None = None
    steps: list[str] = field(default_factory=list)
    retries: int = 0
    error_code: str | None = None
    reason: str | None = None
    # device record changes (state done or unchanged): column -> value
    changes: dict[str, Any] = field(default_factory=dict)


class LifecycleStore:
    """Selections, the action log and lifecycle changes of device records, on one inventory."""

    def __init__(self, inventory: Inventory) -> None:
        self.engine = inventory.engine

    # -- selections -----------------------------------------------------------------------------------
    def select(self, selection: Selection) -> pa.Table:
        """The devices a selection names (DEVICE_COLUMNS), by thing name."""
        if not (selection.batch_id or selection.run_id or selection.serials or selection.outcome):
            raise ValueError("a selection needs a batch id, a run id, serial numbers or an outcome")
        if selection.outcome not in (None, FAILED):
            raise ValueError(f"outcome must be {FAILED!r} (or empty), got {selection.outcome!r}")
        query = sa.select(*(devices.c[name] for name in DEVICE_COLUMNS)).order_by(devices.c.thing_name)
        if selection.batch_id:
            query = query.where(devices.c.batch_id == selection.batch_id)
        if selection.run_id:
            handled = sa.select(row_outcomes.c.thing_name).where(
                row_outcomes.c.run_id == selection.run_id,
                row_outcomes.c.outcome.in_((PROVISIONED, FAILED)),
            )
            query = query.where(devices.c.thing_name.in_(handled))
        if selection.outcome == FAILED:
            query = query.where(devices.c.status == DEVICE_FAILED)
        with self.engine.begin() as connection:
            if selection.serials:
                stage(connection, _NAMES, ((serial,) for serial in dict.fromkeys(selection.serials)))
                query = query.where(devices.c.serial_number.in_(sa.select(_NAMES.c.name)))
            rows = connection.execute(query).tuples().all()
            if selection.serials:
                _NAMES.drop(connection)
        return _table(rows)

    def in_scope(self, batch_id: str | None) -> pa.Table:
        """Devices an audit compares with the registry: provisioned, deleted and failed ones (of a batch)."""
        query = (
            sa.select(*(devices.c[name] for name in DEVICE_COLUMNS))
            .where(devices.c.status.in_((DEVICE_PROVISIONED, DEVICE_DELETED, DEVICE_FAILED)))
            .order_by(devices.c.thing_name)
        )
        if batch_id:
            query = query.where(devices.c.batch_id == batch_id)
        with self.engine.connect() as connection:
            return _table(connection.execute(query).tuples().all())

    def known_names(self, thing_names: Iterable[str]) -> set[str]:
        """Which of these thing names the inventory has a record of (in any state).

        A batch's names are mostly one contiguous run of the primary key (a model's prefix, a serial
        range): on SQLite, whose text order is Python's, the inventory's names between the batch's least
        and greatest are read in one index range scan and intersected here, when that range holds at most
        a few times the batch's names. Otherwise (and on PostgreSQL, whose collation may order text
        differently) the names are staged and joined.
        """
        names = list(dict.fromkeys(thing_names))
        if not names:
            return set()
        with self.engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                in_range = devices.c.thing_name.between(min(names), max(names))
                spanned = connection.execute(sa.select(sa.func.count()).where(in_range)).scalar_one()
                if spanned <= RANGE_SCAN_SHARE * len(names):
                    wanted = set(names)
                    found = connection.execute(sa.select(devices.c.thing_name).where(in_range)).scalars()
                    return {name for name in found if name in wanted}
            stage(connection, _NAMES, ((name,) for name in names))
            found = connection.execute(
                sa.select(devices.c.thing_name).where(devices.c.thing_name.in_(sa.select(_NAMES.c.name)))
            )
            known = {name for (name,) in found}
            _NAMES.drop(connection)
        return known

    def known_certificates(self) -> set[str]:
        """Every certificate id the inventory knows: devices' current ones and those rekeys replaced."""
        with self.engine.connect() as connection:
            current = connection.execute(
                sa.select(devices.c.certificate_id).where(devices.c.certificate_id.is_not(None))
            )
            replaced = connection.execute(
                sa.select(device_actions.c.certificate_id).where(
                    device_actions.c.action == REKEY, device_actions.c.state == ACTION_DONE
                )
            )
            return {c for (c,) in current if c} | {c for (c,) in replaced if c}

    def replaced_certificates(self, thing_names: Iterable[str]) -> dict[str, set[str]]:
        """Per thing, the certificates a rekey replaced (still attached, deactivated): known, not drift."""
        names = list(thing_names)
        found: dict[str, set[str]] = {}
        with self.engine.begin() as connection:
            stage(connection, _NAMES, ((name,) for name in dict.fromkeys(names)))
            rows = connection.execute(
                sa.select(device_actions.c.thing_name, device_actions.c.certificate_id).where(
                    device_actions.c.action == REKEY,
                    device_actions.c.state == ACTION_DONE,
                    device_actions.c.thing_name.in_(sa.select(_NAMES.c.name)),
                )
            )
            for name, certificate_id in rows:
                if certificate_id:
                    found.setdefault(name, set()).add(certificate_id)
            _NAMES.drop(connection)
        return found

    def failed_of_task(self, task_id: str) -> list[tuple[str, str | None, str]]:
        """(thing name, certificate id, batch id) of the devices a registration task failed."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(devices.c.thing_name, devices.c.certificate_id, devices.c.batch_id)
                .where(devices.c.registration_task_id == task_id, devices.c.status == DEVICE_FAILED)
                .order_by(devices.c.thing_name)
            )
            return [tuple(row) for row in rows]

    # -- the action log -------------------------------------------------------------------------------
    def states(self, run_id: str, thing_names: Iterable[str]) -> dict[str, str]:
        """This run's action state of each of these devices it has one for (a retried chunk skips the final
        ones and knows which ones a died try had started)."""
        with self.engine.begin() as connection:
            stage(connection, _NAMES, ((name,) for name in dict.fromkeys(thing_names)))
            rows = connection.execute(
                sa.select(device_actions.c.thing_name, device_actions.c.state).where(
                    device_actions.c.run_id == run_id,
                    device_actions.c.thing_name.in_(sa.select(_NAMES.c.name)),
                )
            )
            states = dict(rows.tuples().all())
            _NAMES.drop(connection)
        return states

    def final_states(self, run_id: str, thing_names: Iterable[str]) -> dict[str, str]:
        """Devices of these whose action in this run reached a final state."""
        return {n: s for n, s in self.states(run_id, thing_names).items() if s in FINAL_ACTION_STATES}

    def started(self, run_id: str, thing_name: str) -> dict[str, Any] | None:
        """The action log row of a device this run started and did not finish (a died chunk's), if any."""
        with self.engine.connect() as connection:
            row = (
                connection.execute(
                    sa.select(device_actions).where(
                        device_actions.c.run_id == run_id,
                        device_actions.c.thing_name == thing_name,
                        device_actions.c.state.not_in(FINAL_ACTION_STATES),
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def record(self, run_id: str, records: Sequence[ActionRecord]) -> None:
        """Write action log rows (started or final) and, for done ones, their device record changes."""
        if not records:
            return
        now = utcnow()
        rows = [
            {
                "run_id": run_id,
                "thing_name": r.thing_name,
                "batch_id": r.batch_id,
                "action": r.action,
                "state": r.state,
                "certificate_id": r.certificate_id,
                "new_certificate_id": r.new_certificate_id,
                "steps": list(r.steps),
                "retries": r.retries,
                "error_code": r.error_code,
                "reason": r.reason,
                "started_at": now,
                "updated_at": now,
            }
            for r in records
        ]
        kept = ("started_at", "run_id", "thing_name")
        with self.engine.begin() as connection:
            statement = insert_for(connection, device_actions)
            statement = statement.on_conflict_do_update(
                index_elements=["run_id", "thing_name"],
                set_={
                    c.name: statement.excluded[c.name] for c in device_actions.columns if c.name not in kept
                },
            )
            connection.execute(statement, rows)
            for r in records:
                if r.state in (ACTION_DONE, ACTION_UNCHANGED) and r.changes:
                    connection.execute(
                        sa.update(devices)
                        .where(devices.c.thing_name == r.thing_name)
                        .values(
                            **r.changes,
                            lifecycle_action=r.action,
                            lifecycle_run_id=run_id,
                            lifecycle_reason=r.reason,
                            lifecycle_at=now,
                            updated_at=now,
                        )
                    )

    def actions(self, run_id: str) -> list[dict[str, Any]]:
        """The run's action log, by thing name."""
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(device_actions)
                .where(device_actions.c.run_id == run_id)
                .order_by(device_actions.c.thing_name)
            )
            return [dict(row) for row in found.mappings()]

    # -- drift repair ---------------------------------------------------------------------------------
    def adopt(self, run_id: str, rows: Sequence[dict[str, Any]], reason: str) -> int:
        """Records for things the registry has and the inventory did not (or had as deleted): provisioned,
        or failed (claimable: the manifest's next run gives it a certificate) when the thing holds none.

        Each row: thing_name, model, serial_number, batch_id, manifest_row, thing_arn, certificate_id,
        certificate_arn, certificate_status, issuer. A device another run holds (claimed) is left alone.
        """
        if not rows:
            return 0
        now = utcnow()
        values = [
            {
                **row,
                "status": DEVICE_PROVISIONED if row.get("certificate_id") else DEVICE_FAILED,
                "error_code": None if row.get("certificate_id") else "NoCertificate",
                "error_message": None
                if row.get("certificate_id")
                else "the thing holds no certificate: run its manifest again to give it one",
                "run_id": run_id,
                "provisioned_at": now if row.get("certificate_id") else None,
                "updated_at": now,
                "lifecycle_action": "repair",
                "lifecycle_run_id": run_id,
                "lifecycle_reason": reason,
                "lifecycle_at": now,
            }
            for row in rows
        ]
        changing = [k for k in values[0] if k not in ("thing_name", "provisioned_at")]
        with self.engine.begin() as connection:
            statement = insert_for(connection, devices)
            statement = statement.on_conflict_do_update(
                index_elements=["thing_name"],
                set_={name: statement.excluded[name] for name in changing},
                # (no IN list: it cannot be part of an executemany statement)
                where=(devices.c.status == DEVICE_DELETED) | (devices.c.status == DEVICE_FAILED),
            )
            return int(connection.execute(statement, values).rowcount or 0)

    def repair(self, run_id: str, changes: Sequence[tuple[str, dict[str, Any], str]]) -> int:
        """Set device record columns from the registry: (thing name, columns, reason) each."""
        now = utcnow()
        count = 0
        with self.engine.begin() as connection:
            for thing_name, columns, reason in changes:
                count += connection.execute(
                    sa.update(devices)
                    .where(devices.c.thing_name == thing_name, devices.c.status != CLAIMED)
                    .values(
                        **columns,
                        lifecycle_action="repair",
                        lifecycle_run_id=run_id,
                        lifecycle_reason=reason,
                        lifecycle_at=now,
                        updated_at=now,
                    )
                ).rowcount
        return count


def _table(rows: Sequence[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in DEVICE_COLUMNS]
    return pa.table(
        {
            name: pa.array(list(values), DEVICE_SCHEMA.field(name).type)
            for name, values in zip(DEVICE_COLUMNS, columns, strict=True)
        },
        schema=DEVICE_SCHEMA,
    )
