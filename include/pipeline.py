"""The pipeline stages as plain functions: one Airflow task calls one (JSON-safe dicts in and out).

S3 layout (bucket = settings.bucket):
    {work_prefix}{sha256}/manifest.csv                         the manifest, keyed by its content hash
    {work_prefix}{sha256}/runs/{run}/accepted.jsonl            validated rows (normalised, with row numbers)
                                   /quarantine.csv             refused rows: original values + reason
                                   /preflight.json             pre-flight report
                                   /chunks/{i}/devices.jsonl   the devices of credentials chunk i
                                   /chunks/{i}/params-{group}.jsonl, /chunks/{i}/ledger.jsonl
                                   /bundles/chunk-{i}.fkb      encrypted private keys (include.key_bundle)
                                   /ca-certificate.pem         the factory CA certificate (public)
                                   /params/{group}.jsonl       bulk-registration input, one per group
                                   /templates/{group}.json     the rendered provisioning template
                                   /ledger.jsonl               row <-> group line/offset <-> certificate id
                                   /ledger/{group}.jsonl       the same entries, one file per group
                                   /failed/{group}.csv, /failed.csv   retry manifests (manifest's own format)
                                   /summary.json, /report.md
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from include import key_bundle
from include.catalog import Catalog, load_catalog
from include.certificate_authority import certificate_id_from_pem
from include.credentials import ProductSpec, issue_chunk
from include.csv_safety import write_csv
from include.errors import AccountingError, ManifestError, PreflightError, ReconcileError, SourceError
from include.inventory import PENDING, Inventory
from include.manifest import quarantine_csv, read_header, read_manifest, retry_csv, validate_manifest
from include.reports import parse_report_line
from include.settings import Settings
from include.storage import (
    get_bytes,
    iter_lines,
    object_exists,
    put_bytes,
    read_source,
    read_text_setting,
    safe_key_part,
    upload_stream,
)
from include.summary import render_report
from include.templates import render_template

__all__ = [
    "PreflightError",
    "intake",
    "validate",
    "preflight",
    "issue_credentials",
    "write_parameter_files",
    "template_body",
    "reconcile",
    "summarize",
    "known_batch",
    "registration_task_for",
    "record_registration_task",
    "record_registration_status",
]

# Template size check before the CA is known: a P-256 CA certificate PEM is about 700 characters.
PLACEHOLDER_CA_PEM = "-----BEGIN CERTIFICATE-----\n" + "A" * 1200 + "\n-----END CERTIFICATE-----\n"
NO_REPORT_LINE = "NoReportLine"


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def _read_jsonl(s3: Any, bucket: str, key: str) -> Iterator[dict[str, Any]]:
    for line in iter_lines(s3, bucket, key):
        yield orjson.loads(line)


def _inventory(settings: Settings) -> Inventory:
    return Inventory(settings.inventory_url)


@contextlib.contextmanager
def _timed(settings: Settings, batch: dict, stage: str, counter: dict[str, int]) -> Iterator[None]:
    """Record a stage's duration (and device count, set by the stage in `counter`) in the inventory."""
    start = time.perf_counter()
    yield
    _inventory(settings).record_stage(
        batch["run_id"], stage, time.perf_counter() - start, counter.get("devices")
    )


def _chunk_prefix(batch: dict, index: int) -> str:
    return f"{batch['run_prefix']}chunks/{index:05d}/"


def _client_error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


