"""Drift audit (the audit_drift DAG): the inventory against the registry, for one batch or everything.

`plan_audit` chunks the inventory's devices in scope; `audit_chunk` compares each with what the registry
shows (include.drift_compare); `find_unknown` looks for what the registry has and the inventory does not:
for a batch, the thing names of its manifest (bounded, include.drift_registry); for everything, the things
of the pipeline's thing types and the certificates of the CAs the inventory's devices were signed by.
`report` writes drift.csv and the summary and, in repair mode, updates the inventory from the registry
(never the registry from the inventory: that is manage_devices', on an explicit action).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from include.catalog import Catalog, load_catalog
from include.csv_safety import write_csv
from include.drift_compare import (
    DRIFT_COLUMNS,
    FIX_ADOPT,
    FIX_NONE,
    FIX_UPDATE,
    UNKNOWN_CERTIFICATE,
    UNKNOWN_THING,
    Difference,
    certificate_columns,
    compare,
    current_certificate,
    drift_table,
)
from include.drift_registry import (
    certificates_of_cas,
    serial_attribute,
    things_of_types,
    things_unknown_to_inventory,
)
from include.errors import PipelineError
from include.inventory import Inventory
from include.lifecycle import put_chunks
from include.lifecycle_files import AUDIT_PREFIX, ActionFiles
from include.lifecycle_records import AuditPlan, ChunkDrift, DeviceChunk
from include.lifecycle_registry import Calls, RateLimiter, inspect
from include.lifecycle_store import LifecycleStore
from include.manifest import read_manifest, validate_manifest
from include.run_files import RunFiles
from include.settings import Settings
from include.storage import get_bytes, get_table, object_exists, put_bytes, put_table

CERTIFICATE_ID = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger(__name__)


def _files(settings: Settings, run_id: str) -> ActionFiles:
    return ActionFiles(settings.bucket, run_id, AUDIT_PREFIX)


def plan_audit(
    s3: Any, settings: Settings, *, run_id: str, batch_id: str | None = None, repair: bool = False
) -> AuditPlan:
    """The inventory's devices in scope (provisioned, deleted, failed), in chunks."""
    files = _files(settings, run_id)
    devices = LifecycleStore(Inventory(settings.inventory_url)).in_scope(batch_id or None)
    chunks = put_chunks(s3, settings, files, devices)
    plan = AuditPlan(
        run_id=run_id,
        batch_id=batch_id or None,
        repair=repair,
        devices=devices.num_rows,
        chunks=chunks,
        plan_key=files.plan,
    )
    put_bytes(
        s3, settings.bucket, files.plan, json.dumps(plan.to_xcom(), indent=2).encode(), "application/json"
    )
    return plan


def audit_chunk(
    iot: Any,
    s3: Any,
    settings: Settings,
    plan: AuditPlan,
    chunk: DeviceChunk,
    *,
    rate_limit: float | None = None,
) -> ChunkDrift:
    """Each device of the chunk against the registry; the differences to the chunk's drift file."""
    store = LifecycleStore(Inventory(settings.inventory_url))
    catalog = load_catalog(settings.catalog_path)
    devices = get_table(s3, settings.bucket, chunk.key).to_pylist()
    replaced = store.replaced_certificates(d["thing_name"] for d in devices)
    calls = Calls(iot, RateLimiter(rate_limit))
    differences: list[Difference] = []
    for device in devices:
        known = replaced.get(device["thing_name"], set())
        view = inspect(calls, device["thing_name"], [device["certificate_id"], *sorted(known)])
        differences += compare(device, view, known, catalog)
    key = put_table(
        s3, settings.bucket, _files(settings, plan.run_id).chunk_drift(chunk.index), drift_table(differences)
    )
    return ChunkDrift(
        index=chunk.index,
        devices=len(devices),
        differences=len(differences),
        kinds=dict(Counter(d.kind for d in differences)),
        key=key,
        calls=dict(calls.counts),
    )


def find_unknown(
    iot: Any, s3: Any, settings: Settings, plan: AuditPlan, *, rate_limit: float | None = None
) -> ChunkDrift:
    """Things (and, for everything, certificates) the registry has and the inventory does not know."""
    inventory = Inventory(settings.inventory_url)
    catalog = load_catalog(settings.catalog_path)
    calls = Calls(iot, RateLimiter(rate_limit))
    if plan.batch_id:
        differences = _unknown_in_batch(calls, s3, settings, inventory, catalog, plan)
    else:
        differences = _unknown_anywhere(calls, inventory, catalog, plan)
    key = put_table(s3, settings.bucket, _files(settings, plan.run_id).unknown, drift_table(differences))
    return ChunkDrift(
        index=-1,
        devices=0,
        differences=len(differences),
        kinds=dict(Counter(d.kind for d in differences)),
        key=key,
        calls=dict(calls.counts),
    )


