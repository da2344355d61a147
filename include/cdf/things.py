"""GET, DELETE and PATCH of one thing: its certificates, policies and groups; the safe delete order."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from include.aws_errors import error_code
from include.cdf.aws import aws_errors
from include.cdf.errors import BadRequest, Unavailable
from include.cdf.inventory_records import record_deletion
from include.inventory import Inventory

THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
# PATCH accepts CDF's spec values (its clients send IN_ACTIVE) and its code's full enum.
STATUS_ALIASES = {"IN_ACTIVE": "INACTIVE"}
CERTIFICATE_STATUSES = (
    "ACTIVE",
    "INACTIVE",
    "REVOKED",
    "PENDING_TRANSFER",
    "REGISTER_INACTIVE",
    "PENDING_ACTIVATION",
)
# AWS answers these while a detach it has just acknowledged has not reached every replica yet.
CONFLICT_CODES = frozenset(
    {"DeleteConflictException", "CertificateStateException", "InvalidRequestException"}
)
RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


def check_thing_name(name: str) -> str:
    if not THING_NAME.match(name):
        shown = name[:60] + ("..." if len(name) > 60 else "")
        raise BadRequest(
            f"thingName {shown!r}: may hold letters, digits, ':', '_' and '-' (1 to 128 characters)"
        )
    return name


def _pages(iot: Any, operation: str, key: str, **kwargs: Any) -> Iterator[Any]:
    for page in iot.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def _describe_thing(iot: Any, name: str) -> dict[str, Any]:
    with aws_errors(f"thing {name}", not_found=f"thing {name} does not exist"):
        return iot.describe_thing(thingName=check_thing_name(name))


def _certificate_principals(iot: Any, name: str) -> list[str]:
    with aws_errors(f"ListThingPrincipals of {name}"):
        return [
            p for p in _pages(iot, "list_thing_principals", "principals", thingName=name) if ":cert/" in p
        ]


def describe(iot: Any, name: str) -> dict[str, Any]:
    """The thing as CDF's GET /things/{thingName} shows it, plus thing type, real statuses, parent groups."""
    thing = _describe_thing(iot, name)
    certificates, policies = [], {}
    with aws_errors(f"describing the certificates and policies of {name}"):
        for principal in _certificate_principals(iot, name):
            described = iot.describe_certificate(certificateId=principal.rsplit("/", 1)[-1])[
                "certificateDescription"
            ]
            certificates.append(
                {
                    "certificateId": described["certificateId"],
                    "arn": described["certificateArn"],
                    "certificateStatus": described["status"],
                    "certificatePem": described["certificatePem"],
                }
            )
            for attached in _pages(iot, "list_attached_policies", "policies", target=principal):
                if attached["policyName"] not in policies:
                    found = iot.get_policy(policyName=attached["policyName"])
                    policies[attached["policyName"]] = {
                        "policyName": found["policyName"],
                        "arn": found["policyArn"],
                        "policyDocument": _parsed(found.get("policyDocument")),
                    }
    result: dict[str, Any] = {
        "thingName": thing["thingName"],
        "arn": thing["thingArn"],
        "attributes": thing.get("attributes") or {},
        "certificates": certificates,
        "policies": list(policies.values()),
        "groups": _groups(iot, name),
    }
    if thing.get("thingTypeName"):
        result["thingType"] = thing["thingTypeName"]
    return result


def _parsed(document: str | None) -> Any:
    try:
        return json.loads(document or "{}")
    except ValueError:
        return document