# -- 1. intake -------------------------------------------------------------------------------------------
def intake(
    s3: Any,
    settings: Settings,
    source: str,
    *,
    run_id: str,
    product: str | None = None,
    dry_run: bool = False,
    max_devices: int | None = None,
) -> dict:
    """Read the manifest (s3:// URI or local path), key the batch by its SHA-256, copy it to the work prefix.

    Returns {"batch_id", "run_id", "source", "manifest_key", "product", "dry_run", "max_devices",
    "work_prefix", "run_prefix", "bucket", "new_batch", "bytes"}.
    """
    started = time.perf_counter()
    product = product or None
    if product is not None and product not in load_catalog(settings.catalog_path):
        raise ManifestError(f"product override {product!r} is not in the product catalog")
    if max_devices is not None and max_devices < 1:
        raise ValueError(f"max_devices must be at least 1, got {max_devices}")
    data = read_source(s3, source)
    batch_id = hashlib.sha256(data).hexdigest()
    work_prefix = f"{settings.work_prefix}{batch_id}/"
    manifest_key = f"{work_prefix}manifest.csv"
    if not object_exists(s3, settings.bucket, manifest_key):
        put_bytes(s3, settings.bucket, manifest_key, data, "text/csv")
    inventory = _inventory(settings)
    new_batch = inventory.record_batch(batch_id, source, manifest_key, len(data))
    inventory.record_run(run_id, batch_id, source, product=product, dry_run=dry_run, max_devices=max_devices)
    inventory.record_stage(run_id, "intake", time.perf_counter() - started)
    return {
        "batch_id": batch_id,
        "run_id": run_id,
        "source": source,
        "bucket": settings.bucket,
        "manifest_key": manifest_key,
        "product": product,
        "dry_run": bool(dry_run),
        "max_devices": max_devices,
        "work_prefix": work_prefix,
        "run_prefix": f"{work_prefix}runs/{safe_key_part(run_id)}/",
        "new_batch": new_batch,
        "bytes": len(data),
    }


def known_batch(settings: Settings, batch_id: str) -> bool:
    """Whether a manifest with this content hash was taken in before (the scheduled scan skips it)."""
    return _inventory(settings).batch_known(batch_id)


# -- 2. validate -----------------------------------------------------------------------------------------
def validate(s3: Any, settings: Settings, batch: dict) -> dict:
    """Validate the manifest against contract v1 and the catalog; write accepted rows and quarantine.csv.

    Returns {"rows", "accepted", "quarantined", "reasons": {code: n}, "quarantine_key", "accepted_key",
    "ignored_columns"}.
    """
    counter: dict[str, int] = {}
    with _timed(settings, batch, "validate", counter):
        table = read_manifest(get_bytes(s3, settings.bucket, batch["manifest_key"]))
        catalog = load_catalog(settings.catalog_path)
        result = validate_manifest(
            table, catalog, product=batch.get("product"), max_devices=batch.get("max_devices")
        )
        counter["devices"] = result.rows
        accepted_key = f"{batch['run_prefix']}accepted.jsonl"
        quarantine_key = f"{batch['run_prefix']}quarantine.csv"
        put_bytes(s3, settings.bucket, accepted_key, _jsonl(result.accepted), "application/x-ndjson")
        put_bytes(s3, settings.bucket, quarantine_key, quarantine_csv(table, result.quarantined), "text/csv")
        serial_at = table.columns.index("serial_number") if "serial_number" in table.columns else None
        model_at = table.columns.index("model") if "model" in table.columns else None
        cells = dict(table.rows)

        def cell(row: int, at: int | None) -> str | None:
            values = cells[row]
            return values[at].strip()[:128] if at is not None and at < len(values) else None

        inventory = _inventory(settings)
        inventory.record_outcomes(
            batch["run_id"],
            batch["batch_id"],
            (
                {
                    "manifest_row": row,
                    "outcome": "quarantined",
                    "reason_code": code,
                    "reason": sentence,
                    "serial_number": cell(row, serial_at),
                    "model": batch.get("product") or cell(row, model_at),
                }
                for row, code, sentence in result.quarantined
            ),
        )
        inventory.set_run_rows(batch["run_id"], result.rows)
    return {
        "rows": result.rows,
        "accepted": len(result.accepted),
        "quarantined": len(result.quarantined),
        "reasons": result.reasons,
        "quarantine_key": quarantine_key,
        "accepted_key": accepted_key,
        "ignored_columns": result.ignored_columns,
    }


