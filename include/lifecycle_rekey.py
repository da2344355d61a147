"""Rekey: a new certificate for an existing thing (a new key, or the device's new CSR), attached, then the
old one deactivated.

Credentials are made once per chunk and kept before anything changes in AWS: the new keys go into a key
bundle for the factory line, sealed exactly as the pipeline seals its own (include.credentials.issue_chunk,
then include.key_bundle.seal_payload), and the new certificates into the chunk's `issued.jsonl`. A retried
chunk reads that file back, so it registers the same certificates and never makes a second set.

Modes (the product's certificate_mode): own_ca_key and without_ca get a new key signed by the factory CA
(registered with the CA, or on its own); device_csr signs the device's new CSR from `csr_source`;
aws_issued makes a new key and lets AWS sign its CSR (CreateCertificateFromCsr). acm_pca is refused.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from include import key_bundle
from include.aws_errors import is_not_found
from include.catalog import Catalog
from include.certificate_authority import certificate_id_from_pem
from include.credentials import ProductSpec, issue_chunk
from include.errors import PipelineError
from include.key_bundle import certificates_archive
from include.lifecycle_chunk import ChunkWork, refusal
from include.lifecycle_files import ActionFiles
from include.lifecycle_registry import Calls, DeviceView, inspect
from include.lifecycle_steps import ACTIVE, DeviceFailure, Outcome, Step, run_steps, status_step
from include.lifecycle_store import ActionRecord
from include.outcomes import ACTION_DONE, ACTION_FAILED, ACTION_PLANNED, ACTION_STARTED
from include.settings import Settings
from include.storage import NDJSON, get_bytes, object_exists, put_bytes, read_source, read_text_setting

REKEY_MODES = frozenset({"own_ca_key", "device_csr", "without_ca", "aws_issued"})
# The columns include.credentials.issue_chunk reads (attribute columns are not needed: no parameter file).
_ISSUE_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("thing_name", pa.string()),
        ("model", pa.string()),
        ("serial_number", pa.string()),
        ("csr", pa.string()),
    ]
)


@dataclass(frozen=True)
class Issued:
    """A device's new credential: the certificate PEM we signed, or (aws_issued) the CSR AWS will sign."""

    thing_name: str
    mode: str
    pem: str
    certificate_id: str  # "" until AWS signs an aws_issued CSR

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__) + b"\n"


def read_csr_source(s3: Any, source: str) -> dict[str, str]:
    """New device CSRs from a CSV (s3:// URI or path): a `csr` column and `thing_name` or `serial_number`.

    Returns CSR PEM by thing name or serial number (whichever column the file has; thing names first).
    """
    text = read_source(s3, source, "CSR source").decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    key = columns.get("thing_name") or columns.get("serial_number")
    if "csr" not in columns or key is None:
        raise PipelineError(
            f"CSR source {source}: needs a csr column and a thing_name or serial_number column"
        )
    return {row[key].strip(): row[columns["csr"]].strip() for row in reader if row.get(columns["csr"])}


def new_csr(csrs: Mapping[str, str] | None, device: Mapping[str, Any]) -> str:
    """A device-CSR product's new CSR from the CSR source, by thing name or serial number."""
    csr = (csrs or {}).get(device["thing_name"]) or (csrs or {}).get(device["serial_number"])
    if not csr:
        source = "the CSR source" if csrs is not None else "a CSR source (csr_source is not set)"
        raise DeviceFailure("NoNewCsr", f"no new CSR for {device['thing_name']} in {source}")
    return csr


def mode_of(catalog: Catalog, model: str) -> str:
    """The product's certificate mode, if rekey supports it (DeviceFailure otherwise)."""
    product = catalog.get(model)
    if product is None:
        raise DeviceFailure("UnknownModel", f"model {model} is not in the product catalog")
    if product.certificate_mode not in REKEY_MODES:
        raise DeviceFailure(
            "RekeyUnsupported", f"rekey of {product.certificate_mode} products ({model}) is not supported"
        )
    return product.certificate_mode


