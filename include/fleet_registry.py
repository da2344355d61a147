"""What prepare_fleet_claim asks and changes in AWS IoT: prerequisites, fleet template, claim policy."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from include.errors import CatalogError
from include.fleet_catalog import FleetProduct
from include.prerequisites import _ca_problems, _described

MAX_VERSIONS = 5  # per provisioning template and per policy (AWS IoT quotas)
HOOK_PAYLOAD_VERSION = "2020-04-01"  # the only payload version AWS IoT documents for provisioning hooks
CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
WOULD_CREATE, WOULD_UPDATE = "would create", "would update"  # what a dry run reports


@dataclass(frozen=True)
class Change:
    """What ensuring one resource did (or, in a dry run, would do): created, updated or unchanged."""

    action: str
    arn: str | None = None
    version: int | str | None = None
    detail: str = ""


def prerequisite_problems(iot: Any, product: FleetProduct, ca_certificate_pem: str) -> list[str]:
    """What the template's devices need that AWS IoT lacks, and the factory CA that signs the claim."""
    problems = []
    checks: list[tuple[str, str, Callable[..., Any], dict[str, str]]] = []
    if product.thing_type:
        checks.append(
            ("thing type", product.thing_type, iot.describe_thing_type, {"thingTypeName": product.thing_type})
        )
    checks += [
        ("thing group", g, iot.describe_thing_group, {"thingGroupName": g}) for g in product.thing_groups
    ]
    checks += [("policy", p, iot.get_policy, {"policyName": p}) for p in product.policies]
    for kind, name, call, kwargs in checks:
        found = _described(call, **kwargs)
        if found is None:
            problems.append(f"{kind} {name} (product {product.model}) does not exist in AWS IoT")
        elif kind == "thing type" and (found.get("thingTypeMetadata") or {}).get("deprecated"):
            problems.append(f"thing type {name} (product {product.model}) is deprecated")
    return problems + _ca_problems(iot, ca_certificate_pem)


def _same_json(a: str, b: str) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except (TypeError, ValueError):
        return False


def _hook(product: FleetProduct) -> dict[str, str] | None:
    if product.pre_provisioning_hook is None:
        return None
    return {"targetArn": product.pre_provisioning_hook, "payloadVersion": HOOK_PAYLOAD_VERSION}


def ensure_template(iot: Any, product: FleetProduct, body: str, role_arn: str, *, dry_run: bool) -> Change:
    """The product's fleet provisioning template, enabled, with this body (its default version), role and
    hook: created, or updated in place (a new default version when the body changed)."""
    name = product.template_name
    described = _described(iot.describe_provisioning_template, templateName=name)
    if described is None:
        if dry_run:
            return Change(WOULD_CREATE, detail=f"create fleet provisioning template {name}")
        hook = _hook(product)
        extra: dict[str, Any] = {"preProvisioningHook": hook} if hook else {}
        created = iot.create_provisioning_template(
            templateName=name,
            description=f"Fleet provisioning by claim of {product.model}",
            templateBody=body,
            enabled=True,
            provisioningRoleArn=role_arn,
            type="FLEET_PROVISIONING",
            tags=[{"Key": "product", "Value": product.model}],
            **extra,
        )
        return Change(CREATED, created["templateArn"], created.get("defaultVersionId", 1))
    if described.get("type", "FLEET_PROVISIONING") != "FLEET_PROVISIONING":
        raise CatalogError(
            f"provisioning template {name} (product {product.model}) exists as a {described['type']} "
            "template; a fleet product needs a FLEET_PROVISIONING one (set another template_name)"
        )
    changes = []
    version = described.get("defaultVersionId")
    if not _same_json(described.get("templateBody", ""), body):
        changes.append("a new default version of the body")
        if not dry_run:
            versions = iot.list_provisioning_template_versions(templateName=name)["versions"]
            for old in _oldest(versions):
                iot.delete_provisioning_template_version(templateName=name, versionId=old)
            version = iot.create_provisioning_template_version(
                templateName=name, templateBody=body, setAsDefault=True
            )["versionId"]
    settings, changed = _template_settings(described, product, role_arn)
    if settings:
        changes += changed
        if not dry_run:
            iot.update_provisioning_template(templateName=name, **settings)
    if not changes:
        return Change(UNCHANGED, described["templateArn"], version)
    detail = f"update template {name}: " + " and ".join(changes)
    return Change(WOULD_UPDATE if dry_run else UPDATED, described["templateArn"], version, detail)