# -- 3. pre-flight ---------------------------------------------------------------------------------------
def _exists(call: Any, **kwargs: Any) -> dict | None:
    """The response of a Describe/Get call, or None when AWS says the resource does not exist."""
    try:
        return call(**kwargs)
    except Exception as exc:
        if _client_error_code(exc) == "ResourceNotFoundException":
            return None
        raise


def _prerequisite_problems(
    iot: Any, catalog: Catalog, models: list[str], ca_certificate_pem: str | None
) -> list[str]:
    problems: list[str] = []
    checked: set[tuple[str, str]] = set()

    def check(kind: str, name: str, model: str, call: Any, **kwargs: Any) -> dict | None:
        if (kind, name) in checked:
            return None
        checked.add((kind, name))
        found = _exists(call, **kwargs)
        if found is None:
            problems.append(f"{kind} {name} (product {model}) does not exist in AWS IoT")
        return found

    for model in models:
        product = catalog.products[model]
        if product.thing_type:
            found = check(
                "thing type",
                product.thing_type,
                model,
                iot.describe_thing_type,
                thingTypeName=product.thing_type,
            )
            if found and (found.get("thingTypeMetadata") or {}).get("deprecated"):
                problems.append(f"thing type {product.thing_type} (product {model}) is deprecated")
        for group in product.thing_groups:
            check("thing group", group, model, iot.describe_thing_group, thingGroupName=group)
        check("policy", product.policy, model, iot.get_policy, policyName=product.policy)
        try:
            render_template(product, ca_certificate_pem or PLACEHOLDER_CA_PEM)
        except Exception as exc:  # TemplateError, CatalogError: report with the rest
            problems.append(str(exc))
    if ca_certificate_pem:
        ca_id = certificate_id_from_pem(ca_certificate_pem)
        described = _exists(iot.describe_ca_certificate, certificateId=ca_id)
        if described is None:
            problems.append(f"the factory CA (certificate id {ca_id}) is not registered in AWS IoT")
        elif described["certificateDescription"]["status"] != "ACTIVE":
            status = described["certificateDescription"]["status"]
            problems.append(f"the factory CA (certificate id {ca_id}) is {status}, not ACTIVE")
    else:
        listed = iot.list_ca_certificates(pageSize=250).get("certificates", [])
        if not any(c.get("status") == "ACTIVE" for c in listed):
            problems.append("no ACTIVE CA certificate is registered in AWS IoT")
    return problems