def issue_certificates(
    s3: Any,
    settings: Settings,
    files: ActionFiles,
    index: int,
    devices: pa.Table,
    catalog: Catalog,
    ca_pems: tuple[str, str],
    csrs: Mapping[str, str] | None = None,
) -> tuple[dict[str, Issued], dict[str, DeviceFailure]]:
    """The chunk's new credentials (made once: a retried chunk reads them back) and per-device refusals."""
    failures: dict[str, DeviceFailure] = {}
    if object_exists(s3, settings.bucket, files.chunk_issued(index)):
        lines = get_bytes(s3, settings.bucket, files.chunk_issued(index)).splitlines()
        issued = {r["thing_name"]: Issued(**r) for r in map(orjson.loads, lines)}
        return issued, failures
    wanted: list[dict[str, Any]] = []
    modes: dict[str, str] = {}
    for device in devices.to_pylist():
        name = device["thing_name"]
        try:
            modes[name] = mode_of(catalog, device["model"])
            csr = new_csr(csrs, device) if modes[name] == "device_csr" else None
        except DeviceFailure as failure:
            failures[name] = failure
            continue
        wanted.append(
            {
                "thing_name": name,
                "model": device["model"],
                "serial_number": device["serial_number"],
                "csr": csr,
            }
        )
    # Rows number the chunk's devices (devices of several batches may share a manifest row number).
    table = pa.Table.from_pylist(wanted, schema=_ISSUE_SCHEMA.remove(0)).add_column(
        0, "row", pa.array(range(1, len(wanted) + 1), pa.int64())
    )
    products = {model: ProductSpec.of(product) for model, product in catalog.products.items()}
    output = issue_chunk(table, products, *ca_pems, workers=settings.workers)
    for row, code, sentence in output.failures:
        failures[wanted[row - 1]["thing_name"]] = DeviceFailure(code, sentence)
    issued: dict[str, Issued] = {}
    for lines in output.params.values():
        for line in lines.splitlines():
            values = orjson.loads(line)
            name = values["ThingName"]
            if "CSR" in values:
                issued[name] = Issued(name, modes[name], values["CSR"], "")
            else:
                pem = values["CertificatePem"]
                issued[name] = Issued(name, modes[name], pem, certificate_id_from_pem(pem))
    if output.sealed:
        recipient = read_text_setting(s3, settings.bundle_recipient_public_key, "bundle recipient public key")
        sealed = key_bundle.seal_payload(
            output.bundle, recipient, batch_id=f"rekey {files.run_id}", chunk=index
        )
        put_bytes(s3, settings.bucket, files.bundle(index), sealed, key_bundle.CONTENT_TYPE)
    # Last: once this file exists, these are the chunk's certificates for good.
    body = b"".join(record.to_json() for record in issued.values())
    put_bytes(s3, settings.bucket, files.chunk_issued(index), body, NDJSON)
    return issued, failures


def ensure_registered(
    calls: Calls, issued: Issued, known_id: str | None, ca_certificate_pem: str
) -> tuple[str, str, bool]:
    """The new certificate in AWS IoT, registered (or signed, aws_issued) if it is not: (id, ARN, made now).

    `known_id` is the id a died try recorded (aws_issued: AWS chose it), so it is never signed twice.
    """
    certificate_id = issued.certificate_id or known_id
    if certificate_id:
        try:
            found = calls("describe_certificate", certificateId=certificate_id)["certificateDescription"]
            return certificate_id, found["certificateArn"], False
        except Exception as exc:
            if not is_not_found(exc):
                raise
    if issued.mode == "aws_issued":
        made = calls("create_certificate_from_csr", certificateSigningRequest=issued.pem, setAsActive=True)
    elif issued.mode == "without_ca":
        made = calls("register_certificate_without_ca", certificatePem=issued.pem, status=ACTIVE)
    else:
        made = calls(
            "register_certificate",
            certificatePem=issued.pem,
            caCertificatePem=ca_certificate_pem,
            status=ACTIVE,
        )
    return made["certificateId"], made["certificateArn"], True


def plan_rekey(view: DeviceView, new_id: str, new_arn: str, policies: list[str]) -> list[Step]:
    """After the new certificate exists: its policies, its attachment, then the old ones deactivated."""
    new = view.certificates.get(new_id)
    attached_policies = set(new.policies) if new is not None else set()
    steps = [
        Step(
            "attach_policy",
            {"policyName": policy, "target": new_arn},
            f"attach policy {policy} to new certificate {new_id}",
        )
        for policy in policies
        if policy not in attached_policies
    ]
    if new_arn not in view.principals:
        steps.append(
            Step(
                "attach_thing_principal",
                {"thingName": view.thing_name, "principal": new_arn},
                f"attach new certificate {new_id} to {view.thing_name}",
            )
        )
    steps += [
        status_step(old, "INACTIVE", "deactivate old")
        for old in view.attached_certificates
        if old.certificate_id != new_id and old.status == ACTIVE
    ]
    return steps


def planned_rekey_text(view: DeviceView, mode: str, policies: list[str]) -> list[str]:
    """What a dry run says a rekey would do (the new certificate does not exist yet)."""
    making = {
        "aws_issued": "a new key; AWS signs its CSR (CreateCertificateFromCsr)",
        "device_csr": "the device's new CSR, signed by the factory CA, registered",
        "without_ca": "a new key, signed by the factory CA, registered without a CA",
    }.get(mode, "a new key, signed by the factory CA, registered with it")
    texts = [f"issue a new certificate: {making}"]
    texts += [f"attach policy {policy} to the new certificate" for policy in policies]
    texts.append(f"attach the new certificate to {view.thing_name}")
    texts += [
        f"deactivate old certificate {old.certificate_id} (ACTIVE -> INACTIVE)"
        for old in view.attached_certificates
        if old.status == ACTIVE
    ]
    return texts


