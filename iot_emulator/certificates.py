"""Device certificates: registered (own CA or none), issued by the stand-in Amazon CA, and their lifecycle."""

from __future__ import annotations

import uuid
from typing import Any

from cryptography import x509

from iot_emulator import x509_util
from iot_emulator.ca_certificates import (
    LIST_PAGE_SIZE,
    CaCertificatesMixin,
    certificate_state,
    certificate_validation,
    check_certificate_id,
    check_pem,
)
from iot_emulator.errors import IotError, already_exists, invalid_request, not_found
from iot_emulator.paging import paginate

CERTIFICATE_STATUSES = frozenset(
    {"ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "REGISTER_INACTIVE", "PENDING_ACTIVATION"}
)
MAX_CSR_LENGTH = 4096


class CertificatesMixin(CaCertificatesMixin):
    """Device certificates (own CA, no CA, AWS-issued) and their status, listing and deletion."""

    def _amazon_ca(self) -> tuple[Any, x509.Certificate]:
        if self._stand_in_amazon_ca is None:  # deriving the key costs milliseconds: once per service
            self._stand_in_amazon_ca = x509_util.stand_in_amazon_ca(self.account_id)
        return self._stand_in_amazon_ca

    def _certificate_arn(self, certificate_id: str) -> str:
        return self.arn(f"cert/{certificate_id}")

    def _certificate_record(self, certificate_id: str) -> dict[str, Any]:
        record = self.state.certificates.get(certificate_id)
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

    def register_certificate(
        self,
        certificatePem: str,
        caCertificatePem: str | None = None,
        setAsActive: bool | None = None,
        status: str | None = None,
    ) -> dict[str, Any]:
        """Register a device certificate signed by a registered CA: one PEM parse and one signature check."""
        check_pem(certificatePem, "certificatePem")
        initial_status = self._initial_status(status, setAsActive)
        try:
            cert = x509_util.load_certificate(certificatePem)
        except x509_util.X509Error as exc:
            raise certificate_validation(str(exc)) from None
        certificate_id = x509_util.certificate_id(cert)
        if certificate_id in self.state.certificates:
            raise already_exists(
                "The certificate is already provisioned or registered",
                certificate_id,
                self._certificate_arn(certificate_id),
            )
        ca_id = self._issuing_ca_id(cert, caCertificatePem)
        ca_record = self.state.ca_certificates[ca_id]
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
        candidates = self.state.ca_ids_by_subject.get(cert.issuer.public_bytes().hex(), [])
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

    def register_certificate_without_ca(
        self, certificatePem: str, status: str | None = None
    ) -> dict[str, Any]:
        check_pem(certificatePem, "certificatePem")
        initial_status = self._initial_status(status, None)
        try:
            cert = x509_util.load_certificate(certificatePem)
        except x509_util.X509Error as exc:
            raise certificate_validation(str(exc)) from None
        certificate_id = x509_util.certificate_id(cert)
        if certificate_id in self.state.certificates:
            raise already_exists(
                "The certificate is already provisioned or registered",
                certificate_id,
                self._certificate_arn(certificate_id),
            )
        self._check_not_expired(cert, "certificate")
        stored = self._store_certificate(
            cert, certificatePem, certificate_id, initial_status, None, "SNI_ONLY"
        )
        self.on_trust_anchor(certificatePem)  # no known issuer: MQTT's TLS trusts the certificate itself
        return stored

    def create_certificate_from_csr(
        self, certificateSigningRequest: str, setAsActive: bool = False
    ) -> dict[str, Any]:
        check_pem(certificateSigningRequest, "certificateSigningRequest", MAX_CSR_LENGTH)
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
        self.state.certificates[certificate_id] = {
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
        record = self._certificate_record(check_certificate_id(certificateId))
        description = {k: v for k, v in record.items() if v is not None}
        description["validity"] = dict(record["validity"])
        return {"certificateDescription": description}

    def update_certificate(self, certificateId: str, newStatus: str) -> dict[str, Any]:
        record = self._certificate_record(check_certificate_id(certificateId))
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
        if newStatus == "ACTIVE" and ca_id and self.state.ca_certificates[ca_id]["status"] != "ACTIVE":
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
            list(self.state.certificates.values()), pageSize, marker, ascendingOrder
        )

    def list_certificates_by_ca(
        self,
        caCertificateId: str,
        pageSize: int | None = None,
        marker: str | None = None,
        ascendingOrder: bool = False,
    ) -> dict[str, Any]:
        ca_id = check_certificate_id(caCertificateId)
        records = [r for r in self.state.certificates.values() if r["caCertificateId"] == ca_id]
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
        record = self._certificate_record(check_certificate_id(certificateId))
        if record["status"] == "ACTIVE":
            raise certificate_state(
                f"Certificate must be deactivated (not ACTIVE) before deletion. Id: {record['certificateId']}"
            )
        if record["status"] == "PENDING_TRANSFER":
            raise certificate_state("A certificate pending transfer cannot be deleted.")
        arn = record["certificateArn"]
        if self._principal_thing_names(arn) or self._still_propagating(f"things:{arn}"):
            raise IotError("DeleteConflictException", f"Things must be detached before deletion (arn: {arn})")
        policies = self._principal_policy_names(arn)
        if (policies or self._still_propagating(f"policies:{arn}")) and not forceDelete:
            raise IotError(
                "DeleteConflictException",
                f"Certificate policies must be detached before deletion (arn: {arn})",
            )
        for policy_name in policies:
            self.detach_policy(policyName=policy_name, target=arn)
        del self.state.certificates[record["certificateId"]]
        return {}