def preflight(
    s3: Any, iot: Any, settings: Settings, batch: dict, *, ca_certificate_pem: str | None = None
) -> dict:
    """Check IoT prerequisites and the inventory, mark already-provisioned devices skipped, cut chunks.

    Pass the factory CA certificate as `ca_certificate_pem` to check that exactly this CA is registered and
    ACTIVE (without it, any ACTIVE CA passes). Raises PreflightError listing every missing prerequisite, after
    writing the report. Returns {"to_provision", "skipped", "chunks": [{"index", "start", "stop"}], "groups",
    "report_key", "dry_run", "problems"}.
    """
    counter: dict[str, int] = {}
    with _timed(settings, batch, "preflight", counter):
        catalog = load_catalog(settings.catalog_path)
        accepted = list(_read_jsonl(s3, settings.bucket, f"{batch['run_prefix']}accepted.jsonl"))
        counter["devices"] = len(accepted)
        models = sorted({d["model"] for d in accepted})
        problems = _prerequisite_problems(iot, catalog, models, ca_certificate_pem)
        inventory = _inventory(settings)
        done = inventory.provisioned(d["thing_name"] for d in accepted)
        skipped = [d for d in accepted if d["thing_name"] in done]
        to_provision = [d for d in accepted if d["thing_name"] not in done]
        size = settings.chunk_size
        chunks = [
            {"index": i, "start": start, "stop": min(start + size, len(to_provision))}
            for i, start in enumerate(range(0, len(to_provision), size))
        ]
        groups = sorted({catalog.products[d["model"]].group for d in to_provision})
        report_key = f"{batch['run_prefix']}preflight.json"
        report = {
            "batch_id": batch["batch_id"],
            "run_id": batch["run_id"],
            "checked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "products": models,
            "problems": problems,
            "accepted": len(accepted),
            "skipped": len(skipped),
            "to_provision": len(to_provision),
            "groups": {
                g: sum(1 for d in to_provision if catalog.products[d["model"]].group == g) for g in groups
            },
            "chunks": chunks,
            "dry_run": bool(batch.get("dry_run")),
        }
        put_bytes(s3, settings.bucket, report_key, json.dumps(report, indent=2).encode(), "application/json")
        if problems:
            raise PreflightError(problems)
        inventory.record_outcomes(
            batch["run_id"],
            batch["batch_id"],
            [
                {
                    "manifest_row": d["row"],
                    "outcome": "skipped",
                    "reason_code": "already_provisioned",
                    "reason": f"thing {d['thing_name']} is already provisioned in the inventory",
                    "model": d["model"],
                    "serial_number": d["serial_number"],
                    "thing_name": d["thing_name"],
                }
                for d in skipped
            ]
            + [
                {
                    "manifest_row": d["row"],
                    "outcome": PENDING,
                    "model": d["model"],
                    "serial_number": d["serial_number"],
                    "thing_name": d["thing_name"],
                    "group_name": catalog.products[d["model"]].group,
                }
                for d in to_provision
            ],
        )
        if not batch.get("dry_run"):
            for chunk in chunks:
                devices = to_provision[chunk["start"] : chunk["stop"]]
                key = f"{_chunk_prefix(batch, chunk['index'])}devices.jsonl"
                put_bytes(s3, settings.bucket, key, _jsonl(devices), "application/x-ndjson")
    return {
        "to_provision": len(to_provision),
        "skipped": len(skipped),
        "chunks": chunks,
        "groups": groups,
        "report_key": report_key,
        "dry_run": bool(batch.get("dry_run")),
        "problems": problems,
    }


# -- 4. credentials --------------------------------------------------------------------------------------
def issue_credentials(
    s3: Any, settings: Settings, batch: dict, chunk: dict, ca_certificate_pem: str, ca_private_key_pem: str
) -> dict:
    """Make keys and certificates for one chunk; write parameter-line parts, ledger part and the key bundle.

    Returns {"index", "devices", "bundle_key", "groups": {group: lines}}. No key material in the result.
    """
    index = int(chunk["index"])
    counter: dict[str, int] = {}
    with _timed(settings, batch, f"credentials[{index}]", counter):
        recipient = read_text_setting(s3, settings.bundle_recipient_public_key, "bundle recipient public key")
        key_bundle.load_recipient(recipient)  # fail before the expensive work
        catalog = load_catalog(settings.catalog_path)
        products = {model: ProductSpec.of(p) for model, p in catalog.products.items()}
        prefix = _chunk_prefix(batch, index)
        data = get_bytes(s3, settings.bucket, f"{prefix}devices.jsonl")
        devices = [line for line in data.splitlines() if line]
        counter["devices"] = len(devices)
        # Workers do all per-device work; this process only seals and uploads a few large objects.
        output = issue_chunk(
            devices, products, ca_certificate_pem, ca_private_key_pem, workers=settings.workers
        )
        bundle_key = None
        if output.sealed:
            bundle = key_bundle.seal_payload(
                output.bundle, output.sealed, recipient, batch_id=batch["batch_id"], chunk=index
            )
            output.bundle = b""
            bundle_key = f"{batch['run_prefix']}bundles/chunk-{index:05d}.fkb"
            put_bytes(s3, settings.bucket, bundle_key, bundle)
        for group, lines in output.params.items():
            put_bytes(s3, settings.bucket, f"{prefix}params-{group}.jsonl", lines)
        put_bytes(s3, settings.bucket, f"{prefix}ledger.jsonl", output.ledger)
        if index == 0:  # once per run: every run with devices has chunk 0
            put_bytes(
                s3, settings.bucket, f"{batch['run_prefix']}ca-certificate.pem", ca_certificate_pem.encode()
            )
    return {
        "index": index,
        "devices": len(devices),
        "bundle_key": bundle_key,
        "groups": dict(sorted(output.counts.items())),
    }


