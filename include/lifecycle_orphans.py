"""What failed bulk lines left behind, after reconcile: listed, then removed in the safe order, or kept.

AWS does not roll back a line whose later resource failed: a certificate registered, a thing created, a
policy attached, then the line failed, and nobody owns what was made. `clean_orphans` inspects each failed
line's thing and certificate. What the line made and nobody else holds is removed like a deleted device
(deactivate, detach policies, detach, delete the certificate, delete the thing); a thing that holds other
principals too is kept, and only the line's certificate is taken off it. With ``keep`` nothing changes:
the same list is reported. Every line's result goes to the inventory's action log under the provisioning
run, so the summary (and a rerun) can tell.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from include.inventory import Inventory
from include.lifecycle_registry import Calls, DeviceView, RateLimiter, certificate_id_of, inspect
from include.lifecycle_steps import Backoff, DeviceFailure, Outcome, Step, plan_steps, retire_steps, run_steps
from include.lifecycle_store import ActionRecord, LifecycleStore
from include.outcomes import (
    ACTION_DONE,
    ACTION_FAILED,
    ACTION_PLANNED,
    ACTION_STARTED,
    ACTION_UNCHANGED,
    CLEAN_ORPHANS,
    DELETE,
)
from include.run_files import safe_key_part
from include.storage import put_bytes

CLEAN, KEEP = "clean", "keep"  # the setting (PIPELINE_ORPHANS): what happens to what failed lines left


@dataclass(frozen=True)
class FailedLine:
    """A failed line of a registration task: its thing and the certificate the ledger expected (if known)."""

    thing_name: str
    certificate_id: str | None = None
    batch_id: str | None = None


@dataclass
class OrphanReport:
    """For the summary: what failed lines left and what became of it."""

    policy: str
    lines: int = 0
    with_orphans: int = 0
    cleaned: int = 0
    kept: int = 0
    failed: int = 0
    retries: int = 0
    resources: list[dict[str, Any]] = field(default_factory=list)  # one per line that left something
    calls: dict[str, int] = field(default_factory=dict)

    def to_summary(self) -> dict[str, Any]:
        """The part the batch summary shows (resources listed up to 100; the action log has them all)."""
        shown = {k: v for k, v in self.__dict__.items() if k not in ("resources", "calls")}
        return {**shown, "resources": self.resources[:100]}


def orphan_steps(view: DeviceView, certificate_id: str | None) -> list[Step]:
    """What to remove: everything of the line when its thing holds nothing else, else only its certificate."""
    foreign = [p for p in view.principals if certificate_id_of(p) != certificate_id]
    if not foreign:
        return plan_steps(DELETE, view, certificate_id)
    certificate = view.certificates.get(certificate_id or "")
    return retire_steps(view, certificate) if certificate is not None and certificate.exists else []


def _left(view: DeviceView, certificate_id: str | None) -> list[str]:
    left = [f"thing {view.thing_name}"] if view.thing_exists else []
    for certificate in view.certificates.values():
        if certificate.exists:
            policies = f", policies {', '.join(certificate.policies)}" if certificate.policies else ""
            left.append(f"certificate {certificate.certificate_id} ({certificate.status}{policies})")
    return left


def clean_orphans(
    iot: Any,
    failed_lines: Iterable[FailedLine],
    *,
    inventory: Inventory,
    run_id: str,
    keep: bool = False,
    rate_limit: float | None = None,
    backoff: Backoff | None = None,
) -> OrphanReport:
    """List what each failed line left in AWS IoT and remove it (or, with `keep`, only report it).

    Lines this run already settled (a retried reconcile) are skipped. A transient AWS error propagates
    after the lines before it are recorded, so a retry resumes.
    """
    lines = list(failed_lines)
    store = LifecycleStore(inventory)
    calls = Calls(iot, RateLimiter(rate_limit))
    backoff = backoff or Backoff()
    report = OrphanReport(policy=KEEP if keep else CLEAN, lines=len(lines))
    settled = store.final_states(run_id, [line.thing_name for line in lines])
    for line in lines:
        if line.thing_name in settled:
            continue
        view = inspect(calls, line.thing_name, [line.certificate_id])
        left = _left(view, line.certificate_id)
        record = ActionRecord(
            line.thing_name, CLEAN_ORPHANS, ACTION_UNCHANGED, line.batch_id, line.certificate_id
        )
        if left:
            report.with_orphans += 1
            steps = orphan_steps(view, line.certificate_id)
            outcome = Outcome()
            if keep:
                record.state, record.steps = ACTION_PLANNED, [s.text for s in steps]
                record.reason = f"kept (orphans setting {KEEP}): {', '.join(left)}"
                report.kept += 1
            else:
                store.record(
                    run_id, [ActionRecord(line.thing_name, CLEAN_ORPHANS, ACTION_STARTED, line.batch_id)]
                )
                try:
                    run_steps(calls, steps, backoff, outcome)
                    record.state, record.reason = (
                        ACTION_DONE,
                        f"removed what the failed line left: {', '.join(left)}",
                    )
                    record.changes = {"certificate_status": None}
                    report.cleaned += 1
                except DeviceFailure as failure:
                    record.state, record.error_code, record.reason = (
                        ACTION_FAILED,
                        failure.code,
                        failure.reason,
                    )
                    report.failed += 1
                record.steps, record.retries = outcome.done, outcome.retries
                report.retries += outcome.retries
            report.resources.append(
                {"thing_name": line.thing_name, "left": left, "state": record.state, "steps": record.steps}
            )
        store.record(run_id, [record])
    report.calls = dict(calls.counts)
    return report


def orphans_key(run_prefix: str, unit: str) -> str:
    """Where a unit's orphan report goes: beside the run's other files (include.run_files' prefix)."""
    return f"{run_prefix}orphans/{safe_key_part(unit)}.json"


def clean_after_reconcile(
    iot: Any,
    s3: Any,
    *,
    inventory: Inventory,
    bucket: str,
    run_prefix: str,
    run_id: str,
    unit: str,
    task_id: str | None,
    keep: bool = False,
) -> OrphanReport:
    """What the registration task's failed lines left, cleaned (or kept), reported to the unit's file.

    The whole of the provisioning side: call it after a unit is reconciled (its failed devices are in the
    inventory with the task's id); `orphans_summary` gives the batch summary its part.
    """
    lines = [FailedLine(*row) for row in LifecycleStore(inventory).failed_of_task(task_id)] if task_id else []
    report = clean_orphans(iot, lines, inventory=inventory, run_id=run_id, keep=keep)
    body = json.dumps({"unit": unit, "task_id": task_id, **report.to_summary(), "calls": report.calls})
    put_bytes(s3, bucket, orphans_key(run_prefix, unit), body.encode(), "application/json")
    return report


def orphans_summary(s3: Any, bucket: str, run_prefix: str, policy: str) -> dict[str, Any]:
    """The batch summary's `orphans`: the setting, and the units' counts added up."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{run_prefix}orphans/")
    keys = sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))
    total: dict[str, Any] = {
        "policy": policy,
        "lines": 0,
        "with_orphans": 0,
        "cleaned": 0,
        "kept": 0,
        "failed": 0,
    }
    for key in keys:
        unit = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        for name in ("lines", "with_orphans", "cleaned", "kept", "failed"):
            total[name] += int(unit.get(name) or 0)
    return {**total, "reports": keys}
