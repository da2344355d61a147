"""Certificates for one thing: made by the factory CA, by AWS, by ACM Private CA, or the caller's; registered.

The primitives of every certificate mode, shared by CDF templates and catalog products. Private keys made
here live only in the returned `Material` (the caller puts them in its HTTP response), never in a log or an
exception message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from include.cdf.aws import aws_errors
from include.cdf.errors import BadRequest
from include.cdf.parameters import CertInfo
from include.certificate_authority import (
    CertificateAuthority,
    device_subject,
)

PEM = serialization.Encoding.PEM
SUBJECT_OIDS = {
    "country": NameOID.COUNTRY_NAME,
    "stateName": NameOID.STATE_OR_PROVINCE_NAME,
    "locality": NameOID.LOCALITY_NAME,
    "organization": NameOID.ORGANIZATION_NAME,
    "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "commonName": NameOID.COMMON_NAME,
    "emailAddress": NameOID.EMAIL_ADDRESS,
}
PCA_END_ENTITY_TEMPLATE = "arn:aws:acm-pca:::template/EndEntityCertificate/V1"
PCA_WAIT = {"Delay": 1, "MaxAttempts": 60}


@dataclass
class Material:
    """What a certificate mode gives the template and the response. Never log or repr the key."""

    parameters: dict[str, str] = field(default_factory=dict)  # template parameters this mode fills
    certificate_pem: str | None = None
    private_key_pem: str | None = None
    public_key_pem: str | None = None
    certificate_id: str | None = None
    certificate_arn: str | None = None
    issuer: str | None = None  # as the inventory records it: CA certificate id, PCA ARN, or "aws"
    registered: bool = False  # the certificate exists in IoT already (to delete if RegisterThing fails)

    def __repr__(self) -> str:
        return (
            f"Material(certificate_id={self.certificate_id!r}, key={'yes' if self.private_key_pem else 'no'})"
        )


def certificate_id_of(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode("ascii")).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def new_key(algorithm: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pems(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> tuple[str, str]:
    """(PKCS#8 private key PEM, SubjectPublicKeyInfo PEM)."""
    private = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode("ascii"), public.decode("ascii")


def subject_name(cert_info: CertInfo | None, thing_name: str, serial: str | None) -> x509.Name:
    """certInfo's subject (commonName defaults to the thing name), else the pipeline's device subject rule."""
    if cert_info is None or not cert_info.subject_fields:
        return device_subject(thing_name, serial).name()
    fields = {"commonName": thing_name[:64], **cert_info.subject_fields}
    return x509.Name(
        [x509.NameAttribute(oid, fields[name]) for name, oid in SUBJECT_OIDS.items() if name in fields]
    )


def sign_with_ca(
    ca: CertificateAuthority, public_key: Any, subject: x509.Name, validity_days: int
) -> x509.Certificate:
    """A device certificate of any subject (CDF's certInfo), as the factory CA makes its own ones."""
    return ca.issue_certificate(public_key, subject, validity_days=validity_days)


def csr_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, subject: x509.Name) -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(PEM).decode("ascii")


def load_certificate(pem: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise BadRequest(f"{what}: is not a PEM X.509 certificate") from None


def load_csr(pem: str, what: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise BadRequest(f"{what}: is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise BadRequest(f"{what}: the CSR's signature does not verify with its own public key")
    return csr


def aws_keys_and_certificate(iot: Any) -> Material:
    """CreateKeysAndCertificate: AWS makes the key and signs (ACTIVE)."""
    with aws_errors("CreateKeysAndCertificate"):
        made = iot.create_keys_and_certificate(setAsActive=True)
    return Material(
        certificate_pem=made["certificatePem"],
        private_key_pem=made["keyPair"]["PrivateKey"],
        public_key_pem=made["keyPair"]["PublicKey"],
        certificate_id=made["certificateId"],
        certificate_arn=made["certificateArn"],
        issuer="aws",
        registered=True,
    )


def register_without_ca(iot: Any, pem: str, status: str, what: str) -> tuple[str, str]:
    """RegisterCertificateWithoutCA; (certificate id, ARN)."""
    with aws_errors(f"{what}: RegisterCertificateWithoutCA"):
        found = iot.register_certificate_without_ca(certificatePem=pem, status=status)
    return found["certificateId"], found["certificateArn"]


def register_with_ca(iot: Any, pem: str, ca_pem: str, status: str, what: str) -> tuple[str, str]:
    """RegisterCertificate under a CA registered in IoT; (certificate id, ARN)."""
    with aws_errors(f"{what}: RegisterCertificate"):
        found = iot.register_certificate(certificatePem=pem, caCertificatePem=ca_pem, status=status)
    return found["certificateId"], found["certificateArn"]


def iot_ca_certificate(iot: Any, ca_arn: str, what: str) -> str:
    """The PEM of a CA certificate registered in IoT, by its ARN (arn:...:cacert/<id>)."""
    ca_id = ca_arn.rsplit("/", 1)[-1]
    with aws_errors(
        f"{what}: DescribeCACertificate", not_found=f"{what}: no CA certificate {ca_arn} in AWS IoT"
    ):
        found = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    if found.get("status") != "ACTIVE":
        raise BadRequest(f"{what}: CA certificate {ca_arn} is {found.get('status')}, not ACTIVE")
    return str(found["certificatePem"])


def pca_issue(acm_pca: Any, pca_arn: str, csr: str, validity_days: int, what: str) -> tuple[str, str]:
    """IssueCertificate, then GetCertificate once issued (asynchronous); (certificate PEM, chain PEM)."""
    with aws_errors(f"{what}: ACM PCA {pca_arn}", not_found=f"{what}: no ACM Private CA {pca_arn}"):
        authority = acm_pca.describe_certificate_authority(CertificateAuthorityArn=pca_arn)[
            "CertificateAuthority"
        ]
        if authority.get("Status") != "ACTIVE":
            raise BadRequest(f"{what}: ACM Private CA {pca_arn} is {authority.get('Status')}, not ACTIVE")
        # The signature is the CA's: its configured algorithm, whatever the device key is.
        algorithm = authority["CertificateAuthorityConfiguration"]["SigningAlgorithm"]
        issued = acm_pca.issue_certificate(
            CertificateAuthorityArn=pca_arn,
            Csr=csr.encode("ascii"),
            SigningAlgorithm=algorithm,
            TemplateArn=PCA_END_ENTITY_TEMPLATE,
            Validity={"Value": validity_days, "Type": "DAYS"},
        )
        arn = issued["CertificateArn"]
        acm_pca.get_waiter("certificate_issued").wait(
            CertificateAuthorityArn=pca_arn, CertificateArn=arn, WaiterConfig=PCA_WAIT
        )
        found = acm_pca.get_certificate(CertificateAuthorityArn=pca_arn, CertificateArn=arn)
    return found["Certificate"], found.get("CertificateChain") or ""


def delete_certificate(iot: Any, certificate_id: str) -> None:
    """Undo a certificate this request registered (RegisterThing failed after it): deactivate, delete."""
    for call in (
        lambda: iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE"),
        lambda: iot.delete_certificate(certificateId=certificate_id, forceDelete=True),
    ):
        try:
            call()
        except Exception:  # best effort: the request's own error is the one to report
            return
