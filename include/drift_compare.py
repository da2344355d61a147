"""Where the inventory and the registry disagree about one device, and what a repair would set.

Pure functions over an inventory record and its DeviceView (include.lifecycle_registry.inspect). A repair
only ever changes the inventory, to what the registry shows; differences the inventory cannot fix (a
policy missing in AWS, a leftover certificate) are reported with repair "none": changing AWS is
manage_devices' job, on an explicit action.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from include.catalog import Catalog
from include.lifecycle_registry import Certificate, DeviceView
from include.lifecycle_rekey import product_policies
from include.outcomes import DEVICE_DELETED, DEVICE_FAILED, DEVICE_PROVISIONED

ACTIVE = "ACTIVE"
# Kinds of difference (the drift CSV's `kind` column).
THING_MISSING = "thing_missing"  # inventory: provisioned; registry: no thing
CERTIFICATE_MISSING = "certificate_missing"  # inventory: its certificate; registry: none
CERTIFICATE_STATUS = "certificate_status"  # both have the certificate, with different statuses
CERTIFICATE_NOT_ATTACHED = "certificate_not_attached"  # the certificate exists, not on the thing
POLICIES_DIFFER = "policies_differ"  # the certificate's policies are not the product's
UNKNOWN_CERTIFICATE = "unknown_certificate"  # the registry has a certificate the inventory does not know
UNKNOWN_THING = "unknown_thing"  # the registry has a thing (of a pipeline thing type) the inventory lacks
THING_PRESENT = "thing_present"  # inventory: deleted; registry: the thing exists
LEFTOVER = "leftover"  # inventory: deleted or failed; registry: still a certificate or thing of it
KINDS = (
    THING_MISSING,
    CERTIFICATE_MISSING,
    CERTIFICATE_STATUS,
    CERTIFICATE_NOT_ATTACHED,
    POLICIES_DIFFER,
    UNKNOWN_CERTIFICATE,
    UNKNOWN_THING,
    THING_PRESENT,
    LEFTOVER,
)
# What a repair does with a difference.
FIX_NONE, FIX_UPDATE, FIX_ADOPT = "none", "update", "adopt"
DRIFT_COLUMNS = ("kind", "thing_name", "certificate_id", "inventory", "registry", "detail", "repair", "fix")
DRIFT_SCHEMA = pa.schema([(name, pa.string()) for name in DRIFT_COLUMNS])


@dataclass
class Difference:
    """One disagreement; `fix` holds the device record's new columns (update) or whole record (adopt)."""

    kind: str
    thing_name: str
    certificate_id: str | None
    inventory: str
    registry: str
    detail: str
    repair: str = FIX_NONE
    fix: dict[str, Any] = field(default_factory=dict)

    def row(self) -> tuple:
        fix = json.dumps(self.fix, sort_keys=True) if self.fix else ""
        return (
            self.kind,
            self.thing_name,
            self.certificate_id,
            self.inventory,
            self.registry,
            self.detail,
            self.repair,
            fix,
        )


def drift_table(differences: list[Difference]) -> pa.Table:
    columns = (
        list(zip(*(d.row() for d in differences), strict=True)) if differences else [[]] * len(DRIFT_COLUMNS)
    )
    return pa.table({n: pa.array(list(c), pa.string()) for n, c in zip(DRIFT_COLUMNS, columns, strict=True)})


def current_certificate(view: DeviceView, known: set[str]) -> Certificate | None:
    """The certificate a record should name when the inventory's is gone: the one ACTIVE (or only) attached
    certificate the inventory does not know as replaced."""
    candidates = [c for c in view.attached_certificates if c.exists and c.certificate_id not in known]
    active = [c for c in candidates if c.status == ACTIVE]
    chosen = active if len(active) == 1 else candidates
    return chosen[0] if len(chosen) == 1 else None


def certificate_columns(certificate: Certificate | None) -> dict[str, Any]:
    if certificate is None:
        return {"certificate_id": None, "certificate_arn": None, "certificate_status": None}
    return {
        "certificate_id": certificate.certificate_id,
        "certificate_arn": certificate.arn,
        "certificate_status": certificate.status,
    }


