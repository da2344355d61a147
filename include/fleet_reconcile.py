"""reconcile_fleet_devices' work: the things a fleet template made, recorded in the inventory as batches are.

Which things: ListThings filtered by the product's thing type and the attribute every fleet template
stamps (provisioningTemplate = the template's name), 250 per page. The things the inventory already knows
(provisioned, or claimed by a run) are counted as skipped (already_provisioned, claimed_by_run) and not
looked at again, so an hourly run over a fleet that did not change makes one call per 250 things and
writes nothing. At most `max_devices` new things are taken per run (their principals: one
ListThingPrincipals each); the rest are `deferred` to the next run.

Each new thing is one row of a synthetic run (inventory run id `<DAG run id>:<model>`, batch id the
SHA-256 of `fleet:<template>:<that run id>`, since there is no manifest whose content could name it):
`provisioned` with its thing ARN and certificate (issuer `aws`: AWS IoT issued it over MQTT), or
`quarantined` when the thing has no certificate, several, or no serial number, or `failed` when AWS says
the thing is gone. The rows' devices.csv is the batch's manifest in S3. A retried run rewrites its own
rows; a device is never recorded twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from include.aws_errors import error_code, is_not_found
from include.csv_safety import write_csv
from include.errors import AccountingError
from include.fleet_catalog import SERIAL_ATTRIBUTE, TEMPLATE_ATTRIBUTE, FleetProduct, fleet_product_of
from include.fleet_files import FleetFiles
from include.inventory import RESULT_FIELDS, Inventory
from include.outcomes import (
    ALREADY_PROVISIONED,
    CLAIMED,
    CLAIMED_BY_RUN,
    DEVICE_PROVISIONED,
    FAILED,
    OUTCOMES,
    QUARANTINED,
    RUN_FINISHED,
    SKIPPED,
)
from include.settings import Settings
from include.storage import put_bytes

LIST_PAGE = 250  # ListThings' largest page
DEFAULT_MAX_DEVICES = 10_000
ISSUER = "aws"  # fleet devices get their certificates from AWS IoT (CreateKeysAndCertificate, ...FromCsr)
NO_CERTIFICATE = "no_certificate"
SEVERAL_CERTIFICATES = "several_certificates"
NO_SERIAL_NUMBER = "no_serial_number"
# devices.csv: a row's place, its device, and what became of it (outcome before the inventory's checks).
DEVICES_COLUMNS = (
    "manifest_row",
    "thing_name",
    "serial_number",
    "model",
    "status",
    "error_code",
    "certificate_id",
    "certificate_arn",
    "thing_arn",
)


def inventory_run_id(run_id: str, model: str) -> str:
    """The synthetic run of one product in one DAG run (one row numbering per product)."""
    return f"{run_id}:{model}"


def fleet_batch_id(template_name: str, run_id: str) -> str:
    return hashlib.sha256(f"fleet:{template_name}:{run_id}".encode()).hexdigest()


def fleet_things(iot: Any, product: FleetProduct) -> list[dict[str, Any]]:
    """Every thing the product's template made (ListThings by type and template attribute), by name."""
    query: dict[str, Any] = {
        "attributeName": TEMPLATE_ATTRIBUTE,
        "attributeValue": product.template_name,
        "maxResults": LIST_PAGE,
    }
    if product.thing_type:
        query["thingTypeName"] = product.thing_type
    things: dict[str, dict[str, Any]] = {}
    for page in iot.get_paginator("list_things").paginate(**query):
        for thing in page.get("things", []):
            things.setdefault(thing["thingName"], thing)  # a page boundary may repeat one
    return [things[name] for name in sorted(things)]


