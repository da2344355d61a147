"""A development ACM Private CA on the emulator (moto's acm-pca), its CA registered in AWS IoT.

For `make cdf-api` and the tests: moto keeps no acm-pca state across restarts, so each start makes one.
Never for a real account: there a PCA is made once, by its owners, and named by CDF_PCA_<ALIAS>.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT_TEMPLATE = "arn:aws:acm-pca:::template/RootCACertificate/V1"
END_ENTITY_TEMPLATE = "arn:aws:acm-pca:::template/EndEntityCertificate/V1"


def _issue(acm_pca: Any, pca_arn: str, csr_pem: bytes, template: str) -> str:
    issued = acm_pca.issue_certificate(
        CertificateAuthorityArn=pca_arn,
        Csr=csr_pem,
        SigningAlgorithm="SHA256WITHRSA",
        TemplateArn=template,
        Validity={"Value": 3650, "Type": "DAYS"},
    )
    arn = issued["CertificateArn"]
    return acm_pca.get_certificate(CertificateAuthorityArn=pca_arn, CertificateArn=arn)["Certificate"]


def create_dev_pca(acm_pca: Any, iot: Any, common_name: str = "Factory Development PCA") -> tuple[str, str]:
    """(ACM PCA ARN, IoT CA certificate ARN): an ACTIVE root PCA whose CA is registered, ACTIVE, in IoT."""
    pca_arn = acm_pca.create_certificate_authority(
        CertificateAuthorityConfiguration={
            "KeyAlgorithm": "RSA_2048",
            "SigningAlgorithm": "SHA256WITHRSA",
            "Subject": {"CommonName": common_name, "Organization": "Example Devices Ltd", "Country": "US"},
        },
        CertificateAuthorityType="ROOT",
    )["CertificateAuthorityArn"]
    csr = acm_pca.get_certificate_authority_csr(CertificateAuthorityArn=pca_arn)["Csr"]
    root = _issue(acm_pca, pca_arn, csr.encode(), ROOT_TEMPLATE)
    acm_pca.import_certificate_authority_certificate(
        CertificateAuthorityArn=pca_arn, Certificate=root.encode()
    )
    code = iot.get_registration_code()["registrationCode"]
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    verification = _issue(acm_pca, pca_arn, request, END_ENTITY_TEMPLATE)
    registered = iot.register_ca_certificate(
        caCertificate=root,
        verificationCertificate=verification,
        setAsActive=True,
        allowAutoRegistration=False,
    )
    return pca_arn, registered["certificateArn"]
