"""The registration code and CA certificates: register (with proof of possession), update, list, delete."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from cryptography import x509

from iot_emulator import x509_util
from iot_emulator.errors import IotError, already_exists, invalid_request, limit_exceeded, not_found
from iot_emulator.paging import paginate
from iot_emulator.service_base import ServiceBase

CA_STATUSES = frozenset({"ACTIVE", "INACTIVE"})
AUTO_REGISTRATION_STATUSES = frozenset({"ENABLE", "DISABLE"})
CERTIFICATE_MODES = frozenset({"DEFAULT", "SNI_ONLY"})
MAX_PEM_LENGTH = 65536
MAX_CAS_PER_SUBJECT = 10
LIST_PAGE_SIZE = 25


def registration_code(account_id: str) -> str:
    """The account's registration code: derived from the account id, so it never changes nor is stored."""
    return hashlib.sha256(f"iot-emulator-registration:{account_id}".encode()).hexdigest()


def certificate_validation(message: str) -> IotError:
    return IotError("CertificateValidationException", message)


def certificate_state(message: str) -> IotError:
    return IotError("CertificateStateException", message)


def check_pem(value: Any, member: str, max_length: int = MAX_PEM_LENGTH) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise invalid_request(f"{member} must be a string of 1 to {max_length} characters")
    return value


def check_certificate_id(certificate_id: Any) -> str:
    if not isinstance(certificate_id, str) or len(certificate_id) != 64:
        raise invalid_request("The certificate id must be 64 hexadecimal characters")
    try:
        int(certificate_id, 16)
    except ValueError:
        raise invalid_request("The certificate id must be 64 hexadecimal characters") from None
    return certificate_id.lower()


