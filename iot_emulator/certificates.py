"""CA certificates, device certificates and the emulator's stand-in for Amazon's CA."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from cryptography import x509

from iot_emulator import x509_util
from iot_emulator.errors import IotError, already_exists, invalid_request, limit_exceeded, not_found
from iot_emulator.registry import paginate

CERTIFICATE_STATUSES = frozenset(
    {"ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "REGISTER_INACTIVE", "PENDING_ACTIVATION"}
)
CA_STATUSES = frozenset({"ACTIVE", "INACTIVE"})
AUTO_REGISTRATION_STATUSES = frozenset({"ENABLE", "DISABLE"})
CERTIFICATE_MODES = frozenset({"DEFAULT", "SNI_ONLY"})
MAX_PEM_LENGTH = 65536
MAX_CSR_LENGTH = 4096
MAX_CAS_PER_SUBJECT = 10
LIST_PAGE_SIZE = 25


def certificate_validation(message: str) -> IotError:
    return IotError("CertificateValidationException", message)


def certificate_state(message: str) -> IotError:
    return IotError("CertificateStateException", message)


def _check_pem(value: Any, member: str, max_length: int = MAX_PEM_LENGTH) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise invalid_request(f"{member} must be a string of 1 to {max_length} characters")
    return value


def _check_certificate_id(certificate_id: Any) -> str:
    if not isinstance(certificate_id, str) or len(certificate_id) != 64:
        raise invalid_request("The certificate id must be 64 hexadecimal characters")
    try:
        int(certificate_id, 16)
    except ValueError:
        raise invalid_request("The certificate id must be 64 hexadecimal characters") from None
    return certificate_id.lower()


class CertificatesMixin:
    """RegisterCACertificate & co., device certificates (own CA, no CA, AWS-issued) and their lifecycle."""

    def _init_certificates(self) -> None:
        self.ca_certificates: dict[str, dict[str, Any]] = {}
        self.ca_ids_by_subject: dict[bytes, list[str]] = {}
        # Insertion order is creation order, which ListCertificates sorts by.
        self.certificates: dict[str, dict[str, Any]] = {}
        self.registration_code = hashlib.sha256(
            f"iot-emulator-registration:{self.account_id}".encode()
        ).hexdigest()

    # ---- runtime caches (never persisted; rebuilt lazily after a restore) ----

    def _ca_object(self, ca_id: str) -> x509.Certificate:
        cache: dict[str, x509.Certificate] | None = self.__dict__.get("_rt_ca_objects")
        if cache is None:
            cache = self._rt_ca_objects = {}
        cert = cache.get(ca_id)
        if cert is None:
            cert = cache[ca_id] = x509_util.load_certificate(self.ca_certificates[ca_id]["certificatePem"])
        return cert

    def _amazon_ca(self) -> tuple[Any, x509.Certificate]:
        ca = self.__dict__.get("_rt_amazon_ca")
        if ca is None:
            ca = self._rt_amazon_ca = x509_util.stand_in_amazon_ca(self.account_id)
        return ca

    # ---- cross-mixin helpers ----

    def _certificate_arn(self, certificate_id: str) -> str:
        return self.arn(f"cert/{certificate_id}")

    def _certificate_record(self, certificate_id: str) -> dict[str, Any]:
        record = self.certificates.get(certificate_id)
        if record is None:
            raise not_found(f"The certificate {certificate_id} does not exist")
        return record

    def _certificate_id_from_arn(self, arn: str) -> str:
        prefix = self.arn("cert/")
        if not isinstance(arn, str) or not arn.startswith(prefix):
            raise invalid_request(f"{arn} is not a certificate ARN of this account and region")
        certificate_id = arn[len(prefix) :]
        self._certificate_record(certificate_id)
        return certificate_id

    # ---- registration code and CA certificates ----

    def get_registration_code(self) -> dict[str, Any]:
        return {"registrationCode": self.registration_code}

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
        _check_pem(caCertificate, "caCertificate")
        if certificateMode not in CERTIFICATE_MODES:
            raise invalid_request(f"certificateMode must be one of {sorted(CERTIFICATE_MODES)}")
        try:
            ca = x509_util.load_certificate(caCertificate)
        except x509_util.X509Error as exc:
            raise certificate_validation(str(exc)) from None
        ca_id = x509_util.certificate_id(ca)
        ca_arn = self.arn(f"cacert/{ca_id}")
        if ca_id in self.ca_certificates:
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
                _check_pem(verificationCertificate, "verificationCertificate"), ca
            )
        config = self._checked_registration_config(registrationConfig)
        subject = ca.subject.public_bytes()
        same_subject = self.ca_ids_by_subject.get(subject, [])
        if len(same_subject) >= MAX_CAS_PER_SUBJECT:
            raise limit_exceeded(
                f"At most {MAX_CAS_PER_SUBJECT} CA certificates with the same subject can be registered"
            )
        now = self.now()
        self.ca_certificates[ca_id] = {
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
        self.ca_ids_by_subject[subject] = [*same_subject, ca_id]
        return {"certificateArn": ca_arn, "certificateId": ca_id}

    def _check_verification_certificate(self, pem: str, ca: x509.Certificate) -> None:
        try:
            verification = x509_util.load_certificate(pem)
        except x509_util.X509Error as exc:
            raise certificate_validation(f"Verification certificate: {exc}") from None
        if not x509_util.is_signed_by(verification, ca):
            raise certificate_validation("The verification certificate is not signed by the CA certificate")
        if x509_util.common_name(verification) != self.registration_code:
            raise IotError(
                "RegistrationCodeValidationException",
                "The common name of the verification certificate does not match the registration code",
            )

    def _checked_registration_config(self, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if not config:
            return None
        if config.get("templateBody") and config.get("templateName"):
            raise invalid_request("registrationConfig takes either templateBody or templateName, not both")
        if config.get("templateName") and hasattr(self, "describe_provisioning_template"):
            self.describe_provisioning_template(templateName=config["templateName"])
        return {k: v for k, v in config.items() if k in ("templateBody", "roleArn", "templateName") and v}

    def _check_not_expired(self, cert: x509.Certificate, what: str) -> None:
        if cert.not_valid_after_utc.timestamp() < self.now():
            raise certificate_validation(f"The {what} has expired")

    def _ca_record(self, ca_id: Any) -> dict[str, Any]:
        record = self.ca_certificates.get(_check_certificate_id(ca_id))
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
        records = list(self.ca_certificates.values())
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
        if any(c.get("caCertificateId") == ca_id for c in self.certificates.values()):
            raise certificate_state(
                "The CA certificate cannot be deleted while device certificates signed by it exist."
            )
        del self.ca_certificates[ca_id]
        subject = x509_util.load_certificate(record["certificatePem"]).subject.public_bytes()
        remaining = [i for i in self.ca_ids_by_subject.get(subject, []) if i != ca_id]
        if remaining:
            self.ca_ids_by_subject[subject] = remaining
        else:
            self.ca_ids_by_subject.pop(subject, None)
        self.__dict__.get("_rt_ca_objects", {}).pop(ca_id, None)
        return {}

    # ---- device certificates ----

    def register_certificate(
        self,
        certificatePem: str,
        caCertificatePem: str | None = None,
        setAsActive: bool | None = None,
        status: str | None = None,
    ) -> dict[str, Any]:
        """Register a device certificate signed by a registered CA: one PEM parse and one signature check."""
        _check_pem(certificatePem, "certificatePem")
        initial_status = self._initial_status(status, setAsActive)
        try:
            cert = x509_util.load_certificate(certificatePem)
        except x509_util.X509Error as exc:
            raise certificate_validation(str(exc)) from None
        certificate_id = x509_util.certificate_id(cert)
        if certificate_id in self.certificates:
            raise already_exists(
                "The certificate is already provisioned or registered",
                certificate_id,
                self._certificate_arn(certificate_id),
            )
        ca_id = self._issuing_ca_id(cert, caCertificatePem)
        ca_record = self.ca_certificates[ca_id]
        if ca_record["status"] != "ACTIVE":
            raise certificate_state(f"The CA certificate {ca_id} that signed the certificate is not ACTIVE")
        self._check_not_expired(cert, "certificate")
        return self._store_certificate(
            cert, certificatePem, certificate_id, initial_status, ca_id, ca_record["certificateMode"]
        )

    def _issuing_ca_id(self, cert: x509.Certificate, ca_pem: str | None) -> str:
        """The registered CA that signed ``cert``; CA objects are cached, never re-parsed per call."""
        if ca_pem:
            ca_id = self._ca_id_for_pem(ca_pem)
            if not x509_util.is_signed_by(cert, self._ca_object(ca_id)):
                raise certificate_validation("The certificate is not signed by the given CA certificate")
            return ca_id
        candidates = self.ca_ids_by_subject.get(cert.issuer.public_bytes(), [])
        if not candidates:
            raise certificate_validation("The certificate is not signed by a registered CA certificate")
        if len(candidates) > 1:
            keys = {x509_util.public_key_der(self._ca_object(i)) for i in candidates}
            if len(keys) < len(candidates):
                raise IotError(
                    "CertificateConflictException",
                    "Several registered CA certificates share the subject and public key of the issuer; "
                    "pass caCertificatePem to choose one",
                )
        for ca_id in candidates:
            if x509_util.is_signed_by(cert, self._ca_object(ca_id)):
                return ca_id
        raise certificate_validation("The certificate is not signed by a registered CA certificate")

    def _ca_id_for_pem(self, ca_pem: str) -> str:
        ids: dict[str, str] | None = self.__dict__.get("_rt_ca_ids_by_pem")
        if ids is None:
            ids = self._rt_ca_ids_by_pem = {}
        ca_id = ids.get(ca_pem)
        if ca_id is None or ca_id not in self.ca_certificates:
            _check_pem(ca_pem, "caCertificatePem")
            try:
                ca_id = x509_util.certificate_id(x509_util.load_certificate(ca_pem))
            except x509_util.X509Error as exc:
                raise certificate_validation(f"caCertificatePem: {exc}") from None
            if ca_id not in self.ca_certificates:
                raise certificate_validation("The CA certificate is not registered")
            ids[ca_pem] = ca_id
        return ca_id

    def register_certificate_without_ca(
        self, certificatePem: str, status: str | None = None
    ) -> dict[str, Any]:
        _check_pem(certificatePem, "certificatePem")
        initial_status = self._initial_status(status, None)
        try:
            cert = x509_util.load_certificate(certificatePem)
        except x509_util.X509Error as exc:
            raise certificate_validation(str(exc)) from None
        certificate_id = x509_util.certificate_id(cert)
        if certificate_id in self.certificates:
            raise already_exists(
                "The certificate is already provisioned or registered",
                certificate_id,
                self._certificate_arn(certificate_id),
            )
        self._check_not_expired(cert, "certificate")
        return self._store_certificate(cert, certificatePem, certificate_id, initial_status, None, "SNI_ONLY")

    def create_certificate_from_csr(
        self, certificateSigningRequest: str, setAsActive: bool = False
    ) -> dict[str, Any]:
        _check_pem(certificateSigningRequest, "certificateSigningRequest", MAX_CSR_LENGTH)
        try:
            csr = x509_util.load_csr(certificateSigningRequest)
        except x509_util.X509Error as exc:
            raise invalid_request(str(exc)) from None
        return self._issue_certificate(csr.public_key(), "ACTIVE" if setAsActive else "INACTIVE")  # type: ignore[arg-type]

    def create_keys_and_certificate(self, setAsActive: bool = False) -> dict[str, Any]:
        key, public_pem, private_pem = x509_util.new_rsa_key_pair()
        result = self._issue_certificate(key.public_key(), "ACTIVE" if setAsActive else "INACTIVE")
        result["keyPair"] = {"PublicKey": public_pem, "PrivateKey": private_pem}
        return result

    def _issue_certificate(self, public_key: Any, status: str) -> dict[str, Any]:
        """Issue from the stand-in Amazon CA (AWS-issued certificates carry no caCertificateId)."""
        ca_key, ca_cert = self._amazon_ca()
        cert = x509_util.issue_device_certificate(public_key, ca_key, ca_cert, self.now())
        pem = x509_util.to_pem(cert)
        result = self._store_certificate(cert, pem, x509_util.certificate_id(cert), status, None, "DEFAULT")
        result["certificatePem"] = pem
        return result

    @staticmethod
    def _initial_status(status: str | None, set_as_active: bool | None) -> str:
        if status is not None:
            if status not in CERTIFICATE_STATUSES:
                raise invalid_request(f"status must be one of {sorted(CERTIFICATE_STATUSES)}")
            if status == "PENDING_TRANSFER":
                raise invalid_request("A certificate cannot be registered in PENDING_TRANSFER status")
            return status
        return "ACTIVE" if set_as_active else "INACTIVE"

    def _store_certificate(
        self,
        cert: x509.Certificate,
        pem: str,
        certificate_id: str,
        status: str,
        ca_id: str | None,
        mode: str,
    ) -> dict[str, Any]:
        now = self.now()
        arn = self._certificate_arn(certificate_id)
        self.certificates[certificate_id] = {
            "certificateArn": arn,
            "certificateId": certificate_id,
            "caCertificateId": ca_id,
            "status": status,
            "certificatePem": pem,
            "ownedBy": self.account_id,
            "creationDate": now,
            "lastModifiedDate": now,
            "customerVersion": 1,
            "generationId": str(uuid.uuid4()),
            "validity": x509_util.validity(cert),
            "certificateMode": mode,
        }
        return {"certificateArn": arn, "certificateId": certificate_id}

    def describe_certificate(self, certificateId: str) -> dict[str, Any]:
        record = self._certificate_record(_check_certificate_id(certificateId))
        description = {k: v for k, v in record.items() if v is not None}
        description["validity"] = dict(record["validity"])
        return {"certificateDescription": description}

    def update_certificate(self, certificateId: str, newStatus: str) -> dict[str, Any]:
        record = self._certificate_record(_check_certificate_id(certificateId))
        if newStatus not in CERTIFICATE_STATUSES:
            raise invalid_request(f"newStatus must be one of {sorted(CERTIFICATE_STATUSES)}")
        if newStatus == "PENDING_TRANSFER":
            raise invalid_request("Use TransferCertificate to move a certificate to PENDING_TRANSFER")
        current = record["status"]
        if current == "PENDING_TRANSFER":
            raise certificate_state("The certificate is pending transfer and its status cannot be changed")
        if current == "REVOKED" and newStatus != "REVOKED":
            raise certificate_state("A revoked certificate cannot change status")
        ca_id = record["caCertificateId"]
        if newStatus == "ACTIVE" and ca_id and self.ca_certificates[ca_id]["status"] != "ACTIVE":
            raise certificate_state(f"The CA certificate {ca_id} that signed the certificate is not ACTIVE")
        if newStatus != current:
            record["status"] = newStatus
            record["lastModifiedDate"] = self.now()
            record["customerVersion"] += 1
            record["generationId"] = str(uuid.uuid4())
        return {}

    def list_certificates(
        self, pageSize: int | None = None, marker: str | None = None, ascendingOrder: bool = False
    ) -> dict[str, Any]:
        return self._list_certificate_summaries(
            list(self.certificates.values()), pageSize, marker, ascendingOrder
        )

    def list_certificates_by_ca(
        self,
        caCertificateId: str,
        pageSize: int | None = None,
        marker: str | None = None,
        ascendingOrder: bool = False,
    ) -> dict[str, Any]:
        ca_id = _check_certificate_id(caCertificateId)
        records = [r for r in self.certificates.values() if r["caCertificateId"] == ca_id]
        return self._list_certificate_summaries(records, pageSize, marker, ascendingOrder)

    @staticmethod
    def _list_certificate_summaries(
        records: list[dict[str, Any]], page_size: int | None, marker: str | None, ascending: bool
    ) -> dict[str, Any]:
        if not ascending:
            records.reverse()
        page, next_marker = paginate(records, marker, page_size, LIST_PAGE_SIZE)
        keys = ("certificateArn", "certificateId", "status", "certificateMode", "creationDate")
        result: dict[str, Any] = {"certificates": [{k: r[k] for k in keys} for r in page]}
        if next_marker:
            result["nextMarker"] = next_marker
        return result

    def delete_certificate(self, certificateId: str, forceDelete: bool = False) -> dict[str, Any]:
        record = self._certificate_record(_check_certificate_id(certificateId))
        if record["status"] == "ACTIVE":
            raise certificate_state(
                f"Certificate must be deactivated (not ACTIVE) before deletion. Id: {record['certificateId']}"
            )
        if record["status"] == "PENDING_TRANSFER":
            raise certificate_state("A certificate pending transfer cannot be deleted.")
        arn = record["certificateArn"]
        if self._principal_thing_names(arn):
            raise IotError("DeleteConflictException", f"Things must be detached before deletion (arn: {arn})")
        policies = self._principal_policy_names(arn)
        if policies and not forceDelete:
            raise IotError(
                "DeleteConflictException",
                f"Certificate policies must be detached before deletion (arn: {arn})",
            )
        for policy_name in policies:
            self.detach_policy(policyName=policy_name, target=arn)
        del self.certificates[record["certificateId"]]
        return {}
