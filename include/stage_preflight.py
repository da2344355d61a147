"""Stage 3, pre-flight: prerequisites, then claims; dead runs of the batch resumed; the work cut into chunks
and registration units."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from include.catalog import load_catalog
from include.drift_registry import things_unknown_to_inventory
from include.errors import PipelineError, PreflightError
from include.inventory import Holder, Inventory
from include.outcomes import (
    CLAIMED,
    EXISTS_IN_REGISTRY,
    FAILED,
    PENDING,
    PREFLIGHT_FAILED,
    QUARANTINED,
    RUN_ABANDONED,
    RUN_ABANDONED_STATE,
)
from include.plan import Work, cut_work, plan_dead_run
from include.prerequisites import check_prerequisites, pca_ca_certificate
from include.records import Batch, Checks, RegistrationUnit
from include.run_files import RunFiles
from include.settings import Settings
from include.stage_support import open_inventory, outcome_tuple, own_settings, timed
from include.storage import get_table, put_bytes, put_tables

# Whether the Airflow run that holds claims is still running: True, False, or None when it cannot be told
# (a run of another deployment, or one that Airflow never knew): unknown runs are treated as live.
IsLive = Callable[[str, str | None], bool | None]


def preflight(
    s3: Any,
    iot: Any,
    settings: Settings,
    batch: Batch,
    *,
    ca_certificate_pem: str | None = None,
    is_live: IsLive | None = None,
    acm_pca: Any = None,
) -> Checks:
    """Prerequisites, then claims: each accepted device is claimed for this run before anything is made for
    it. Devices provisioned or claimed by a live run are skipped; a dead run of this batch has its started
    registrations resumed (adopted) and its other claims taken over. The rest is cut into chunks and units.

    Raises PreflightError listing every missing prerequisite, after writing the report and quarantining
    every accepted row with it (claiming nothing).
    A dry run claims nothing and writes no chunk files.
    """
    settings = own_settings(settings, batch)
    counter: dict[str, int] = {}
    files = batch.files
    with timed(settings, batch, "preflight", counter):
        catalog = load_catalog(settings.catalog_path)
        accepted = get_table(s3, settings.bucket, files.accepted)
        counter["devices"] = accepted.num_rows
        rows = accepted.column("row").to_pylist()
        models = accepted.column("model").to_pylist()
        products = sorted(set(models))
        pca_pem, pca_problems = _pca_certificate(catalog, products, settings, acm_pca)
        problems, templates = check_prerequisites(iot, catalog, products, ca_certificate_pem, pca_pem)
        problems = pca_problems + problems
        report: dict[str, Any] = {
            "batch_id": batch.batch_id,
            "run_id": batch.run_id,
            "checked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "products": sorted(set(models)),
            "problems": problems,
            "accepted": len(rows),
            "dry_run": batch.dry_run,
        }
        if problems:
            put_bytes(s3, settings.bucket, files.preflight, json.dumps(report, indent=2).encode())
            error = PreflightError(problems)
            open_inventory(settings).record_outcomes(
                batch.run_id,
                batch.batch_id,
                (
                    outcome_tuple(row, QUARANTINED, PREFLIGHT_FAILED, str(error), model=model)
                    for row, model in zip(rows, models, strict=True)
                ),
            )
            raise error
        for group, body in templates.items():
            put_bytes(s3, settings.bucket, files.template(group), body.encode("utf-8"), "application/json")
        inventory = open_inventory(settings)
        accepted, (rows, models, names, serials) = _refuse_unknown_things(
            iot, inventory, catalog, batch, accepted, (rows, models), report
        )
        holders = inventory.claim(
            batch.run_id,
            batch.batch_id,
            zip(names, rows, models, serials, strict=True),
            dry_run=batch.dry_run,
        )
        resumed = Resumed()
        if not batch.dry_run and holders:
            resumed = resume_dead_runs(s3, inventory, batch, holders, set(rows), is_live)
        skipped = set(holders) - resumed.adopted_rows - resumed.taken_over
        group_of = {model: catalog.products[model].group for model in set(models)}
        rows_by_group: dict[str, list[int]] = defaultdict(list)
        position = {}
        for index, (row, model) in enumerate(zip(rows, models, strict=True)):
            if row not in skipped and row not in resumed.adopted_rows:
                rows_by_group[group_of[model]].append(row)
                position[row] = index
        work = cut_work(
            rows_by_group,
            files,
            chunk_size=settings.chunk_size,
            unit_lines=settings.registration_task_lines,
        )
        if not batch.dry_run:
            put_tables(s3, settings.bucket, _chunk_tables(accepted, work, position, files))
        to_provision = sum(chunk.devices for chunk in work.chunks)
        report.update(
            skipped=len(skipped),
            to_provision=to_provision,
            adopted={unit.unit: unit.adopted_from for unit in resumed.units},
            units={unit.unit: unit.lines for unit in work.units},
            chunks=[chunk.to_xcom() for chunk in work.chunks],
        )
        put_bytes(
            s3, settings.bucket, files.preflight, json.dumps(report, indent=2).encode(), "application/json"
        )
    return Checks(
        accepted=report["accepted"],
        to_provision=to_provision,
        skipped=len(skipped),
        adopted=len(resumed.adopted_rows),
        chunks=work.chunks,
        units=[*work.units, *resumed.units],
        report_key=files.preflight,
        dry_run=batch.dry_run,
        problems=[],
    )


def _chunk_tables(
    accepted: pa.Table, work: Work, position: dict[int, int], files: RunFiles
) -> Iterator[tuple[str, pa.Table]]:
    """Each chunk's devices file: its rows of the accepted table, made one at a time as uploads take them."""
    for chunk in work.chunks:
        indexes = pa.array([position[row] for row in work.rows_of_chunk[chunk.index]], pa.int64())
        yield files.chunk_devices(chunk.index), accepted.take(indexes)