def _template_settings(
    described: dict[str, Any], product: FleetProduct, role_arn: str
) -> tuple[dict[str, Any], list[str]]:
    """(UpdateProvisioningTemplate's arguments for what differs from the template, what they change)."""
    settings: dict[str, Any] = {}
    changed = []
    if not described.get("enabled"):
        settings["enabled"] = True
        changed.append("enabled")
    if described.get("provisioningRoleArn") != role_arn:
        settings["provisioningRoleArn"] = role_arn
        changed.append(f"role {role_arn}")
    current = (described.get("preProvisioningHook") or {}).get("targetArn")
    if current != product.pre_provisioning_hook and product.pre_provisioning_hook is None:
        settings["removePreProvisioningHook"] = True
        changed.append("hook removed")
    elif current != product.pre_provisioning_hook:
        settings["preProvisioningHook"] = _hook(product)
        changed.append(f"hook {product.pre_provisioning_hook}")
    return settings, changed


def ensure_claim_policy(iot: Any, product: FleetProduct, document: str, *, dry_run: bool) -> Change:
    """The claim policy with this document as its default version: created, or a new default version."""
    name = product.claim_policy
    found = _described(iot.get_policy, policyName=name)
    if found is None:
        if dry_run:
            return Change(WOULD_CREATE, detail=f"create claim policy {name}")
        created = iot.create_policy(
            policyName=name,
            policyDocument=document,
            tags=[{"Key": "purpose", "Value": "fleet-claim"}, {"Key": "product", "Value": product.model}],
        )
        return Change(CREATED, created["policyArn"], created.get("policyVersionId"))
    if _same_json(found.get("policyDocument", ""), document):
        return Change(UNCHANGED, found["policyArn"], found.get("defaultVersionId"))
    if dry_run:
        return Change(WOULD_UPDATE, found["policyArn"], detail=f"update claim policy {name}: a new version")
    for old in _oldest(iot.list_policy_versions(policyName=name)["policyVersions"]):
        iot.delete_policy_version(policyName=name, policyVersionId=old)
    version = iot.create_policy_version(policyName=name, policyDocument=document, setAsDefault=True)
    return Change(UPDATED, found["policyArn"], version["policyVersionId"])


def _oldest(versions: list[dict[str, Any]]) -> list[Any]:
    """Ids of the oldest versions that are not the default, to delete so one more fits in the five."""
    older = sorted((v for v in versions if not v["isDefaultVersion"]), key=lambda v: int(v["versionId"]))
    return [v["versionId"] for v in older[: max(0, len(versions) - MAX_VERSIONS + 1)]]


def claims_of(iot: Any, product: FleetProduct) -> list[dict[str, Any]]:
    """The product's claim certificates: those its claim policy is attached to, newest first."""
    if _described(iot.get_policy, policyName=product.claim_policy) is None:
        return []
    claims = []
    for page in iot.get_paginator("list_targets_for_policy").paginate(policyName=product.claim_policy):
        for target in page.get("targets", []):
            if ":cert/" not in target:
                continue
            described = _described(iot.describe_certificate, certificateId=target.rsplit("/", 1)[1])
            if described is not None:  # deleted since the listing
                claims.append(described["certificateDescription"])
    return sorted(claims, key=lambda c: _as_datetime(c.get("creationDate")), reverse=True)


def not_after(description: dict[str, Any]) -> dt.datetime | None:
    """A certificate's end of validity, as DescribeCertificate says."""
    value = (description.get("validity") or {}).get("notAfter")
    return _as_datetime(value) if value is not None else None


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(float(value or 0), dt.UTC)


def register_claim(iot: Any, product: FleetProduct, certificate_pem: str, ca_certificate_pem: str) -> str:
    """Register the claim certificate ACTIVE with the factory CA and attach the claim policy; its ARN."""
    registered = iot.register_certificate(
        certificatePem=certificate_pem, caCertificatePem=ca_certificate_pem, status="ACTIVE"
    )
    iot.attach_policy(policyName=product.claim_policy, target=registered["certificateArn"])
    return str(registered["certificateArn"])


def device_endpoint(iot: Any) -> str:
    """Where devices connect over MQTT (DescribeEndpoint iot:Data-ATS)."""
    return str(iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"])