# -- 5. parameter files ----------------------------------------------------------------------------------
def _run_ledger(
    s3: Any, settings: Settings, batch: dict, ordered: list[dict]
) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, int]]:
    """Chunk ledgers in chunk order, each entry given its 1-based line and end offset in its group's file.

    Returns (entries, lines per group, bytes per group).
    """
    ledger: list[dict[str, Any]] = []
    next_line: dict[str, int] = defaultdict(int)
    end_offset: dict[str, int] = defaultdict(int)
    for chunk in ordered:
        index = int(chunk["index"])
        data = get_bytes(s3, settings.bucket, f"{_chunk_prefix(batch, index)}ledger.jsonl")
        for raw in data.splitlines():
            if not raw:
                continue
            entry = orjson.loads(raw)
            entry.pop("position", None)  # written by earlier versions, not part of the run ledger
            group = entry["group"]
            next_line[group] += 1
            end_offset[group] += entry.pop("bytes")
            entry["line"], entry["offset"], entry["chunk"] = next_line[group], end_offset[group], index
            ledger.append(entry)
    return ledger, next_line, end_offset


def _put_ledger(s3: Any, settings: Settings, batch: dict, ledger: list[dict[str, Any]]) -> None:
    """The run ledger, and one ledger per group so that each reconcile reads only its own entries."""
    lines = [orjson.dumps(e) + b"\n" for e in ledger]
    by_group: dict[str, list[bytes]] = defaultdict(list)
    for entry, line in zip(ledger, lines, strict=True):
        by_group[entry["group"]].append(line)
    ndjson = "application/x-ndjson"
    for group, group_lines in by_group.items():
        put_bytes(s3, settings.bucket, _group_ledger_key(batch, group), b"".join(group_lines), ndjson)
    put_bytes(s3, settings.bucket, f"{batch['run_prefix']}ledger.jsonl", b"".join(lines), ndjson)


def _group_ledger_key(batch: dict, group: str) -> str:
    return f"{batch['run_prefix']}ledger/{group}.jsonl"


def write_parameter_files(s3: Any, settings: Settings, batch: dict, chunks: list[dict]) -> list[dict]:
    """Concatenate chunk parts into one parameter file per registration group; upload its template.

    Returns [{"group", "lines", "params_key", "template_key", "bucket"}], one per registration task to start.
    """
    counter: dict[str, int] = {}
    entries: list[dict] = []
    with _timed(settings, batch, "parameter_files", counter):
        ordered = sorted(chunks, key=lambda c: int(c["index"]))
        if not ordered:
            return []
        catalog = load_catalog(settings.catalog_path)
        by_group = {p.group: p for p in catalog.products.values()}
        ca_pem = get_bytes(s3, settings.bucket, f"{batch['run_prefix']}ca-certificate.pem").decode("ascii")
        groups = sorted({g for c in ordered for g, n in c["groups"].items() if n})
        ledger, lines, end_offset = _run_ledger(s3, settings, batch, ordered)
        counter["devices"] = len(ledger)
        for group in groups:
            params_key = f"{batch['run_prefix']}params/{group}.jsonl"
            parts = (
                get_bytes(s3, settings.bucket, f"{_chunk_prefix(batch, int(c['index']))}params-{group}.jsonl")
                for c in ordered
                if c["groups"].get(group)
            )
            size = upload_stream(s3, settings.bucket, params_key, parts)
            if size != end_offset[group]:
                raise ReconcileError(
                    f"parameter file {params_key} has {size} bytes, the ledger expects {end_offset[group]}"
                )
            template_key = f"{batch['run_prefix']}templates/{group}.json"
            body = render_template(by_group[group], ca_pem)
            put_bytes(s3, settings.bucket, template_key, body.encode("utf-8"), "application/json")
            entries.append(
                {
                    "group": group,
                    "lines": lines[group],
                    "params_key": params_key,
                    "template_key": template_key,
                    "bucket": settings.bucket,
                }
            )
        _put_ledger(s3, settings, batch, ledger)
        _inventory(settings).record_outcomes(
            batch["run_id"],
            batch["batch_id"],
            (
                {
                    "manifest_row": e["row"],
                    "outcome": PENDING,
                    "model": e["model"],
                    "serial_number": e["serial_number"],
                    "thing_name": e["thing_name"],
                    "group_name": e["group"],
                    "param_line": e["line"],
                    "certificate_id": e["certificate_id"],
                }
                for e in ledger
            ),
        )
    return entries