def compare(
    device: dict[str, Any], view: DeviceView, replaced: set[str], catalog: Catalog
) -> list[Difference]:
    """The differences of one inventory device from the registry (none: they agree)."""
    status = device["status"]
    if status == DEVICE_PROVISIONED:
        return _provisioned(device, view, replaced, catalog)
    leftovers = [c for c in view.certificates.values() if c.exists]
    name, found = device["thing_name"], []
    if status == DEVICE_DELETED and view.thing_exists:
        certificate = current_certificate(view, replaced)
        fix = {
            "status": DEVICE_PROVISIONED,
            "thing_arn": device["thing_arn"],
            **certificate_columns(certificate),
        }
        found.append(
            Difference(
                THING_PRESENT,
                name,
                fix["certificate_id"],
                "deleted",
                "thing exists",
                "the registry has the thing the inventory says was deleted",
                FIX_UPDATE,
                fix,
            )
        )
    elif status in (DEVICE_DELETED, DEVICE_FAILED) and (view.thing_exists or leftovers):
        what = ["thing"] if view.thing_exists else []
        what += [f"certificate {c.certificate_id} ({c.status})" for c in leftovers]
        found.append(
            Difference(
                LEFTOVER,
                name,
                leftovers[0].certificate_id if leftovers else None,
                status,
                ", ".join(what),
                "left in AWS IoT: remove with manage_devices (action delete"
                + (", outcome failed)" if status == DEVICE_FAILED else ")"),
            )
        )
    return found


def _provisioned(
    device: dict[str, Any], view: DeviceView, replaced: set[str], catalog: Catalog
) -> list[Difference]:
    name, current = device["thing_name"], device["certificate_id"]
    expected = device["certificate_status"] or ACTIVE
    if not view.thing_exists:
        leftover = view.certificates.get(current or "")
        detail = "the thing is gone"
        if leftover is not None and leftover.exists:
            holders = ", ".join(leftover.things) or "nothing"
            detail += f"; its certificate {current} is still there ({leftover.status}, attached to {holders})"
        fix = {"status": DEVICE_DELETED, "certificate_status": None}
        return [Difference(THING_MISSING, name, current, "provisioned", "no thing", detail, FIX_UPDATE, fix)]
    found: list[Difference] = []
    certificate = view.certificates.get(current or "")
    known = replaced | {current or ""}
    if certificate is None or not certificate.exists:
        adopt = current_certificate(view, known)
        fix = certificate_columns(adopt) if adopt is not None else {}
        registry = f"attached: {adopt.certificate_id} ({adopt.status})" if adopt else "no certificate of it"
        found.append(
            Difference(
                CERTIFICATE_MISSING,
                name,
                current,
                f"certificate {current}",
                registry,
                "the inventory's certificate is not in AWS IoT",
                FIX_UPDATE if fix else FIX_NONE,
                fix,
            )
        )
    else:
        if certificate.arn not in view.principals:
            found.append(
                Difference(
                    CERTIFICATE_NOT_ATTACHED,
                    name,
                    current,
                    f"attached to {name}",
                    f"attached to {', '.join(certificate.things) or 'nothing'}",
                    "the certificate exists but is not on the thing",
                )
            )
        if certificate.status != expected:
            found.append(
                Difference(
                    CERTIFICATE_STATUS,
                    name,
                    current,
                    expected,
                    str(certificate.status),
                    "the certificate's status differs",
                    FIX_UPDATE,
                    {"certificate_status": certificate.status},
                )
            )
        wanted = set(product_policies(catalog, device["model"]))
        attached = set(certificate.policies)
        if wanted and attached != wanted:
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(sorted(wanted - attached))}" if wanted - attached else "",
                    f"extra {', '.join(sorted(attached - wanted))}" if attached - wanted else "",
                )
                if part
            )
            found.append(
                Difference(
                    POLICIES_DIFFER,
                    name,
                    current,
                    ", ".join(sorted(wanted)),
                    ", ".join(sorted(attached)) or "none",
                    detail,
                )
            )
    for other in view.attached_certificates:
        if other.certificate_id == current or not other.exists:
            continue
        if other.certificate_id in replaced:
            if other.status == ACTIVE:
                found.append(
                    Difference(
                        CERTIFICATE_STATUS,
                        name,
                        other.certificate_id,
                        "replaced (INACTIVE)",
                        ACTIVE,
                        "a certificate a rekey replaced is active again",
                    )
                )
        elif certificate is not None and certificate.exists:
            found.append(
                Difference(
                    UNKNOWN_CERTIFICATE,
                    name,
                    other.certificate_id,
                    "not known",
                    f"attached ({other.status})",
                    "the thing holds a certificate the inventory does not know",
                )
            )
    return found
