"""What every device of a lifecycle chunk shares, and what the inventory alone settles about a device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.catalog import Catalog
from include.lifecycle_records import LifecyclePlan
from include.lifecycle_registry import Calls
from include.lifecycle_steps import ACTIVE, INACTIVE, REVOKED, Backoff, DeviceFailure
from include.lifecycle_store import ActionRecord, LifecycleStore
from include.outcomes import (
    ACTION_FAILED,
    ACTION_UNCHANGED,
    CLAIMED,
    DEACTIVATE,
    DELETE,
    DEVICE_DELETED,
    DEVICE_PROVISIONED,
    REACTIVATE,
    REVOKE,
)

if TYPE_CHECKING:
    from include.lifecycle_rekey import Issued

# The certificate status each action leaves (the device record's certificate_status).
TARGET_STATUS = {DEACTIVATE: INACTIVE, REVOKE: REVOKED, REACTIVATE: ACTIVE}


@dataclass
class ChunkWork:
    """What every device of one chunk shares."""

    plan: LifecyclePlan
    calls: Calls
    store: LifecycleStore
    catalog: Catalog
    backoff: Backoff
    ca_certificate_pem: str = ""
    csrs: dict[str, str] | None = None  # rekey: new device CSRs by thing name or serial number
    issued: dict[str, Issued] = field(default_factory=dict)
    refused: dict[str, DeviceFailure] = field(default_factory=dict)
    interrupted: set[str] = field(default_factory=set)  # devices a died try of this chunk had started

    def record(self, device: dict[str, Any], state: str, **fields: Any) -> ActionRecord:
        return ActionRecord(
            thing_name=device["thing_name"],
            action=self.plan.action,
            state=state,
            batch_id=device["batch_id"],
            certificate_id=fields.pop("certificate_id", device["certificate_id"]),
            **fields,
        )


def refusal(plan: LifecyclePlan, device: dict[str, Any]) -> tuple[str, str] | None:
    """(state, reason) when the inventory alone settles the device, without a call to AWS."""
    status, action = device["status"], plan.action
    if status == CLAIMED:
        return ACTION_FAILED, f"claimed by a provisioning run (status {status}): not touched"
    if action == DELETE:
        if status == DEVICE_DELETED and device["lifecycle_action"] == DELETE:
            return ACTION_UNCHANGED, "already deleted"
        return None
    if status != DEVICE_PROVISIONED:
        return ACTION_FAILED, f"not provisioned (status {status}): nothing to {action}"
    target = TARGET_STATUS.get(action)
    if (
        target
        and target != ACTIVE
        and device["certificate_status"] == target
        and device["lifecycle_action"] == action
    ):
        return ACTION_UNCHANGED, f"certificate already {target}"
    return None