def template_body(s3: Any, settings: Settings, group: dict) -> str:
    """The rendered template of a registration group (the templateBody of StartThingRegistrationTask)."""
    return get_bytes(s3, group.get("bucket", settings.bucket), group["template_key"]).decode("utf-8")


# -- 8. reconcile ----------------------------------------------------------------------------------------
def _ledger_of_group(s3: Any, settings: Settings, batch: dict, group: str) -> dict[int, dict[str, Any]]:
    """The group's ledger entries by parameter line (its own file; the run ledger for runs written before)."""
    try:
        lines = get_bytes(s3, settings.bucket, _group_ledger_key(batch, group)).splitlines()
    except SourceError:
        lines = get_bytes(s3, settings.bucket, f"{batch['run_prefix']}ledger.jsonl").splitlines()
    entries = (orjson.loads(line) for line in lines if line)
    return {e["line"]: e for e in entries if e["group"] == group}


def _retry_manifest(s3: Any, settings: Settings, batch: dict, rows: list[int]) -> bytes:
    """retry_csv of these rows; with none, only the header is needed, not a parse of the whole manifest."""
    data = get_bytes(s3, settings.bucket, batch["manifest_key"])
    if not rows:
        return write_csv(read_header(data), [])
    return retry_csv(read_manifest(data), rows)


