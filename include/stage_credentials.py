"""Stages 4 and 5: credentials per chunk (keys, certificates, the sealed key bundle) and the parameter file
per registration unit."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from include import key_bundle
from include.catalog import load_catalog
from include.certificate_authority import certificate_id_from_pem
from include.certificate_modes import PCA_MODES, complete_chunk
from include.credentials import ProductSpec, issue_chunk
from include.errors import PipelineError, ReconcileError
from include.inventory import Inventory
from include.ledger import LEDGER_SCHEMA
from include.outcomes import QUARANTINED
from include.records import Batch, Checks, Chunk, ChunkResult, RegistrationUnit
from include.registration import STARTING
from include.settings import Settings
from include.stage_support import open_inventory, outcome_tuple, own_settings, timed
from include.storage import (
    NDJSON,
    get_in_order,
    get_table,
    put_bytes,
    put_table,
    read_text_setting,
    upload_stream,
)


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
    settings = own_settings(settings, batch)
    counter: dict[str, int] = {}
    files = batch.files
    inventory = open_inventory(settings)
    _refuse_if_registering(inventory, batch, chunk.unit, f"chunk {chunk.index}")
    with timed(settings, batch, f"credentials[{chunk.index}]", counter):
        recipient = read_text_setting(
            s3, settings.bundle_recipient_public_key, "bundle recipient certificate"
        )
        # Loads the recipient (failing before the expensive work); seals each slice as the workers finish it.
        bundle = key_bundle.BundleWriter(recipient, batch_id=batch.batch_id, chunk=chunk.index)
        catalog = load_catalog(settings.catalog_path)
        devices = get_table(s3, settings.bucket, files.chunk_devices(chunk.index))
        counter["devices"] = devices.num_rows
        products = {model: ProductSpec.of(p) for model, p in catalog.products.items()}
        output = issue_chunk(
            devices,
            products,
            ca_certificate_pem,
            ca_private_key_pem,
            workers=settings.workers,
            bundle=bundle.add,
        )
        spec = next(p for p in products.values() if p.group == chunk.group)
        output = complete_chunk(output, spec, iot=iot, acm_pca=acm_pca, pca_arn=settings.acm_pca_arn)
        issuer = _issuer(spec.mode, ca_certificate_pem, settings)
        bundle_key = None
        params = output.params.get(chunk.group, b"")
        # The parameter lines go up while the bundle is closed and sent; the ledger, which says the chunk
        # is complete, only after both.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-params") as upload:
            params_key = files.chunk_params(chunk.index)
            params_sent = upload.submit(put_bytes, s3, settings.bucket, params_key, params, NDJSON)
            if bundle.count:
                bundle_key = put_bytes(
                    s3, settings.bucket, files.bundle(chunk.index), bundle.finish(), key_bundle.CONTENT_TYPE
                )
            params_sent.result()
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
    if mode in PCA_MODES:
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
            outcome_tuple(
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
    inventory = open_inventory(settings)
    units: list[RegistrationUnit] = []
    with timed(settings, batch, "parameter_files", counter):
        for unit in checks.units:
            if unit.adopted_from:
                units.append(unit)
                continue
            lines = sum(issued[index].issued for index in unit.chunks)
            if not lines:
                continue
            _refuse_if_registering(inventory, batch, unit.unit, f"the parameter file of unit {unit.unit}")
            keys = [batch.files.chunk_params(i) for i in unit.chunks if issued[i].issued]
            parts = get_in_order(s3, settings.bucket, keys)
            size = upload_stream(s3, settings.bucket, unit.params_key, parts)
            expected = sum(issued[index].params_bytes for index in unit.chunks)
            if size != expected:
                raise ReconcileError(
                    f"parameter file {unit.params_key} has {size} bytes, its chunks {expected}"
                )
            counter["devices"] = counter.get("devices", 0) + lines
            units.append(unit.model_copy(update={"lines": lines}))
    return units