def _adoption(calls: Calls, name: str, thing: dict[str, Any], identity: dict[str, Any] | None) -> Difference:
    """An unknown thing, and the record a repair would give it (none without a model and serial)."""
    view = inspect(calls, name)
    certificate = current_certificate(view, set())
    registry = f"thing of type {thing.get('thingTypeName') or '-'}" + (
        f", certificate {certificate.certificate_id} ({certificate.status})"
        if certificate
        else ", no certificate"
    )
    fix: dict[str, Any] = {}
    if identity is not None:
        fix = {
            "thing_name": name,
            **identity,
            "thing_arn": thing.get("thingArn"),
            **certificate_columns(certificate),
            "issuer": certificate.ca_certificate_id if certificate else None,
        }
    return Difference(
        UNKNOWN_THING,
        name,
        certificate.certificate_id if certificate else None,
        "no record",
        registry,
        "the registry has a thing the inventory does not know"
        + ("" if identity else " (no model and serial to adopt it by)"),
        FIX_ADOPT if identity else FIX_NONE,
        fix,
    )


def _unknown_in_batch(
    calls: Calls, s3: Any, settings: Settings, inventory: Inventory, catalog: Catalog, plan: AuditPlan
) -> list[Difference]:
    manifest_key = RunFiles(settings.bucket, settings.work_prefix, str(plan.batch_id), "-").manifest
    if not object_exists(s3, settings.bucket, manifest_key):
        raise PipelineError(f"batch {plan.batch_id} has no manifest at s3://{settings.bucket}/{manifest_key}")
    accepted = validate_manifest(
        read_manifest(get_bytes(s3, settings.bucket, manifest_key)), catalog
    ).accepted
    identities = accepted.select(["thing_name", "model", "serial_number"])
    unknown = things_unknown_to_inventory(calls.iot, inventory, identities, catalog, calls=calls)
    rows = accepted.select(["row", "thing_name", "model", "serial_number"]).to_pylist()
    by_name = {r["thing_name"]: r for r in rows}
    return [
        _adoption(
            calls,
            name,
            thing,
            {
                "model": by_name[name]["model"],
                "serial_number": by_name[name]["serial_number"],
                "batch_id": plan.batch_id,
                "manifest_row": by_name[name]["row"],
            },
        )
        for name, thing in sorted(unknown.found.items())
    ]


def _identity(catalog: Catalog, thing: dict[str, Any]) -> dict[str, Any] | None:
    """Model and serial of a thing found by listing (its thing type's product, its serial attribute)."""
    attributes = thing.get("attributes") or {}
    products = [p for p in catalog.products.values() if p.thing_type == thing.get("thingTypeName")]
    by_model = [p for p in products if p.model == attributes.get("model")]
    product = (by_model or products or [None])[0]
    serial = attributes.get(serial_attribute(product) or "") if product else None
    if product is None or not serial:
        return None
    return {"model": product.model, "serial_number": serial, "batch_id": "", "manifest_row": 0}


def _unknown_anywhere(
    calls: Calls, inventory: Inventory, catalog: Catalog, plan: AuditPlan
) -> list[Difference]:
    store = LifecycleStore(inventory)
    thing_types = {p.thing_type for p in catalog.products.values() if p.thing_type}
    things = {t["thingName"]: t for t in things_of_types(calls, thing_types)}
    known = store.known_names(things)
    differences = [
        _adoption(calls, name, thing, _identity(catalog, thing))
        for name, thing in sorted(things.items())
        if name not in known
    ]
    seen = {d.certificate_id for d in differences}
    known_certificates = store.known_certificates()
    ca_ids = [issuer for issuer in inventory.devices_by_issuer() if CERTIFICATE_ID.match(issuer)]
    for certificate in certificates_of_cas(calls, ca_ids):
        certificate_id = certificate["certificateId"]
        if certificate_id in known_certificates or certificate_id in seen:
            continue
        holders = [
            o["thingName"]
            for o in calls.pages(
                "list_principal_things_v2", "principalThingObjects", principal=certificate["certificateArn"]
            )
        ]
        differences.append(
            Difference(
                UNKNOWN_CERTIFICATE,
                holders[0] if holders else "",
                certificate_id,
                "not known",
                f"{certificate['status']}, attached to {', '.join(holders) or 'nothing'}",
                "a certificate of the factory CA the inventory does not know",
            )
        )
    return differences


