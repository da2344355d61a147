"""The certificate of one template run (from a CSR, a PEM or an id) and its pseudo-parameter values."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iot_emulator.errors import IotError, registration_failure
from iot_emulator.template_functions import CERT_PSEUDO_PREFIX, as_string, template_error
from iot_emulator.template_language import Resource

if TYPE_CHECKING:
    from iot_emulator.service import IotService

# Undocumented default when OverrideSettings is absent (see README divergences): a certificate's Status is
# applied, as fleet provisioning relies on it to activate the certificates devices made over MQTT.
DEFAULT_CERT_STATUS_OVERRIDE = "REPLACE"
_SUBJECT_PSEUDO_OIDS = {
    "CommonName": "2.5.4.3",
    "Country": "2.5.4.6",
    "Organization": "2.5.4.10",
    "OrganizationalUnit": "2.5.4.11",
    "DistinguishedNameQualifier": "2.5.4.46",
    "StateName": "2.5.4.8",
    "SerialNumber": "2.5.4.5",
}


@dataclass(frozen=True)
class LineCertificate:
    """The certificate a template run registered, issued or found."""

    id: str
    arn: str
    pem: str


def certificate_pseudo_parameters(certificate_pem: str) -> dict[str, str]:
    """The AWS::IoT::Certificate::* values of a certificate: its id and the attributes of its subject."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise registration_failure("the certificate is not a valid PEM encoded X.509 certificate") from exc
    values = {CERT_PSEUDO_PREFIX + "Id": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()}
    for name, oid in _SUBJECT_PSEUDO_OIDS.items():
        attributes = [a for a in cert.subject if a.oid.dotted_string == oid]
        if attributes:
            values[CERT_PSEUDO_PREFIX + name] = str(attributes[0].value)
    return values


def obtain_certificate(registry: IotService, resource: Resource, props: dict[str, Any]) -> LineCertificate:
    """Issue (CertificateSigningRequest), register (CertificatePem) or find (CertificateId) it."""
    where = f"Resources.{resource.logical_id}.Properties"
    status = as_string(props.get("Status", "ACTIVE"), f"{where}.Status", "Status").upper()
    if status not in ("ACTIVE", "INACTIVE"):
        raise template_error(f"{where}.Status", f"must be ACTIVE or INACTIVE, got {status!r}")
    if "CertificateSigningRequest" in props:
        csr = as_string(props["CertificateSigningRequest"], f"{where}.CertificateSigningRequest", "a CSR")
        issued = registry.create_certificate_from_csr(
            certificateSigningRequest=csr, setAsActive=status == "ACTIVE"
        )
        return LineCertificate(issued["certificateId"], issued["certificateArn"], issued["certificatePem"])
    if "CertificatePem" in props:
        pem = as_string(props["CertificatePem"], f"{where}.CertificatePem", "CertificatePem")
        kwargs: dict[str, Any] = {"certificatePem": pem, "status": status}
        if props.get("CACertificatePem"):
            kwargs["caCertificatePem"] = as_string(
                props["CACertificatePem"], f"{where}.CACertificatePem", "CACertificatePem"
            )
        try:
            registered = registry.register_certificate(**kwargs)
        except IotError as exc:
            if exc.code != "ResourceAlreadyExistsException":
                raise
            # A re-run of the same line: reuse the certificate (its status follows OverrideSettings).
            cert_id = (
                exc.fields.get("resourceId") or certificate_pseudo_parameters(pem)[CERT_PSEUDO_PREFIX + "Id"]
            )
            _apply_status(registry, resource, cert_id, status)
            return LineCertificate(cert_id, registry.arn(f"cert/{cert_id}"), pem)
        return LineCertificate(registered["certificateId"], registered["certificateArn"], pem)
    cert_id = as_string(props["CertificateId"], f"{where}.CertificateId", "CertificateId")
    description = _apply_status(registry, resource, cert_id, status)
    return LineCertificate(cert_id, description["certificateArn"], description["certificatePem"])


def _apply_status(registry: IotService, resource: Resource, cert_id: str, status: str) -> dict[str, Any]:
    """An existing certificate gets the template's Status unless OverrideSettings say otherwise."""
    description = registry.describe_certificate(certificateId=cert_id)["certificateDescription"]
    action = resource.overrides.get("Status", DEFAULT_CERT_STATUS_OVERRIDE)
    if description["status"] != status and action != "DO_NOTHING":
        if action == "FAIL":
            raise registration_failure(
                f"ResourceConflictsException: certificate {cert_id} already exists with status "
                f"{description['status']} and the template's OverrideSettings say Status: FAIL."
            )
        registry.update_certificate(certificateId=cert_id, newStatus=status)
    return description