def reconcile(
    s3: Any,
    settings: Settings,
    batch: dict,
    group: dict,
    registration: dict,
    results_lines: Iterable[bytes | str],
    errors_lines: Iterable[bytes | str],
) -> dict:
    """Map report lines back to manifest rows, upsert the inventory, write the group's failed.csv.

    registration = {"task_id", "status", "success_count", "failure_count", "message"}. A parameter line with
    no report line is failed with reason NoReportLine. Returns {"group", "provisioned", "failed",
    "failed_key", "task_id", "offset_mismatches"}.
    """
    name = group["group"]
    counter: dict[str, int] = {}
    with _timed(settings, batch, f"reconcile[{name}]", counter):
        ledger = _ledger_of_group(s3, settings, batch, name)
        counter["devices"] = len(ledger)
        task_id = registration.get("task_id")
        outcomes: dict[int, dict[str, Any]] = {}
        device_rows: list[dict[str, Any]] = []
        mismatches = 0
        now = dt.datetime.now(dt.UTC)

        def device_record(entry: dict, **fields: Any) -> dict[str, Any]:
            record = {
                "thing_name": entry["thing_name"],
                "model": entry["model"],
                "serial_number": entry["serial_number"],
                "status": "failed",
                "thing_arn": None,
                "certificate_id": None,
                "certificate_arn": None,
                "batch_id": batch["batch_id"],
                "run_id": batch["run_id"],
                "manifest_row": entry["row"],
                "registration_task_id": task_id,
                "error_code": None,
                "error_message": None,
                "provisioned_at": None,
            }
            record.update(fields)
            return record

        for kind, source in (("results", results_lines), ("errors", errors_lines)):
            for raw in source:
                if not raw or not raw.strip():
                    continue
                report = parse_report_line(raw)
                entry = ledger.get(report.line_number)
                if entry is None:
                    raise ReconcileError(
                        f"{kind} report of task {task_id} names lineNumber {report.line_number}, but "
                        f"parameter file {group['params_key']} has lines 1-{len(ledger)}"
                    )
                if entry["line"] in outcomes:
                    continue  # a line reported twice keeps its first outcome
                if report.offset is not None and report.offset != entry["offset"]:
                    mismatches += 1
                if report.succeeded and kind == "results":
                    certificate_id = report.certificate_id or entry["certificate_id"]
                    outcomes[entry["line"]] = {
                        "manifest_row": entry["row"],
                        "outcome": "provisioned",
                        "certificate_id": certificate_id,
                    }
                    device_rows.append(
                        device_record(
                            entry,
                            status="provisioned",
                            thing_arn=report.thing_arn,
                            certificate_id=certificate_id,
                            certificate_arn=report.certificate_arn,
                            provisioned_at=now,
                        )
                    )
                else:
                    code = report.error_code or "UnknownError"
                    message = report.error_message or "the report line carries no error message"
                    outcomes[entry["line"]] = {
                        "manifest_row": entry["row"],
                        "outcome": "failed",
                        "reason_code": code,
                        "reason": message,
                        "certificate_id": entry["certificate_id"],
                    }
                    device_rows.append(device_record(entry, error_code=code, error_message=message))
        status = registration.get("status", "unknown")
        for line, entry in ledger.items():
            if line not in outcomes:
                message = (
                    f"registration task {task_id} ended {status} without reporting parameter line {line}"
                    + (f": {registration['message']}" if registration.get("message") else "")
                )
                outcomes[line] = {
                    "manifest_row": entry["row"],
                    "outcome": "failed",
                    "reason_code": NO_REPORT_LINE,
                    "reason": message,
                    "certificate_id": entry["certificate_id"],
                }
                device_rows.append(device_record(entry, error_code=NO_REPORT_LINE, error_message=message))
        inventory = _inventory(settings)
        inventory.upsert_devices(device_rows)
        inventory.update_outcomes(batch["run_id"], list(outcomes.values()))
        if task_id:
            inventory.record_registration_status(batch["batch_id"], batch["run_id"], name, registration)
        failed_rows = sorted(o["manifest_row"] for o in outcomes.values() if o["outcome"] == "failed")
        failed_key = f"{batch['run_prefix']}failed/{name}.csv"
        put_bytes(
            s3, settings.bucket, failed_key, _retry_manifest(s3, settings, batch, failed_rows), "text/csv"
        )
    provisioned = sum(1 for o in outcomes.values() if o["outcome"] == "provisioned")
    return {
        "group": name,
        "task_id": task_id,
        "provisioned": provisioned,
        "failed": len(failed_rows),
        "failed_key": failed_key,
        "offset_mismatches": mismatches,
    }


