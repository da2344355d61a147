"""What the CDF API tells the inventory: a thing provisioned by POST /things, a thing deleted.

A POST /things is a one-row batch of its own (keyed by the SHA-256 of its non-secret identity: template,
thing, certificate), with a run that ends at once, so the device's history reads like any batch's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from typing import Any

from include.inventory import DEVICE_FIELDS, OUTCOME_FIELDS, Inventory
from include.outcomes import ACTION_DONE, DELETE, DEVICE_DELETED, FAILED, PROVISIONED, RUN_FINISHED

SINGLE_RUN_PREFIX = "cdf_thing__"
DELETE_RUN_PREFIX = "cdf_delete__"


def action_id(prefix: str) -> str:
    """An id for one API action: its UTC time and 8 random hex digits (sortable, unguessable enough)."""
    return f"{prefix}{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S.%fZ')}_{secrets.token_hex(4)}"


def _record(**values: Any) -> dict[str, Any]:
    return values


def record_single(
    inventory: Inventory,
    *,
    source: str,
    model: str,
    thing_name: str,
    serial_number: str,
    outcome: str,
    thing_arn: str | None = None,
    certificate_id: str | None = None,
    certificate_arn: str | None = None,
    issuer: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> str:
    """One POST /things: its batch, run, row outcome and device; returns the run id."""
    identity = json.dumps([source, model, thing_name, certificate_id], separators=(",", ":")).encode()
    batch_id = hashlib.sha256(identity).hexdigest()
    run_id = action_id(SINGLE_RUN_PREFIX)
    inventory.record_batch(batch_id, source, "", len(identity))
    inventory.record_run(run_id, batch_id, source, dag_id=None, product=model[:128])
    outcome_values = _record(
        manifest_row=1,
        outcome=outcome,
        reason_code=error_code,
        reason=error_message,
        model=model,
        serial_number=serial_number,
        thing_name=thing_name,
        unit=None,
        param_line=None,
        certificate_id=certificate_id,
    )
    inventory.record_outcomes(run_id, batch_id, [tuple(outcome_values.get(name) for name in OUTCOME_FIELDS)])
    device_values = _record(
        thing_name=thing_name,
        model=model[:128],
        serial_number=serial_number[:128],
        status=PROVISIONED if outcome == PROVISIONED else FAILED,
        thing_arn=thing_arn,
        certificate_id=certificate_id,
        certificate_arn=certificate_arn,
        issuer=issuer,
        manifest_row=1,
        registration_task_id=None,
        error_code=error_code,
        error_message=error_message,
    )
    inventory.record_devices(run_id, batch_id, [tuple(device_values.get(name) for name in DEVICE_FIELDS)])
    inventory.update_run(run_id, rows=1, state=RUN_FINISHED, finished_at=dt.datetime.now(dt.UTC))
    return run_id


def record_deletion(inventory: Inventory, thing_name: str, source: str, steps: list[str]) -> str:
    """The deletion as the lifecycle DAGs record theirs: a finished run, the action log, the device deleted.

    The device keeps its history (certificate id, batch); a later batch may provision it again.
    """
    from include.lifecycle_store import ActionRecord, LifecycleStore

    run_id = action_id(DELETE_RUN_PREFIX)
    now = dt.datetime.now(dt.UTC)
    inventory.record_run(run_id, None, source, dag_id=None)
    device = inventory.device(thing_name)
    if device is not None:
        record = ActionRecord(
            thing_name=thing_name,
            action=DELETE,
            state=ACTION_DONE,
            batch_id=device.get("batch_id"),
            certificate_id=device.get("certificate_id"),
            steps=steps,
            reason=source,
            changes={"status": DEVICE_DELETED, "certificate_status": None},
        )
        LifecycleStore(inventory).record(run_id, [record])
    inventory.update_run(
        run_id,
        rows=int(device is not None),
        state=RUN_FINISHED,
        finished_at=now,
        summary={"deleted": thing_name, "steps": steps},
    )
    return run_id