def _groups(iot: Any, name: str) -> list[dict[str, Any]]:
    """The thing's groups, then their ancestors (CDF listed only direct ones); each once."""
    found: dict[str, dict[str, Any]] = {}
    with aws_errors(f"describing the thing groups of {name}"):
        direct = [
            g["groupName"] for g in _pages(iot, "list_thing_groups_for_thing", "thingGroups", thingName=name)
        ]
        queue = [(group, False) for group in direct]
        while queue:
            group, inherited = queue.pop(0)
            if group in found:
                continue
            described = iot.describe_thing_group(thingGroupName=group)
            metadata = described.get("thingGroupMetadata") or {}
            properties = described.get("thingGroupProperties") or {}
            entry = {
                "groupName": described["thingGroupName"],
                "arn": described["thingGroupArn"],
                "attributes": (properties.get("attributePayload") or {}).get("attributes") or {},
                "inherited": inherited,
            }
            if metadata.get("parentGroupName"):
                entry["parentGroupName"] = metadata["parentGroupName"]
                queue.append((metadata["parentGroupName"], True))
            found[group] = entry
    return list(found.values())


def _retrying(what: str, call: Callable[[], Any], codes: frozenset[str] = CONFLICT_CODES) -> Any:
    """A call AWS may refuse for a moment after the detaches before it (eventual consistency)."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return call()
        except Exception as exc:
            code = error_code(exc)
            if code in codes and delay is not None:
                time.sleep(delay)
                continue
            if code in codes:
                raise Unavailable(
                    f"{what}: AWS still answers {code} after {len(RETRY_DELAYS)} retries; try again later"
                ) from None
            with aws_errors(what):
                raise
    raise AssertionError("unreachable")


def delete(iot: Any, inventory: Inventory, name: str) -> list[str]:
    """Deactivate, detach policies, detach principal, delete the certificate no other thing holds, delete
    the thing; the inventory records the deletion (with these steps, which are returned). A certificate
    another thing holds is only detached from this one."""
    _describe_thing(iot, name)
    steps: list[str] = []
    for principal in _certificate_principals(iot, name):
        certificate_id = principal.rsplit("/", 1)[-1]
        with aws_errors(f"ListPrincipalThings of certificate {certificate_id}"):
            holders = [
                t for t in _pages(iot, "list_principal_things", "things", principal=principal) if t != name
            ]
        if not holders:
            with aws_errors(f"certificate {certificate_id}"):
                status = iot.describe_certificate(certificateId=certificate_id)["certificateDescription"][
                    "status"
                ]
                if status == "ACTIVE":
                    iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE")
                    steps.append(f"deactivate certificate {certificate_id}")
                for attached in list(_pages(iot, "list_attached_policies", "policies", target=principal)):
                    iot.detach_policy(policyName=attached["policyName"], target=principal)
                    steps.append(f"detach policy {attached['policyName']} from {certificate_id}")
        with aws_errors(f"DetachThingPrincipal {certificate_id} from {name}"):
            iot.detach_thing_principal(thingName=name, principal=principal)
        steps.append(f"detach certificate {certificate_id} from thing {name}")
        if not holders:
            _retrying(
                f"DeleteCertificate {certificate_id}",
                lambda certificate_id=certificate_id: iot.delete_certificate(certificateId=certificate_id),
            )
            steps.append(f"delete certificate {certificate_id}")
    _retrying(f"DeleteThing {name}", lambda: iot.delete_thing(thingName=name))
    steps.append(f"delete thing {name}")
    record_deletion(inventory, name, f"cdf-api DELETE /things/{name}", steps)
    return steps


def set_certificate_status(iot: Any, name: str, status: Any) -> list[str]:
    """Every certificate of the thing to `status` (IN_ACTIVE read as INACTIVE); the ids changed."""
    if not isinstance(status, str):
        raise BadRequest("certificateStatus: is required and must be a string")
    wanted = STATUS_ALIASES.get(status, status)
    if wanted not in CERTIFICATE_STATUSES:
        accepted = ", ".join((*CERTIFICATE_STATUSES, *STATUS_ALIASES))
        raise BadRequest(f"certificateStatus {status[:40]!r}: must be one of {accepted}")
    _describe_thing(iot, name)
    changed = []
    for principal in _certificate_principals(iot, name):
        certificate_id = principal.rsplit("/", 1)[-1]
        with aws_errors(f"UpdateCertificate {certificate_id} to {wanted}"):
            iot.update_certificate(certificateId=certificate_id, newStatus=wanted)
        changed.append(certificate_id)
    return changed