# -- 9. summary ------------------------------------------------------------------------------------------
def summarize(s3: Any, settings: Settings, batch: dict) -> dict:
    """Count outcomes for the run (asserting nothing is lost), write summary.json, report.md and failed.csv.

    Returns {"batch_id", "run_id", "rows", "provisioned", "failed", "quarantined", "skipped", "planned",
    "reasons", "errors", "registration_tasks", "durations", "files", "dry_run", "accounted"}; raises
    AccountingError (after writing the files) when the outcomes do not add up to the manifest's data rows.
    """
    inventory = _inventory(settings)
    run_id = batch["run_id"]
    run = inventory.run(run_id) or {}
    counts = inventory.outcome_counts(run_id)
    dry_run = bool(batch.get("dry_run"))
    rows = int(run.get("rows") or 0)
    pending = counts.get(PENDING, 0)
    outcome_total = sum(counts.get(o, 0) for o in ("provisioned", "failed", "quarantined", "skipped"))
    accounted = outcome_total + (pending if dry_run else 0) == rows and (dry_run or pending == 0)
    prefix = batch["run_prefix"]
    failed_rows = [o["manifest_row"] for o in inventory.outcomes(run_id, "failed")]
    table = read_manifest(get_bytes(s3, settings.bucket, batch["manifest_key"]))
    failed_key = f"{prefix}failed.csv"
    put_bytes(s3, settings.bucket, failed_key, retry_csv(table, failed_rows), "text/csv")
    tasks = []
    for group in inventory.groups(run_id):
        task = inventory.registration_task(batch["batch_id"], run_id, group)
        if task:
            tasks.append(
                {
                    "group": group,
                    "task_id": task["task_id"],
                    "status": task["status"],
                    "success_count": task["success_count"],
                    "failure_count": task["failure_count"],
                }
            )
    started = run.get("started_at")
    total_seconds = (dt.datetime.now(dt.UTC) - started).total_seconds() if started else 0.0
    bundles = sorted(
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=settings.bucket, Prefix=f"{prefix}bundles/"
        )
        for obj in page.get("Contents", [])
    )
    summary_key, report_key = f"{prefix}summary.json", f"{prefix}report.md"
    summary = {
        "batch_id": batch["batch_id"],
        "run_id": run_id,
        "source": batch.get("source", run.get("source")),
        "dry_run": dry_run,
        "rows": rows,
        "provisioned": counts.get("provisioned", 0),
        "failed": counts.get("failed", 0),
        "quarantined": counts.get("quarantined", 0),
        "skipped": counts.get("skipped", 0),
        "planned": pending if dry_run else 0,
        "accounted": accounted,
        "reasons": inventory.reason_counts(run_id, "quarantined"),
        "errors": inventory.reason_counts(run_id, "failed"),
        "registration_tasks": tasks,
        "durations": {"total_seconds": round(total_seconds, 3), "stages": inventory.stage_timings(run_id)},
        "files": {
            "bucket": settings.bucket,
            "manifest": batch["manifest_key"],
            "quarantine": f"{prefix}quarantine.csv",
            "preflight": f"{prefix}preflight.json",
            "ledger": f"{prefix}ledger.jsonl",
            "failed": failed_key,
            "summary": summary_key,
            "report": report_key,
            "bundles": bundles,
        },
    }
    put_bytes(s3, settings.bucket, summary_key, json.dumps(summary, indent=2).encode(), "application/json")
    put_bytes(s3, settings.bucket, report_key, render_report(summary).encode("utf-8"), "text/markdown")
    inventory.finish_run(run_id, summary)
    if not accounted:
        raise AccountingError(
            f"run {run_id}: outcomes {counts} do not add up to the manifest's {rows} data rows"
            + (f" ({pending} rows still pending)" if pending and not dry_run else "")
        )
    return summary


# -- registration task bookkeeping (6. register / 7. poll) -----------------------------------------------
def registration_task_for(settings: Settings, batch: dict, group: str) -> str | None:
    """The registration task id already started for this run and group, if any."""
    task = _inventory(settings).registration_task(batch["batch_id"], batch["run_id"], group)
    return task["task_id"] if task else None


def record_registration_task(settings: Settings, batch: dict, group: str, task_id: str) -> None:
    """Remember the registration task started for this run and group (resume instead of starting again)."""
    _inventory(settings).record_registration_task(batch["batch_id"], batch["run_id"], group, task_id)


def record_registration_status(settings: Settings, batch: dict, group: str, registration: dict) -> None:
    """Store the final status of a registration task ({"task_id", "status", "success_count", ...})."""
    _inventory(settings).record_registration_status(batch["batch_id"], batch["run_id"], group, registration)
