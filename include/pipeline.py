"""The pipeline stages: each reads its inputs, calls the domain's pure parts, writes its outputs.

One Airflow task calls one stage. Rows travel between stages as Parquet tables in S3 (include.run_files says
where); XCom carries only the small records of include.records. Each stage writes each row once, and the
inventory records each row's outcome once per change of state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from include import key_bundle
from include.catalog import load_catalog
from include.certificate_authority import certificate_id_from_pem
from include.certificate_modes import complete_chunk
from include.credentials import ProductSpec, issue_chunk
from include.csv_safety import write_csv
from include.errors import AccountingError, ManifestError, PipelineError, PreflightError, ReconcileError
from include.inventory import Holder, Inventory
from include.key_bundle_archive import certificates_archive
from include.ledger import LEDGER_SCHEMA, UnitLedger, match_reports
from include.manifest import (
    full_verdict,
    quarantine_csv,
    read_header,
    read_manifest,
    retry_csv,
    validate_manifest,
)
from include.outcomes import (
    CLAIMED,
    FAILED,
    OUTCOMES,
    PENDING,
    PREFLIGHT_FAILED,
    PROVISIONED,
    QUARANTINED,
    RUN_ABANDONED,
    RUN_ABANDONED_STATE,
    RUN_FINISHED,
    SKIPPED,
)
from include.plan import cut_work, plan_dead_run
from include.prerequisites import check_prerequisites, pca_ca_certificate
from include.records import (
    Batch,
    Checks,
    Chunk,
    ChunkResult,
    Reconciled,
    Registration,
    RegistrationUnit,
    Validated,
)
from include.registration import STARTING
from include.settings import Settings
from include.storage import (
    get_bytes,
    get_table,
    object_exists,
    put_bytes,
    put_table,
    read_source,
    read_text_setting,
    upload_stream,
)
from include.summary import render_report

# Whether the Airflow run that holds claims is still running: True, False, or None when it cannot be told
# (a run of another deployment, or one that Airflow never knew): unknown runs are treated as live.
IsLive = Callable[[str, str | None], bool | None]


def _inventory(settings: Settings) -> Inventory:
    return Inventory(settings.inventory_url)


@contextlib.contextmanager
def _timed(settings: Settings, batch: Batch, stage: str, counter: dict[str, int]) -> Iterator[None]:
    """Record a stage's duration (and device count, set by the stage in `counter`) in the inventory."""
    start = time.perf_counter()
    yield
    _inventory(settings).record_stage(
        batch.run_id, stage, time.perf_counter() - start, counter.get("devices")
    )


def _outcome(
    row: int, outcome: str, code: str | None = None, reason: str | None = None, **fields: Any
) -> tuple:
    """One row outcome as the inventory's bulk tuple (include.inventory.OUTCOME_FIELDS order)."""
    return (
        row,
        outcome,
        code,
        reason,
        fields.get("model"),
        fields.get("serial_number"),
        fields.get("thing_name"),
        fields.get("unit"),
        fields.get("param_line"),
        fields.get("certificate_id"),
    )


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
) -> Batch:
    """Read the manifest (s3:// URI or local path), key the batch by its SHA-256, copy it to the work area."""
    started = time.perf_counter()
    product = product or None
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
        dry_run=bool(dry_run),
        max_devices=max_devices,
        bytes=len(data),
    )
    files = batch.files
    if not object_exists(s3, settings.bucket, files.manifest):
        put_bytes(s3, settings.bucket, files.manifest, data, "text/csv")
    inventory = _inventory(settings)
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
    _inventory(settings).fail_run(run_id, source, f"{type(error).__name__}: {error}")


