"""The factory CA's lifecycle: create or import it, register it in IoT, keep its key in a secret, rotate.

The CA's private key lives in AWS Secrets Manager, in the secret that Airflow's SecretsManagerBackend serves
as the connection `factory_ca` (`airflow/connections/factory_ca`: the key as the password, the certificate in
the extra), so tasks read it as any connection and it is never in the repository, a log or XCom. Rotation
makes a new CA, registers it ACTIVE beside the old one and makes it the connection's; the old CA's material
moves to an archive secret (`<secret id>/archive/<certificate id>`) and the old CA stays ACTIVE in IoT, so its
devices keep connecting, until it is retired by an explicit action.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from include.aws_errors import is_not_found
from include.certificate_authority import CA_VALIDITY_DAYS, CertificateAuthority, certificate_id, utcnow
from include.errors import CertificateAuthorityError

EXPIRY_WARNING_DAYS = 90


@dataclass(frozen=True)
class Registered:
    """A CA as IoT knows it (no key material)."""

    certificate_id: str
    status: str
    created: bool


def register_ca(
    iot: Any, ca: CertificateAuthority, *, registration_config: Mapping[str, str] | None = None
) -> Registered:
    """Register the CA with a verification certificate (CN = registration code), ACTIVE; idempotent.

    `registration_config` ({"templateBody", "roleArn"} or {"templateName"}) sets just-in-time provisioning.
    A CA already registered is made ACTIVE again (bootstrap's CA is the one in use).
    """
    ca_id = certificate_id(ca.certificate)
    try:
        described = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    except Exception as exc:
        if not is_not_found(exc):
            raise
    else:
        if described["status"] != "ACTIVE":
            iot.update_ca_certificate(certificateId=ca_id, newStatus="ACTIVE")
        if registration_config:
            iot.update_ca_certificate(certificateId=ca_id, registrationConfig=dict(registration_config))
        return Registered(ca_id, "ACTIVE", created=False)
    code = iot.get_registration_code()["registrationCode"]
    extra: dict[str, Any] = {"registrationConfig": dict(registration_config)} if registration_config else {}
    response = iot.register_ca_certificate(
        caCertificate=ca.certificate_pem,
        verificationCertificate=ca.issue_verification_certificate(code),
        setAsActive=True,
        allowAutoRegistration=False,
        tags=[{"Key": "purpose", "Value": "factory-ca"}],
        **extra,
    )
    return Registered(response["certificateId"], "ACTIVE", created=True)


def connection_secret(ca: CertificateAuthority) -> str:
    """The secret's value: an Airflow connection in JSON (SecretsManagerBackend's format)."""
    return json.dumps(
        {
            "conn_type": "generic",
            "password": ca.private_key_pem(),
            "extra": {"certificate_pem": ca.certificate_pem},
        }
    )


def read_secret(secrets: Any, secret_id: str) -> CertificateAuthority | None:
    """The CA kept in a secret, or None when there is no such secret."""
    try:
        value = secrets.get_secret_value(SecretId=secret_id)["SecretString"]
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise
    try:
        document = json.loads(value)
        extra = document.get("extra") or {}
        extra = json.loads(extra) if isinstance(extra, str) else extra
        return CertificateAuthority.from_pem(extra["certificate_pem"], document["password"])
    except (ValueError, KeyError, TypeError, AttributeError):
        # Never repeat the value: it holds the key.
        raise CertificateAuthorityError(
            f"secret {secret_id} is not a factory CA connection (password = key PEM, extra.certificate_pem)"
        ) from None


def write_secret(secrets: Any, secret_id: str, ca: CertificateAuthority, *, description: str) -> None:
    """Create the secret, or put a new value in it."""
    value = connection_secret(ca)
    try:
        secrets.put_secret_value(SecretId=secret_id, SecretString=value)
    except Exception as exc:
        if not is_not_found(exc):
            raise
        secrets.create_secret(Name=secret_id, SecretString=value, Description=description)


def archive_id(secret_id: str, ca_id: str) -> str:
    return f"{secret_id}/archive/{ca_id}"


def rotate(
    iot: Any,
    secrets: Any,
    secret_id: str,
    *,
    common_name: str,
    validity_days: int = CA_VALIDITY_DAYS,
    registration_config: Mapping[str, str] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """A new CA, registered ACTIVE beside the old one (which stays ACTIVE), made the current one."""
    old = read_secret(secrets, secret_id)
    if old is None:
        raise CertificateAuthorityError(f"there is no current factory CA in secret {secret_id} to rotate")
    old_id = certificate_id(old.certificate)
    if dry_run:
        return {
            "action": "rotate",
            "dry_run": True,
            "old_certificate_id": old_id,
            "would": [
                f"create a CA '{common_name}' valid {validity_days} days and register it ACTIVE in IoT",
                f"keep CA {old_id} ACTIVE and its key in {archive_id(secret_id, old_id)}",
                f"make the new CA the one in {secret_id} (new batches are signed by it)",
            ],
        }
    new = CertificateAuthority.create_development(common_name, validity_days=validity_days)
    registered = register_ca(iot, new, registration_config=registration_config)
    write_secret(secrets, archive_id(secret_id, old_id), old, description=f"factory CA {old_id}, rotated out")
    write_secret(secrets, secret_id, new, description="the factory CA new batches are signed by")
    return {
        "action": "rotate",
        "dry_run": False,
        "old_certificate_id": old_id,
        "new_certificate_id": registered.certificate_id,
        "old_status": "ACTIVE",
        "archived_in": archive_id(secret_id, old_id),
    }


def retire(iot: Any, secrets: Any, secret_id: str, ca_id: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Set a rotated-out CA INACTIVE in IoT (its devices stop connecting): never the current one."""
    current = read_secret(secrets, secret_id)
    if current is not None and certificate_id(current.certificate) == ca_id:
        raise CertificateAuthorityError(f"CA {ca_id} is the current factory CA; rotate before retiring it")
    status = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]["status"]
    if not dry_run and status != "INACTIVE":
        iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    return {"action": "retire", "dry_run": dry_run, "certificate_id": ca_id, "was": status}