def product_policies(catalog: Catalog, model: str) -> list[str]:
    product = catalog.get(model)
    return [product.policy, *product.extra_policies] if product is not None else []


def rekey_one(work: ChunkWork, device: dict[str, Any]) -> ActionRecord:
    """One device of a rekey: refused by the inventory, or rekeyed (recorded step by step)."""
    refused = refusal(work.plan, device)
    if refused is not None:
        state, reason = refused
        code = "NotApplicable" if state == ACTION_FAILED else None
        return work.record(device, state, reason=reason, error_code=code)
    outcome = Outcome()
    try:
        return _rekey(work, device, outcome)
    except DeviceFailure as failure:
        return work.record(
            device,
            ACTION_FAILED,
            steps=outcome.done,
            retries=outcome.retries,
            error_code=failure.code,
            reason=failure.reason,
        )


def _rekey(work: ChunkWork, device: dict[str, Any], outcome: Outcome) -> ActionRecord:
    """A new certificate for the thing: registered, given the old one's policies, attached; the old one
    deactivated after."""
    name, current = device["thing_name"], device["certificate_id"]
    policies = product_policies(work.catalog, device["model"])
    if work.plan.dry_run:
        mode = mode_of(work.catalog, device["model"])
        if mode == "device_csr":
            new_csr(work.csrs, device)
        view = inspect(work.calls, name, [current])
        if not view.thing_exists:
            raise DeviceFailure("ThingMissing", f"thing {name} is not in AWS IoT: nothing to rekey")
        return work.record(
            device,
            ACTION_PLANNED,
            steps=planned_rekey_text(view, mode, _policies(view, current, policies)),
            reason=work.plan.reason,
        )
    if name in work.refused:
        raise work.refused[name]
    issued = work.issued[name]
    earlier = work.store.started(work.plan.run_id, name) or {}
    known = issued.certificate_id or earlier.get("new_certificate_id")
    view = inspect(work.calls, name, [current, known])
    if not view.thing_exists:
        raise DeviceFailure("ThingMissing", f"thing {name} is not in AWS IoT: nothing to rekey")
    started = work.record(device, ACTION_STARTED, new_certificate_id=known, reason=work.plan.reason)
    work.store.record(work.plan.run_id, [started])
    new_id, new_arn, made = ensure_registered(work.calls, issued, known, work.ca_certificate_pem)
    if made:
        outcome.done.append(f"register new certificate {new_id}")
        if new_id != known:  # AWS chose the id (aws_issued): kept before anything else happens
            started.new_certificate_id = new_id
            work.store.record(work.plan.run_id, [started])
    steps = plan_rekey(view, new_id, new_arn, _policies(view, current, policies))
    run_steps(work.calls, steps, work.backoff, outcome)
    issuer = "aws" if issued.mode == "aws_issued" else certificate_id_from_pem(work.ca_certificate_pem)
    return work.record(
        device,
        ACTION_DONE,
        new_certificate_id=new_id,
        steps=outcome.done,
        retries=outcome.retries,
        reason=work.plan.reason,
        changes={
            "certificate_id": new_id,
            "certificate_arn": new_arn,
            "certificate_status": ACTIVE,
            "issuer": issuer,
        },
    )


def _policies(view: DeviceView, current: str | None, catalog_policies: list[str]) -> list[str]:
    """The new certificate gets what the old one had (the catalog's policies if the old one is gone)."""
    old = view.certificates.get(current or "")
    return list(old.policies) if old is not None and old.exists and old.policies else catalog_policies


def put_aws_certificates(work: ChunkWork, s3: Any, settings: Settings, index: int, names: list[str]) -> None:
    """The certificates AWS signed for this chunk's rekeyed aws_issued devices, for the factory line
    (all of the chunk's, also those a died try did: the archive is written whole each time)."""
    signed_by_aws = {n for n in names if n in work.issued and work.issued[n].mode == "aws_issued"}
    new_ids = {
        a["thing_name"]: a["new_certificate_id"]
        for a in work.store.actions(work.plan.run_id)
        if a["thing_name"] in signed_by_aws and a["state"] == ACTION_DONE
    }
    if not new_ids:
        return
    pems = []
    for name, certificate_id in sorted(new_ids.items()):
        found = work.calls("describe_certificate", certificateId=certificate_id)["certificateDescription"]
        pems.append((name, certificate_id, found["certificatePem"]))
    files = ActionFiles(settings.bucket, work.plan.run_id)
    put_bytes(s3, settings.bucket, files.certificates(index), certificates_archive(pems), "application/x-tar")