def _refuse_unknown_things(
    iot: Any,
    inventory: Inventory,
    catalog: Any,
    batch: Batch,
    accepted: pa.Table,
    rows_and_models: tuple[list[int], list[str]],
    report: dict[str, Any],
) -> tuple[pa.Table, tuple[list[int], list[str], list[str], list[str]]]:
    """Quarantine accepted devices whose things exist in AWS IoT with no inventory record (a lost or another
    deployment's inventory): provisioning them would give each a second certificate. Returns what is left,
    and its (row, model, thing_name, serial_number) columns."""
    rows, models = rows_and_models
    names = accepted.column("thing_name").to_pylist()
    serials = accepted.column("serial_number").to_pylist()
    identities = accepted.select(["thing_name", "model", "serial_number"])
    unknown = things_unknown_to_inventory(iot, inventory, identities, catalog)
    found = [i for i, name in enumerate(names) if name in unknown.found] if unknown.found else []
    report["in_registry"] = {"found": len(found), "checked": unknown.checked, "calls": unknown.calls}
    if not found:
        return accepted, (rows, models, names, serials)
    inventory.record_outcomes(
        batch.run_id,
        batch.batch_id,
        (
            outcome_tuple(
                rows[i],
                QUARANTINED,
                EXISTS_IN_REGISTRY,
                f"row {rows[i]}: thing {names[i]} already exists in AWS IoT and the inventory has no record "
                "of it; provisioning it would give it a second certificate. Adopt it (audit_drift with "
                "batch_id and repair) or delete it, then run the manifest again",
                thing_name=names[i],
                model=models[i],
                serial_number=serials[i],
            )
            for i in found
        ),
    )
    refused = set(found)
    keep = [i for i in range(len(names)) if i not in refused]
    kept = accepted.take(pa.array(keep, pa.int64()))
    return kept, tuple([column[i] for i in keep] for column in (rows, models, names, serials))


def _pca_certificate(
    catalog: Any, models: list[str], settings: Settings, acm_pca: Any
) -> tuple[str | None, list[str]]:
    """The ACM PCA's CA certificate when an acm_pca product is in the batch (its problems otherwise)."""
    if not any(catalog.products[m].signed_by_pca for m in models):
        return None, []
    if not settings.acm_pca_arn or acm_pca is None:
        return None, ["acm_pca products need the ACM Private CA's ARN (PIPELINE_ACM_PCA_ARN)"]
    return pca_ca_certificate(acm_pca, settings.acm_pca_arn)


@dataclass
class Resumed:
    """What a run took over from dead runs of its batch."""

    units: list[RegistrationUnit] = field(default_factory=list)  # their started units, resumed as they are
    adopted_rows: set[int] = field(default_factory=set)  # this run's rows registered by those units
    taken_over: set[int] = field(default_factory=set)  # rows they claimed but never registered: issued here


def unit_rows(s3: Any, batch: Batch, unit: RegistrationUnit) -> list[int]:
    """Manifest rows a unit's ledgers hold (the devices its parameter file registers)."""
    files = batch.files_of(unit.run_id)
    rows: list[int] = []
    for index in unit.chunks:
        with contextlib.suppress(PipelineError):  # a chunk that never wrote its ledger issued nothing
            rows += get_table(s3, batch.bucket, files.chunk_ledger(index), ["row"]).column("row").to_pylist()
    return rows


def resume_dead_runs(
    s3: Any,
    inventory: Inventory,
    batch: Batch,
    holders: dict[int, Holder],
    wanted_rows: set[int],
    is_live: IsLive | None,
) -> Resumed:
    """Adopt what dead runs of this batch left: their started units, and their claims on wanted devices."""
    dead_runs = sorted(
        {h.run_id for h in holders.values() if h.status == CLAIMED and h.batch_id == batch.batch_id}
    )
    resumed = Resumed()
    for dead in dead_runs:
        record = inventory.run(dead) or {}
        live = is_live(dead, record.get("dag_id")) if is_live is not None else None
        if live is not False:
            continue  # live, or unknown: its devices are skipped, never taken
        claimed = inventory.claimed_by(dead)
        started = [
            RegistrationUnit.of(task["spec"]).model_copy(update={"task_id": task["task_id"]})
            for task in inventory.registration_tasks(dead)
        ]
        rows_in_unit = {unit.unit: unit_rows(s3, batch, unit) for unit in started}
        plan = plan_dead_run(dead, claimed, started, rows_in_unit, wanted_rows)
        name_of = {row: name for name, row in claimed.items()}
        moving = [*plan.adopted_rows, *plan.take_over]
        inventory.transfer_claims(dead, batch.run_id, [name_of[row] for row in moving if row in name_of])
        inventory.release_claims(dead, plan.give_up)
        mine = {row: unit for row, unit in plan.adopted_rows.items() if row in wanted_rows}
        inventory.set_outcomes(
            batch.run_id,
            [outcome_tuple(row, PENDING, unit=unit) for row, unit in mine.items()]
            + [outcome_tuple(row, PENDING) for row in plan.take_over],
        )
        abandoned = f"run {dead} ended before registering this device; run {batch.run_id} provisions it"
        given_up = [claimed[name] for name in plan.give_up]
        inventory.set_outcomes(
            dead,
            [outcome_tuple(row, FAILED, RUN_ABANDONED, abandoned) for row in [*plan.take_over, *given_up]],
        )
        inventory.update_run(dead, state=RUN_ABANDONED_STATE, adopted_by=batch.run_id)
        resumed.units += plan.adopt
        resumed.adopted_rows |= set(mine)
        resumed.taken_over |= set(plan.take_over)
    return resumed
