"""prepare_fleet_claim's work: a claim product's template, claim policy and claim, its key in a bundle.

The claim is a certificate the factory CA signs (a P-256 key made here) and registers ACTIVE in AWS IoT
with the claim policy attached, rather than one from CreateProvisioningClaim: AWS makes those expire five
minutes after they are made (for a trusted user's app at installation time), while a factory line flashes
one claim into every device of a product for months. Our own claim has the validity we choose, chains to a
CA AWS IoT already trusts, and can be revoked in IoT when a line's image leaks. Its key goes only into the
standard key bundle (include.key_bundle), sealed for the factory line, never into XCom or a log.

Re-running is safe: the template and policy are updated in place, and the current claim (the newest ACTIVE
certificate the claim policy is attached to, with its bundle in S3) is kept unless it expires within
RENEW_WITHIN_DAYS or a new one is asked for. Older claims stay ACTIVE, so devices already flashed with
them still provision; revoke one with UpdateCertificate when its devices are done.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from include import key_bundle
from include.certificate_authority import CertificateAuthority, certificate_id, utcnow
from include.errors import PreflightError
from include.fleet_catalog import FleetProduct, fleet_product_of
from include.fleet_files import FleetFiles
from include.fleet_registry import (
    claims_of,
    device_endpoint,
    ensure_claim_policy,
    ensure_template,
    not_after,
    prerequisite_problems,
    register_claim,
)
from include.fleet_templates import render_claim_policy, render_fleet_template
from include.settings import Settings
from include.storage import object_exists, put_bytes, read_text_setting

RENEW_WITHIN_DAYS = 30
MAX_COMMON_NAME = 64


def prepare_resources(
    iot: Any, s3: Any, settings: Settings, model: str, ca_certificate_pem: str, *, dry_run: bool = False
) -> dict[str, Any]:
    """The product's fleet template and claim policy in AWS IoT, after its prerequisites are checked."""
    product = fleet_product_of(settings.catalog_path, model)
    body, document = render_fleet_template(product), render_claim_policy(product)
    problems = prerequisite_problems(iot, product, ca_certificate_pem)
    if problems:
        raise PreflightError(problems)
    recipient = read_text_setting(s3, settings.bundle_recipient_public_key, "bundle recipient certificate")
    key_bundle.load_recipient(recipient)  # refused before anything changes in IoT
    template = ensure_template(iot, product, body, settings.registration_role_arn, dry_run=dry_run)
    policy = ensure_claim_policy(iot, product, document, dry_run=dry_run)
    return {
        "product": product.model,
        "dry_run": dry_run,
        "template_name": product.template_name,
        "template_arn": template.arn,
        "template_version": template.version,
        "template": template.action,
        "claim_policy": product.claim_policy,
        "claim_policy_change": policy.action,
        "device_endpoint": device_endpoint(iot),
        **({"would": [c.detail for c in (template, policy) if c.detail]} if dry_run else {}),
    }


def prepare_claim(
    iot: Any,
    s3: Any,
    settings: Settings,
    resources: dict[str, Any],
    ca: CertificateAuthority,
    *,
    run_id: str,
    validity_days: int | None = None,
    new_claim: bool = False,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Keep the product's current claim or issue one; with `resources` (prepare_resources' result), the
    product's whole state: template, claim certificate id, bundle key, endpoint (no key material)."""
    now = now or utcnow()
    product = fleet_product_of(settings.catalog_path, resources["product"])
    files = FleetFiles(settings.bucket, settings.work_prefix, product.model)
    current, reason, others = _current_claim(iot, s3, files, product, now, new_claim)
    result = {**resources, "other_active_claims": others, "claim_reason": reason}
    if current is not None:
        return {**result, **_described_claim(files, current), "claim": "kept"}
    validity = validity_days or product.claim_validity_days
    if resources["dry_run"]:
        would = [*resources["would"], f"issue a claim certificate valid {validity} days ({reason})"]
        return {**result, "claim": "would issue", "would": would}
    recipient = read_text_setting(s3, settings.bundle_recipient_public_key, "bundle recipient certificate")
    claim = _issue_claim(
        iot,
        s3,
        files,
        product,
        ca,
        recipient,
        validity_days=validity,
        endpoint=resources["device_endpoint"],
        run_id=run_id,
        now=now,
    )
    return {**result, **claim, "claim": "issued"}