def report(
    iot: Any, devices_by_issuer: Mapping[str, int], current_id: str | None, *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Every registered CA: status, expiry, days left, devices the inventory says it signed; which expire."""
    now = now or utcnow()
    cas = []
    for page in iot.get_paginator("list_ca_certificates").paginate():
        for listed in page.get("certificates", []):
            described = iot.describe_ca_certificate(certificateId=listed["certificateId"])
            description = described["certificateDescription"]
            not_after = _not_after(description)
            days_left = (not_after - now).days if not_after else None
            cas.append(
                {
                    "certificate_id": description["certificateId"],
                    "status": description["status"],
                    "not_after": not_after.isoformat() if not_after else None,
                    "days_left": days_left,
                    "devices": int(devices_by_issuer.get(description["certificateId"], 0)),
                    "current": description["certificateId"] == current_id,
                    "jitp": bool(described.get("registrationConfig")),
                }
            )
    expiring = [
        ca["certificate_id"]
        for ca in cas
        if ca["status"] == "ACTIVE" and ca["days_left"] is not None and ca["days_left"] < EXPIRY_WARNING_DAYS
    ]
    return {"action": "report", "cas": sorted(cas, key=lambda ca: ca["certificate_id"]), "expiring": expiring}


def _not_after(description: Mapping[str, Any]) -> dt.datetime | None:
    """The CA's end of validity: DescribeCACertificate's validity, else its certificate's."""
    validity = description.get("validity") or {}
    value = validity.get("notAfter")
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    pem = description.get("certificatePem")
    if not pem:
        return None
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc


def create_or_import(
    iot: Any,
    secrets: Any,
    secret_id: str,
    ca: CertificateAuthority,
    *,
    registration_config: Mapping[str, str] | None = None,
    dry_run: bool = False,
    replace: bool = False,
) -> dict[str, Any]:
    """Make this CA the factory CA: registered ACTIVE in IoT, its material in the secret.

    An existing current CA is not replaced unless `replace` (that is what rotate is for).
    """
    ca_id = certificate_id(ca.certificate)
    current = read_secret(secrets, secret_id)
    if current is not None and certificate_id(current.certificate) != ca_id and not replace:
        raise CertificateAuthorityError(
            f"secret {secret_id} already holds factory CA {certificate_id(current.certificate)}; use rotate"
        )
    if dry_run:
        return {
            "certificate_id": ca_id,
            "dry_run": True,
            "would": ["register it ACTIVE", f"store it in {secret_id}"],
        }
    registered = register_ca(iot, ca, registration_config=registration_config)
    write_secret(secrets, secret_id, ca, description="the factory CA new batches are signed by")
    return {"certificate_id": ca_id, "dry_run": False, "registered": registered.created}


__all__ = [
    "EXPIRY_WARNING_DAYS",
    "Registered",
    "archive_id",
    "create_or_import",
    "read_secret",
    "register_ca",
    "report",
    "retire",
    "rotate",
    "write_secret",
]


def jitp_registration_config(product: Any, role_arn: str) -> dict[str, str]:
    """A CA's registrationConfig for just-in-time provisioning of a product's devices: on a device's first
    connection AWS registers its certificate and makes its thing (named by the certificate's common name)."""
    thing: dict[str, Any] = {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}
    if product.thing_type:
        thing["ThingTypeName"] = product.thing_type
    if product.thing_groups:
        thing["ThingGroups"] = list(product.thing_groups)
    resources: dict[str, Any] = {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": thing},
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"},
        },
    }
    for index, policy in enumerate((product.policy, *product.extra_policies)):
        resources["policy" if index == 0 else f"policy_{index}"] = {
            "Type": "AWS::IoT::Policy",
            "Properties": {"PolicyName": policy},
        }
    body = {
        "Parameters": {
            "AWS::IoT::Certificate::CommonName": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"},
        },
        "Resources": resources,
    }
    return {"templateBody": json.dumps(body, separators=(",", ":")), "roleArn": role_arn}
