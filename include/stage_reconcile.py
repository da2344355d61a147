"""Stage 6, reconcile: a unit's RESULTS and ERRORS reports matched to its ledger and recorded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from include.catalog import load_catalog
from include.certificate_authority import certificate_id_from_pem
from include.key_bundle_archive import certificates_archive
from include.ledger import UnitLedger, match_reports
from include.lifecycle_orphans import KEEP, clean_after_reconcile
from include.outcomes import FAILED, PROVISIONED
from include.records import Batch, Reconciled, Registration, RegistrationUnit
from include.registration import report_lines
from include.settings import Settings
from include.stage_support import open_inventory, own_settings, timed
from include.storage import get_table, put_bytes


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
    settings = own_settings(settings, batch)
    counter: dict[str, int] = {}
    files = batch.files_of(unit.run_id)
    with timed(settings, batch, f"reconcile[{unit.unit}]", counter):
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
        inventory = open_inventory(settings)
        inventory.record_results(
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
                [unit.unit] * len(ledger),
                range(1, len(ledger) + 1),
                strict=True,
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


def reconcile_task(
    iot: Any, s3: Any, settings: Settings, batch: Batch, unit: RegistrationUnit, registration: Registration
) -> Reconciled:
    """Reconcile a finished registration task from its reports, streamed from AWS IoT; then what its failed
    lines made in AWS (a certificate, a thing) is cleaned up or reported, as PIPELINE_ORPHANS says."""
    reconciled = reconcile(
        s3,
        settings,
        batch,
        unit,
        registration,
        report_lines(iot, registration.task_id, "RESULTS"),
        report_lines(iot, registration.task_id, "ERRORS"),
    )
    clean_after_reconcile(
        iot,
        s3,
        inventory=open_inventory(settings),
        bucket=batch.bucket,
        run_prefix=batch.files.prefix,
        run_id=batch.run_id,
        unit=unit.unit,
        task_id=registration.task_id,
        keep=settings.orphans == KEEP,
    )
    return reconciled


def _signed_by_aws_or_pca(settings: Settings, unit: RegistrationUnit) -> bool:
    """The unit's certificates were not in the key bundle: their signer (AWS, ACM PCA) made them later."""
    product = load_catalog(settings.catalog_path).products.get(unit.group)
    return product is not None and (product.certificate_mode == "aws_issued" or product.signed_by_pca)


def _put_certificates(
    s3: Any, batch: Batch, unit: RegistrationUnit, ledger: UnitLedger, pems: dict[int, str]
) -> None:
    """The unit's certificates for the factory line, named by thing like the keys in the bundles
    (certificates are public: a plain archive)."""
    archive = certificates_archive(
        (ledger.thing_names[index], certificate_id_from_pem(pem), pem) for index, pem in sorted(pems.items())
    )
    put_bytes(s3, batch.bucket, batch.files.certificates(unit.unit), archive, "application/x-tar")