def _current_claim(
    iot: Any, s3: Any, files: FleetFiles, product: FleetProduct, now: dt.datetime, new_claim: bool
) -> tuple[dict[str, Any] | None, str, list[str]]:
    """(the claim to keep, or None; why; the ids of the other ACTIVE claims)."""
    active = [c for c in claims_of(iot, product) if c["status"] == "ACTIVE"]
    ids = [c["certificateId"] for c in active]
    if not active:
        return None, "the product has no ACTIVE claim yet", []
    newest, ends = active[0], not_after(active[0])
    if new_claim:
        reason = "a new claim was asked for"
    elif ends is not None and ends - now < dt.timedelta(days=RENEW_WITHIN_DAYS):
        reason = f"claim {ids[0]} expires {ends.date()}, within {RENEW_WITHIN_DAYS} days"
    elif not object_exists(s3, files.bucket, files.claim_bundle(ids[0])):
        reason = f"the bundle of claim {ids[0]} is not in S3"
    else:
        return newest, f"claim {ids[0]} is ACTIVE until {ends.date() if ends else 'its CA expires'}", ids[1:]
    return None, reason, ids


def _described_claim(files: FleetFiles, description: dict[str, Any]) -> dict[str, Any]:
    ends = not_after(description)
    certificate = description["certificateId"]
    return {
        "claim_certificate_id": certificate,
        "claim_certificate_arn": description["certificateArn"],
        "claim_not_after": ends.isoformat() if ends else None,
        "bundle": files.uri(files.claim_bundle(certificate)),
        "bundle_key": files.claim_bundle(certificate),
        "claim_record": files.uri(files.claim_record(certificate)),
    }


def _issue_claim(
    iot: Any,
    s3: Any,
    files: FleetFiles,
    product: FleetProduct,
    ca: CertificateAuthority,
    recipient: str,
    *,
    validity_days: int,
    endpoint: str,
    run_id: str,
    now: dt.datetime,
) -> dict[str, Any]:
    """A new claim: key and certificate made here, sealed and stored, then registered with its policy.

    The bundle is stored before the certificate is registered: a claim AWS IoT accepts always has its
    key on the way to the factory line (a failure in between leaves an unregistered, useless bundle).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = f"{product.model} fleet claim"[:MAX_COMMON_NAME]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = ca.issue_certificate(key.public_key(), subject, validity_days=validity_days)
    claim_id = certificate_id(certificate)
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    private_key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    entry = {
        "thing_name": f"{product.model}-claim",
        "serial_number": None,
        "model": product.model,
        "row": 0,
        "certificate_id": claim_id,
        "certificate_pem": certificate_pem,
        "private_key_pem": private_key_pem,
    }
    sealed = key_bundle.seal([entry], recipient, batch_id=product.template_name, chunk=0)
    put_bytes(s3, files.bucket, files.claim_bundle(claim_id), sealed, key_bundle.CONTENT_TYPE)
    arn = register_claim(iot, product, certificate_pem, ca.certificate_pem)
    record = {
        "product": product.model,
        "template_name": product.template_name,
        "device_endpoint": endpoint,
        "claim_certificate_id": claim_id,
        "claim_certificate_arn": arn,
        "claim_not_after": certificate.not_valid_after_utc.isoformat(),
        "claim_policy": product.claim_policy,
        "certificate_pem": certificate_pem,
        "created_at": now.isoformat(timespec="seconds"),
        "run_id": run_id,
    }
    put_bytes(
        s3,
        files.bucket,
        files.claim_record(claim_id),
        json.dumps(record, indent=2).encode(),
        "application/json",
    )
    return {
        "claim_certificate_id": claim_id,
        "claim_certificate_arn": arn,
        "claim_not_after": record["claim_not_after"],
        "bundle": files.uri(files.claim_bundle(claim_id)),
        "bundle_key": files.claim_bundle(claim_id),
        "claim_record": files.uri(files.claim_record(claim_id)),
    }