# -- 2. validate -----------------------------------------------------------------------------------------
def validate(s3: Any, settings: Settings, batch: Batch) -> Validated:
    """Validate the manifest against contract v1 and the catalog; write accepted rows and quarantine.csv."""
    counter: dict[str, int] = {}
    files = batch.files
    with _timed(settings, batch, "validate", counter):
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
        inventory = _inventory(settings)
        inventory.record_outcomes(
            batch.run_id,
            batch.batch_id,
            (
                _outcome(
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


# -- 3. pre-flight ---------------------------------------------------------------------------------------
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
    counter: dict[str, int] = {}
    files = batch.files
    with _timed(settings, batch, "preflight", counter):
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
            _inventory(settings).record_outcomes(
                batch.run_id,
                batch.batch_id,
                (
                    _outcome(row, QUARANTINED, PREFLIGHT_FAILED, str(error), model=model)
                    for row, model in zip(rows, models, strict=True)
                ),
            )
            raise error
        for group, body in templates.items():
            put_bytes(s3, settings.bucket, files.template(group), body.encode("utf-8"), "application/json")
        inventory = _inventory(settings)
        holders = inventory.claim(
            batch.run_id,
            batch.batch_id,
            zip(
                accepted.column("thing_name").to_pylist(),
                rows,
                models,
                accepted.column("serial_number").to_pylist(),
                strict=True,
            ),
            dry_run=batch.dry_run,
        )
        resumed = Resumed()
        if not batch.dry_run and holders:
            resumed = _resume_dead_runs(s3, inventory, batch, holders, set(rows), is_live)
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
            for chunk in work.chunks:
                indexes = pa.array([position[row] for row in work.rows_of_chunk[chunk.index]], pa.int64())
                put_table(s3, settings.bucket, files.chunk_devices(chunk.index), accepted.take(indexes))
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
        accepted=len(rows),
        to_provision=to_provision,
        skipped=len(skipped),
        adopted=len(resumed.adopted_rows),
        chunks=work.chunks,
        units=[*work.units, *resumed.units],
        report_key=files.preflight,
        dry_run=batch.dry_run,
        problems=[],
    )


def _pca_certificate(
    catalog: Any, models: list[str], settings: Settings, acm_pca: Any
) -> tuple[str | None, list[str]]:
    """The ACM PCA's CA certificate when an acm_pca product is in the batch (its problems otherwise)."""
    if not any(catalog.products[m].certificate_mode == "acm_pca" for m in models):
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


def _resume_dead_runs(
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
            [_outcome(row, PENDING, unit=unit) for row, unit in mine.items()]
            + [_outcome(row, PENDING) for row in plan.take_over],
        )
        abandoned = f"run {dead} ended before registering this device; run {batch.run_id} provisions it"
        given_up = [claimed[name] for name in plan.give_up]
        inventory.set_outcomes(
            dead, [_outcome(row, FAILED, RUN_ABANDONED, abandoned) for row in [*plan.take_over, *given_up]]
        )
        inventory.update_run(dead, state=RUN_ABANDONED_STATE, adopted_by=batch.run_id)
        resumed.units += plan.adopt
        resumed.adopted_rows |= set(mine)
        resumed.taken_over |= set(plan.take_over)
    return resumed


# -- 4. credentials --------------------------------------------------------------------------------------
def issue_credentials(
    s3: Any,
    settings: Settings,
    batch: Batch,
    chunk: Chunk,
    ca_certificate_pem: str,
    ca_private_key_pem: str,
    *,
    iot: Any = None,
    acm_pca: Any = None,
) -> ChunkResult:
    """Keys and certificates for one chunk: parameter lines, ledger and key bundle to S3.

    A device whose credentials cannot be made (its CSR does not verify, say) is quarantined with its reason
    and its claim released; the rest of the chunk goes on.
    """
    counter: dict[str, int] = {}
    files = batch.files
    inventory = _inventory(settings)
    _refuse_if_registering(inventory, batch, chunk.unit, f"chunk {chunk.index}")
    with _timed(settings, batch, f"credentials[{chunk.index}]", counter):
        recipient = read_text_setting(
            s3, settings.bundle_recipient_public_key, "bundle recipient certificate"
        )
        key_bundle.load_recipient(recipient)  # fail before the expensive work
        catalog = load_catalog(settings.catalog_path)
        devices = get_table(s3, settings.bucket, files.chunk_devices(chunk.index))
        counter["devices"] = devices.num_rows
        products = {model: ProductSpec.of(p) for model, p in catalog.products.items()}
        output = issue_chunk(
            devices, products, ca_certificate_pem, ca_private_key_pem, workers=settings.workers
        )
        spec = next(p for p in products.values() if p.group == chunk.group)
        output = complete_chunk(output, spec, iot=iot, acm_pca=acm_pca, pca_arn=settings.acm_pca_arn)
        issuer = _issuer(spec.mode, ca_certificate_pem, settings)
        bundle_key = None
        if output.sealed:
            sealed = key_bundle.seal_payload(
                output.bundle, output.sealed, recipient, batch_id=batch.batch_id, chunk=chunk.index
            )
            output.bundle = b""
            bundle_key = put_bytes(
                s3, settings.bucket, files.bundle(chunk.index), sealed, key_bundle.CONTENT_TYPE
            )
        params = output.params.get(chunk.group, b"")
        put_bytes(s3, settings.bucket, files.chunk_params(chunk.index), params, "application/x-ndjson")
        ledger = _chunk_ledger(devices, output.ledger, issuer)
        put_table(s3, settings.bucket, files.chunk_ledger(chunk.index), ledger)
        if output.failures:
            _quarantine_late(inventory, batch, chunk, devices, output.failures)
    return ChunkResult(
        index=chunk.index,
        unit=chunk.unit,
        devices=devices.num_rows,
        issued=output.ledger.num_rows,
        refused=len(output.failures),
        bundle_key=bundle_key,
        params_bytes=len(params),
    )


def _refuse_if_registering(inventory: Inventory, batch: Batch, unit: str, what: str) -> None:
    """Issuing again for a unit AWS registers already would give its devices a second certificate."""
    task = inventory.registration_task(batch.run_id, unit)
    if task and (task["task_id"] or task["status"] == STARTING):
        registering = task["task_id"] or "(starting)"
        raise PipelineError(
            f"{what} belongs to unit {unit}, whose registration task {registering} exists; issuing its "
            "credentials again would give its devices second certificates"
        )


def _issuer(mode: str, ca_certificate_pem: str, settings: Settings) -> str:
    """Who signs a mode's certificates, as the inventory records it (the CA report counts by it)."""
    if mode == "aws_issued":
        return "aws"
    if mode == "acm_pca":
        return str(settings.acm_pca_arn)
    return certificate_id_from_pem(ca_certificate_pem)


def _chunk_ledger(devices: pa.Table, issued: pa.Table, issuer: str) -> pa.Table:
    """The issued devices' ledger rows: identity columns from the chunk's devices, joined by manifest row."""
    position = {row: i for i, row in enumerate(devices.column("row").to_pylist())}
    take = pa.array([position[row] for row in issued.column("row").to_pylist()], pa.int64())
    identity = devices.select(["row", "thing_name", "model", "serial_number"]).take(take)
    return pa.table(
        {
            **{name: identity.column(name) for name in identity.column_names},
            "certificate_id": issued.column("certificate_id"),
            "issuer": pa.array([issuer] * issued.num_rows, pa.string()),
            "bytes": issued.column("bytes"),
        },
        schema=LEDGER_SCHEMA,
    )


def _quarantine_late(
    inventory: Inventory, batch: Batch, chunk: Chunk, devices: pa.Table, failures: list[tuple[int, str, str]]
) -> None:
    """Rows refused while issuing: quarantined (their unit set, unlike validation's), claims released."""
    by_row = {row: i for i, row in enumerate(devices.column("row").to_pylist())}
    names = devices.column("thing_name").to_pylist()
    models = devices.column("model").to_pylist()
    serials = devices.column("serial_number").to_pylist()
    inventory.set_outcomes(
        batch.run_id,
        (
            _outcome(
                row,
                QUARANTINED,
                code,
                sentence,
                unit=chunk.unit,
                thing_name=names[by_row[row]],
                model=models[by_row[row]],
                serial_number=serials[by_row[row]],
            )
            for row, code, sentence in failures
        ),
    )
    inventory.release_claims(batch.run_id, [names[by_row[row]] for row, _, _ in failures])


# -- 5. parameter files ----------------------------------------------------------------------------------
def write_parameter_files(
    s3: Any, settings: Settings, batch: Batch, checks: Checks, results: Iterable[ChunkResult]
) -> list[RegistrationUnit]:
    """One parameter file per registration unit (its chunks' lines, in order); adopted units pass through.

    Returns the units to register, in order; a unit whose every device was refused is left out.
    """
    counter: dict[str, int] = {}
    if checks.dry_run:
        return []
    issued = {result.index: result for result in results}
    inventory = _inventory(settings)
    units: list[RegistrationUnit] = []
    with _timed(settings, batch, "parameter_files", counter):
        for unit in checks.units:
            if unit.adopted_from:
                units.append(unit)
                continue
            lines = sum(issued[index].issued for index in unit.chunks)
            if not lines:
                continue
            _refuse_if_registering(inventory, batch, unit.unit, f"the parameter file of unit {unit.unit}")
            parts = (
                get_bytes(s3, settings.bucket, batch.files.chunk_params(index))
                for index in unit.chunks
                if issued[index].issued
            )
            size = upload_stream(s3, settings.bucket, unit.params_key, parts)
            expected = sum(issued[index].params_bytes for index in unit.chunks)
            if size != expected:
                raise ReconcileError(
                    f"parameter file {unit.params_key} has {size} bytes, its chunks {expected}"
                )
            counter["devices"] = counter.get("devices", 0) + lines
            units.append(unit.model_copy(update={"lines": lines}))
    return units


# -- 6. reconcile ----------------------------------------------------------------------------------------
def reconcile(
    s3: Any,
    settings: Settings,
    batch: Batch,
    unit: RegistrationUnit,
    registration: Registration,
    results_lines: Iterable[bytes | str],
    errors_lines: Iterable[bytes | str],
) -> Reconciled:
    """The unit's RESULTS and ERRORS lines matched to its ledger; devices and row outcomes recorded at once.

    A parameter line that neither report names is failed (NoReportLine), never lost.
    """
    counter: dict[str, int] = {}
    files = batch.files_of(unit.run_id)
    with _timed(settings, batch, f"reconcile[{unit.unit}]", counter):
        ledger = UnitLedger.of(get_table(s3, unit.bucket, files.chunk_ledger(index)) for index in unit.chunks)
        counter["devices"] = len(ledger)
        matched = match_reports(
            ledger,
            results_lines,
            errors_lines,
            task_id=registration.task_id,
            status=registration.status,
            message=registration.message,
            params_key=unit.params_key,
            keep_pems=_signed_by_aws_or_pca(settings, unit),
        )
        if matched.certificate_pems:
            _put_certificates(s3, batch, unit, ledger, matched.certificate_pems)
        inventory = _inventory(settings)
        inventory.record_devices(
            batch.run_id,
            batch.batch_id,
            zip(
                ledger.thing_names,
                ledger.models,
                ledger.serials,
                matched.outcomes,
                matched.thing_arns,
                matched.certificate_ids,
                matched.certificate_arns,
                ledger.issuers,
                ledger.rows,
                [registration.task_id] * len(ledger),
                matched.codes,
                matched.reasons,
                strict=True,
            ),
        )
        inventory.settle_outcomes(
            batch.batch_id,
            (
                (row, outcome, code, reason, None, None, None, unit.unit, line, certificate)
                for line, (row, outcome, code, reason, certificate) in enumerate(
                    zip(
                        ledger.rows,
                        matched.outcomes,
                        matched.codes,
                        matched.reasons,
                        matched.certificate_ids,
                        strict=True,
                    ),
                    start=1,
                )
            ),
        )
        inventory.record_registration_status(batch.run_id, unit.unit, registration.model_dump())
    return Reconciled(
        unit=unit.unit,
        task_id=registration.task_id,
        provisioned=matched.counts[PROVISIONED],
        failed=matched.counts[FAILED],
        offset_mismatches=matched.offset_mismatches,
    )


def _signed_by_aws_or_pca(settings: Settings, unit: RegistrationUnit) -> bool:
    """The unit's certificates were not in the key bundle: their signer (AWS, ACM PCA) made them later."""
    product = load_catalog(settings.catalog_path).products.get(unit.group)
    return product is not None and product.certificate_mode in ("aws_issued", "acm_pca")


def _put_certificates(
    s3: Any, batch: Batch, unit: RegistrationUnit, ledger: UnitLedger, pems: dict[int, str]
) -> None:
    """The unit's certificates for the factory line, named by thing like the keys in the bundles
    (certificates are public: a plain archive)."""
    archive = certificates_archive(
        (ledger.thing_names[index], certificate_id_from_pem(pem), pem) for index, pem in sorted(pems.items())
    )
    put_bytes(s3, batch.bucket, batch.files.certificates(unit.unit), archive, "application/x-tar")


# -- 7. summary ------------------------------------------------------------------------------------------
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
    inventory = _inventory(settings)
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
    inventory = _inventory(settings)
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