# -- report and repair -----------------------------------------------------------------------------------
def _differences(s3: Any, settings: Settings, keys: Iterable[str]) -> list[dict[str, Any]]:
    """Every chunk's differences; a certificate both a thing's check and the CA listing found unknown is
    one difference (the thing's, which comes first), not two."""
    tables = [get_table(s3, settings.bucket, key) for key in keys]
    rows, unknown = [], set()
    for row in (row for table in tables for row in table.to_pylist()):
        if row["kind"] == UNKNOWN_CERTIFICATE and row["certificate_id"]:
            if row["certificate_id"] in unknown:
                continue
            unknown.add(row["certificate_id"])
        rows.append(row)
    return rows


def repair(settings: Settings, run_id: str, rows: list[dict[str, Any]]) -> dict[str, int]:
    """The inventory updated from the registry: records set (update) and records made (adopt)."""
    store = LifecycleStore(Inventory(settings.inventory_url))
    reason = f"repaired from the registry by audit run {run_id}"
    updates = [
        (r["thing_name"], json.loads(r["fix"]), f"{r['kind']}: {r['detail']} ({reason})")
        for r in rows
        if r["repair"] == FIX_UPDATE
    ]
    adoptions = [json.loads(r["fix"]) for r in rows if r["repair"] == FIX_ADOPT]
    return {
        "updated": store.repair(run_id, updates),
        "adopted": store.adopt(run_id, adoptions, f"adopted from the registry by audit run {run_id}"),
    }


def report(s3: Any, settings: Settings, plan: AuditPlan, chunks: Iterable[ChunkDrift]) -> dict[str, Any]:
    """drift.csv, counts, the summary and report in S3; with plan.repair, the inventory repaired."""
    chunks = list(chunks)
    files = _files(settings, plan.run_id)
    rows = _differences(s3, settings, [c.key for c in chunks])
    put_bytes(
        s3,
        settings.bucket,
        files.drift,
        write_csv(DRIFT_COLUMNS, ([r[c] for c in DRIFT_COLUMNS] for r in rows)),
        "text/csv",
    )
    calls: Counter[str] = Counter()
    for chunk in chunks:
        calls.update(chunk.calls)
    repaired = repair(settings, plan.run_id, rows) if plan.repair else {}
    summary: dict[str, Any] = {
        "run_id": plan.run_id,
        "scope": f"batch {plan.batch_id}" if plan.batch_id else "everything",
        "batch_id": plan.batch_id,
        "devices": plan.devices,
        "differences": len(rows),
        "drift": bool(rows),
        "kinds": dict(sorted(Counter(r["kind"] for r in rows).items())),
        "repair": plan.repair,
        "repairable": sum(1 for r in rows if r["repair"] != FIX_NONE),
        "repaired": repaired,
        "calls": dict(sorted(calls.items())),
        "files": {
            "bucket": settings.bucket,
            "drift": files.drift,
            "summary": files.summary,
            "report": files.report,
        },
    }
    text = render_report(summary, rows)
    put_bytes(s3, settings.bucket, files.summary, json.dumps(summary, indent=2).encode(), "application/json")
    put_bytes(s3, settings.bucket, files.report, text.encode(), "text/markdown")
    log.info("Drift report\n%s", text)
    return summary


def render_report(summary: dict[str, Any], rows: list[dict[str, Any]], limit: int = 50) -> str:
    """The audit's report (Markdown): counts by kind, then the first `limit` differences."""
    lines = [f"# Drift audit — run {summary['run_id']} ({summary['scope']})", ""]
    if not rows:
        lines.append(f"No drift: the inventory's {summary['devices']} devices agree with the registry.")
        return "\n".join(lines) + "\n"
    lines += ["| kind | differences |", "|---|---:|"] + [
        f"| {k} | {n} |" for k, n in summary["kinds"].items()
    ]
    if summary["repair"]:
        lines += ["", f"Repaired in the inventory: {summary['repaired']}."]
    else:
        lines += ["", f"{summary['repairable']} can be repaired in the inventory (run with repair)."]
    lines += [
        "",
        "| kind | thing | certificate | inventory | registry | detail |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows[:limit]:
        cells = [
            row[c] or "" for c in ("kind", "thing_name", "certificate_id", "inventory", "registry", "detail")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > limit:
        lines.append(f"| … | {len(rows) - limit} more in `{summary['files']['drift']}` | | | | |")
    return "\n".join(lines) + "\n"