def reconcile_product(
    iot: Any,
    s3: Any,
    settings: Settings,
    model: str,
    *,
    run_id: str,
    dag_id: str | None = None,
    max_devices: int = DEFAULT_MAX_DEVICES,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Record the devices of one fleet product that provisioned themselves; its summary."""
    product = fleet_product_of(settings.catalog_path, model)
    inventory = Inventory(settings.inventory_url)
    own_run = inventory_run_id(run_id, model)
    things = fleet_things(iot, product)
    states = inventory.device_states(t["thingName"] for t in things)
    # A failed or deleted record does not hold the device, and this run's own rows are its to rewrite.
    held = {
        name: status
        for name, (status, holder) in states.items()
        if status in (DEVICE_PROVISIONED, CLAIMED) and holder != own_run
    }
    new = [t for t in things if t["thingName"] not in held]
    taken = new[:max_devices]
    batch_id = fleet_batch_id(product.template_name, own_run)
    summary = _summary(product, own_run, batch_id, len(things), len(new) - len(taken), held, dry_run)
    if dry_run or not taken:
        summary.update(rows=len(held) + len(taken), planned=len(taken) if dry_run else 0)
        return _accounted(summary)
    rows = [_row(iot, product, index, thing) for index, thing in enumerate(taken, start=1)]
    files = FleetFiles(settings.bucket, settings.work_prefix, product.model)
    manifest = write_csv(DEVICES_COLUMNS, ([row[c] for c in DEVICES_COLUMNS] for row in rows))
    source = f"fleet:{product.template_name}"
    put_bytes(s3, settings.bucket, files.reconcile_devices(own_run), manifest, "text/csv")
    inventory.record_batch(batch_id, source, files.reconcile_devices(own_run), len(manifest))
    inventory.record_run(
        own_run, batch_id, source, dag_id=dag_id, product=model, dry_run=False, max_devices=max_devices
    )
    counts = inventory.record_found_devices(
        own_run, batch_id, (tuple(r[f] for f in RESULT_FIELDS) for r in rows)
    )
    summary.update(rows=len(held) + len(rows))
    for outcome in OUTCOMES:
        summary[outcome] += counts.get(outcome, 0)
    summary["reasons"] = inventory.reason_counts(own_run, QUARANTINED)
    summary["errors"] = inventory.reason_counts(own_run, FAILED)
    for code, count in inventory.reason_counts(own_run, SKIPPED).items():
        summary["skip_reasons"][code] = summary["skip_reasons"].get(code, 0) + count
    summary["files"] = {"bucket": settings.bucket, "devices": files.reconcile_devices(own_run)}
    summary["files"]["summary"] = files.reconcile_summary(own_run)
    summary = _accounted(summary)
    put_bytes(
        s3,
        settings.bucket,
        files.reconcile_summary(own_run),
        json.dumps(summary, indent=2).encode(),
        "application/json",
    )
    inventory.update_run(
        own_run, rows=len(rows), state=RUN_FINISHED, finished_at=dt.datetime.now(dt.UTC), summary=summary
    )
    if not summary["accounted"]:  # as a batch's summary: nothing may be lost silently
        found = {o: summary[o] for o in OUTCOMES}
        raise AccountingError(
            f"fleet reconcile {own_run}: outcomes {found} and {summary['deferred']} deferred do not add up "
            f"to the {summary['found']} things found"
        )
    return summary


def _summary(
    product: FleetProduct,
    run_id: str,
    batch_id: str,
    found: int,
    deferred: int,
    held: dict[str, str],
    dry_run: bool,
) -> dict[str, Any]:
    """The counts before this run records anything: what the inventory already holds is skipped."""
    skip_reasons: dict[str, int] = {}
    for status in held.values():
        reason = ALREADY_PROVISIONED if status == DEVICE_PROVISIONED else CLAIMED_BY_RUN
        skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    return {
        "product": product.model,
        "template_name": product.template_name,
        "run_id": run_id,
        "batch_id": batch_id,
        "source": f"fleet:{product.template_name}",
        "dry_run": dry_run,
        "found": found,
        "rows": 0,
        **{outcome: 0 for outcome in OUTCOMES},
        SKIPPED: len(held),
        "planned": 0,
        "deferred": deferred,
        "reasons": {},
        "skip_reasons": skip_reasons,
        "errors": {},
        "files": {},
    }


def _accounted(summary: dict[str, Any]) -> dict[str, Any]:
    """Every thing found is a row with one outcome (or planned, in a dry run), or deferred to the next run."""
    outcomes = sum(summary[o] for o in OUTCOMES) + summary["planned"]
    summary["accounted"] = (
        outcomes == summary["rows"] and summary["rows"] + summary["deferred"] == summary["found"]
    )
    return summary


def _row(iot: Any, product: FleetProduct, index: int, thing: dict[str, Any]) -> dict[str, Any]:
    """One new thing as a row: its certificate from its principals, or why it cannot be recorded."""
    name = thing["thingName"]
    serial = (thing.get("attributes") or {}).get(SERIAL_ATTRIBUTE) or None
    row: dict[str, Any] = {
        "thing_name": name,
        "model": product.model,
        "serial_number": serial,
        "status": DEVICE_PROVISIONED,
        "thing_arn": thing.get("thingArn"),
        "certificate_id": None,
        "certificate_arn": None,
        "issuer": ISSUER,
        "manifest_row": index,
        "registration_task_id": None,
        "error_code": None,
        "error_message": None,
        "unit": product.template_name,  # what registered it: the fleet template (a batch's: its unit)
        "param_line": None,
    }
    try:
        pages = iot.get_paginator("list_thing_principals").paginate(thingName=name)
        certificates = [p for page in pages for p in page["principals"] if ":cert/" in p]
    except Exception as exc:
        if not is_not_found(exc):
            raise  # throttling beyond botocore's retries, 5xx: Airflow retries the task
        return {
            **row,
            "status": FAILED,
            "error_code": error_code(exc),
            "error_message": f"thing {name} is gone",
        }
    if len(certificates) == 1:
        row.update(certificate_arn=certificates[0], certificate_id=certificates[0].rsplit("/", 1)[1])
    problem = _problem(name, serial, certificates)
    if problem is not None:
        row.update(status=QUARANTINED, error_code=problem[0], error_message=problem[1])
    return row


def _problem(name: str, serial: str | None, certificates: list[str]) -> tuple[str, str] | None:
    if not certificates:
        return NO_CERTIFICATE, f"thing {name} has no certificate attached: its provisioning did not finish"
    if len(certificates) > 1:
        ids = ", ".join(c.rsplit("/", 1)[1][:12] + "…" for c in certificates)
        return (
            SEVERAL_CERTIFICATES,
            f"thing {name} has {len(certificates)} certificates ({ids}): the device provisioned twice; keep "
            "one (manage_devices) and it is recorded on the next run",
        )
    if not serial:
        return NO_SERIAL_NUMBER, f"thing {name} has no {SERIAL_ATTRIBUTE} attribute"
    return None


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of every product's: their counts added up, each product's own under `products`."""
    totals: dict[str, Any] = {
        key: sum(s[key] for s in summaries) for key in ("found", "rows", "planned", "deferred")
    }
    for outcome in OUTCOMES:
        totals[outcome] = sum(s[outcome] for s in summaries)
    for key in ("reasons", "skip_reasons", "errors"):
        merged: dict[str, int] = {}
        for s in summaries:
            for code, count in s[key].items():
                merged[code] = merged.get(code, 0) + count
        totals[key] = merged
    totals["accounted"] = all(s["accounted"] for s in summaries)
    totals["dry_run"] = any(s["dry_run"] for s in summaries)
    totals["products"] = {s["product"]: s for s in summaries}
    return totals