class CaCertificatesMixin(ServiceBase):
    """RegisterCACertificate & co.; device certificates find their issuer here."""

    def _ca_object(self, ca_id: str) -> x509.Certificate:
        """The parsed CA certificate (cached: parsing on every device certificate would dominate bulk)."""
        cert = self._ca_objects.get(ca_id)
        if cert is None:
            cert = self._ca_objects[ca_id] = x509_util.load_certificate(
                self.state.ca_certificates[ca_id]["certificatePem"]
            )
        return cert

    def get_registration_code(self) -> dict[str, Any]:
        return {"registrationCode": registration_code(self.account_id)}

    def register_ca_certificate(
        self,
        caCertificate: str,
        verificationCertificate: str | None = None,
        setAsActive: bool = False,
        allowAutoRegistration: bool = False,
        registrationConfig: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
        certificateMode: str = "DEFAULT",
    ) -> dict[str, Any]:
        check_pem(caCertificate, "caCertificate")
        if certificateMode not in CERTIFICATE_MODES:
            raise invalid_request(f"certificateMode must be one of {sorted(CERTIFICATE_MODES)}")
        try:
            ca = x509_util.load_certificate(caCertificate)
        except x509_util.X509Error as exc:
            raise certificate_validation(str(exc)) from None
        ca_id = x509_util.certificate_id(ca)
        ca_arn = self.arn(f"cacert/{ca_id}")
        if ca_id in self.state.ca_certificates:
            raise already_exists("The CA certificate is already registered", ca_id, ca_arn)
        if not x509_util.is_ca(ca):
            raise certificate_validation(
                "The certificate is not a CA certificate (basicConstraints CA is not set)"
            )
        self._check_not_expired(ca, "CA certificate")
        if certificateMode == "SNI_ONLY":
            if verificationCertificate:
                raise invalid_request(
                    "verificationCertificate must be empty when certificateMode is SNI_ONLY"
                )
        else:
            if not verificationCertificate:
                raise invalid_request("verificationCertificate is required when certificateMode is DEFAULT")
            self._check_verification_certificate(
                check_pem(verificationCertificate, "verificationCertificate"), ca
            )
        config = self._checked_registration_config(registrationConfig)
        subject = ca.subject.public_bytes().hex()
        same_subject = self.state.ca_ids_by_subject.get(subject, [])
        if len(same_subject) >= MAX_CAS_PER_SUBJECT:
            raise limit_exceeded(
                f"At most {MAX_CAS_PER_SUBJECT} CA certificates with the same subject can be registered"
            )
        now = self.now()
        self.state.ca_certificates[ca_id] = {
            "certificateArn": ca_arn,
            "certificateId": ca_id,
            "status": "ACTIVE" if setAsActive else "INACTIVE",
            "certificatePem": caCertificate,
            "ownedBy": self.account_id,
            "creationDate": now,
            "autoRegistrationStatus": "ENABLE" if allowAutoRegistration else "DISABLE",
            "lastModifiedDate": now,
            "customerVersion": 1,
            "generationId": str(uuid.uuid4()),
            "validity": x509_util.validity(ca),
            "certificateMode": certificateMode,
            "registrationConfig": config,
            "tags": list(tags or []),
        }
        self.state.ca_ids_by_subject[subject] = [*same_subject, ca_id]
        self.on_trust_anchor(caCertificate)  # devices with certificates it signed may connect over MQTT
        return {"certificateArn": ca_arn, "certificateId": ca_id}

    def _check_verification_certificate(self, pem: str, ca: x509.Certificate) -> None:
        try:
            verification = x509_util.load_certificate(pem)
        except x509_util.X509Error as exc:
            raise certificate_validation(f"Verification certificate: {exc}") from None
        if not x509_util.is_signed_by(verification, ca):
            raise certificate_validation("The verification certificate is not signed by the CA certificate")
        if x509_util.common_name(verification) != registration_code(self.account_id):
            raise IotError(
                "RegistrationCodeValidationException",
                "The common name of the verification certificate does not match the registration code",
            )

    def _checked_registration_config(self, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if not config:
            return None
        if config.get("templateBody") and config.get("templateName"):
            raise invalid_request("registrationConfig takes either templateBody or templateName, not both")
        if config.get("templateName"):
            self.describe_provisioning_template(templateName=config["templateName"])
        return {k: v for k, v in config.items() if k in ("templateBody", "roleArn", "templateName") and v}

    def _check_not_expired(self, cert: x509.Certificate, what: str) -> None:
        if cert.not_valid_after_utc.timestamp() < self.now():
            raise certificate_validation(f"The {what} has expired")

    def _ca_record(self, ca_id: Any) -> dict[str, Any]:
        record = self.state.ca_certificates.get(check_certificate_id(ca_id))
        if record is None:
            raise not_found(f"The CA certificate {ca_id} does not exist")
        return record

    def describe_ca_certificate(self, certificateId: str) -> dict[str, Any]:
        record = self._ca_record(certificateId)
        description = {k: v for k, v in record.items() if k not in ("registrationConfig", "tags")}
        result: dict[str, Any] = {"certificateDescription": description}
        if record["registrationConfig"]:
            result["registrationConfig"] = dict(record["registrationConfig"])
        return result

    def update_ca_certificate(
        self,
        certificateId: str,
        newStatus: str | None = None,
        newAutoRegistrationStatus: str | None = None,
        registrationConfig: dict[str, Any] | None = None,
        removeAutoRegistration: bool = False,
    ) -> dict[str, Any]:
        record = self._ca_record(certificateId)
        if newStatus is not None and newStatus not in CA_STATUSES:
            raise invalid_request(f"newStatus must be one of {sorted(CA_STATUSES)}")
        if (
            newAutoRegistrationStatus is not None
            and newAutoRegistrationStatus not in AUTO_REGISTRATION_STATUSES
        ):
            raise invalid_request(
                f"newAutoRegistrationStatus must be one of {sorted(AUTO_REGISTRATION_STATUSES)}"
            )
        if removeAutoRegistration and registrationConfig:
            raise invalid_request("registrationConfig and removeAutoRegistration cannot be used together")
        config = self._checked_registration_config(registrationConfig)
        if newStatus is not None:
            record["status"] = newStatus
        if newAutoRegistrationStatus is not None:
            record["autoRegistrationStatus"] = newAutoRegistrationStatus
        if config is not None:
            record["registrationConfig"] = config
        if removeAutoRegistration:
            record["registrationConfig"] = None
        record["lastModifiedDate"] = self.now()
        record["customerVersion"] += 1
        record["generationId"] = str(uuid.uuid4())
        return {}

    def list_ca_certificates(
        self,
        pageSize: int | None = None,
        marker: str | None = None,
        ascendingOrder: bool = False,
        templateName: str | None = None,
    ) -> dict[str, Any]:
        records = list(self.state.ca_certificates.values())
        if templateName is not None:
            records = [
                r for r in records if (r["registrationConfig"] or {}).get("templateName") == templateName
            ]
        if not ascendingOrder:
            records.reverse()
        page, next_marker = paginate(records, marker, pageSize, LIST_PAGE_SIZE)
        result: dict[str, Any] = {
            "certificates": [
                {k: r[k] for k in ("certificateArn", "certificateId", "status", "creationDate")} for r in page
            ]
        }
        if next_marker:
            result["nextMarker"] = next_marker
        return result

    def delete_ca_certificate(self, certificateId: str) -> dict[str, Any]:
        record = self._ca_record(certificateId)
        ca_id = record["certificateId"]
        if record["status"] == "ACTIVE":
            raise certificate_state("The CA certificate must be deactivated (not ACTIVE) before deletion.")
        if any(c.get("caCertificateId") == ca_id for c in self.state.certificates.values()):
            raise certificate_state(
                "The CA certificate cannot be deleted while device certificates signed by it exist."
            )
        del self.state.ca_certificates[ca_id]
        subject = x509_util.load_certificate(record["certificatePem"]).subject.public_bytes().hex()
        remaining = [i for i in self.state.ca_ids_by_subject.get(subject, []) if i != ca_id]
        if remaining:
            self.state.ca_ids_by_subject[subject] = remaining
        else:
            self.state.ca_ids_by_subject.pop(subject, None)
        self._ca_objects.pop(ca_id, None)
        return {}

    def _ca_id_for_pem(self, ca_pem: str) -> str:
        ids = self._ca_ids_by_pem
        ca_id = ids.get(ca_pem)
        if ca_id is None or ca_id not in self.state.ca_certificates:
            check_pem(ca_pem, "caCertificatePem")
            try:
                ca_id = x509_util.certificate_id(x509_util.load_certificate(ca_pem))
            except x509_util.X509Error as exc:
                raise certificate_validation(f"caCertificatePem: {exc}") from None
            if ca_id not in self.state.ca_certificates:
                raise certificate_validation("The CA certificate is not registered")
            ids[ca_pem] = ca_id
        return ca_id
