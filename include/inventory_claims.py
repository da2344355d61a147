"""Claims: before any key or certificate is made for a device, its run claims it in the inventory.

A claim inserts (or, for a device that failed before, updates) the device's row with status ``claimed`` and
its run id, in one statement guarded by the primary key and a status condition. Two runs claiming the same
thing at the same moment cannot both win, on SQLite or PostgreSQL; the loser reads back who holds the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.inventory_schema import (
    NAMES_STAGE,
    devices,
    insert_for,
    row_outcomes,
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
    KNOWN_UNDER_OTHER_NAME,
    PENDING,
    SKIPPED,
)

_CLAIM_REQUEST = staging_table(
    "stage_claims",
    [
        ("thing_name", sa.String(128)),
        ("manifest_row", sa.Integer),
        ("model", sa.String(128)),
        ("serial_number", sa.String(128)),
    ],
)


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


class ClaimRecords:
    """The inventory's claim operations (a part of include.inventory.Inventory)."""

    engine: Engine

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
            if renamed:
                for row, name, other in renamed:
                    holders.setdefault(row, Holder(name, "renamed", "", "", other_name=other))
                # staged once: the outcomes statement tests each row against them
                stage(connection, NAMES_STAGE, ((name,) for _, name, _ in renamed))
                if not dry_run:  # never two things for one device: give back what was just taken
                    connection.execute(
                        sa.delete(devices).where(
                            devices.c.status == CLAIMED,
                            devices.c.run_id == run_id,
                            devices.c.thing_name.in_(sa.select(NAMES_STAGE.c.thing_name)),
                        )
                    )
            self._record_claim_outcomes(connection, run_id, batch_id, dry_run, bool(renamed))
            if renamed:
                NAMES_STAGE.drop(connection)
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
        self, connection: Connection, run_id: str, batch_id: str, dry_run: bool, renamed: bool
    ) -> None:
        """pending for the rows this run holds, skipped with a reason for the others (one statement).

        `renamed`: the names of _renamed are staged in NAMES_STAGE (their rows are skipped). A small
        staged list, not the rename join again, which would scan the whole inventory in each CASE.
        """
        stage_ = _CLAIM_REQUEST.c
        held = _held_by(run_id, dry_run) | devices.c.status.is_(None)
        if renamed:
            held = sa.and_(held, ~stage_.thing_name.in_(sa.select(NAMES_STAGE.c.thing_name)))
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

    def transfer_claims(self, from_run: str, to_run: str, thing_names: Iterable[str]) -> int:
        """Move claims of a dead run to this run (only those still claimed by it); returns how many moved."""
        with self.engine.begin() as connection:
            stage(connection, NAMES_STAGE, ((name,) for name in thing_names))
            moved = connection.execute(
                sa.update(devices)
                .where(
                    devices.c.status == CLAIMED,
                    devices.c.run_id == from_run,
                    devices.c.thing_name.in_(sa.select(NAMES_STAGE.c.thing_name)),
                )
                .values(run_id=to_run, claimed_at=utcnow(), updated_at=utcnow())
            ).rowcount
            NAMES_STAGE.drop(connection)
        return int(moved)

    def release_claims(self, run_id: str, thing_names: Iterable[str]) -> int:
        """Forget this run's claims on devices it will not provision (refused before AWS saw them)."""
        with self.engine.begin() as connection:
            stage(connection, NAMES_STAGE, ((name,) for name in thing_names))
            released = connection.execute(
                sa.delete(devices).where(
                    devices.c.status == CLAIMED,
                    devices.c.run_id == run_id,
                    devices.c.thing_name.in_(sa.select(NAMES_STAGE.c.thing_name)),
                )
            ).rowcount
            NAMES_STAGE.drop(connection)
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
