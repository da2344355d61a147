"""The certificate of one POST /things: CDF's four template modes, and a catalog product's own mode.

Each function checks its inputs first (nothing is created in AWS for a request that will be refused), then
makes or registers the certificate and says which template parameters it fills.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from include.catalog import Product
from include.cdf import certificates as certs
from include.cdf.config import CdfConfig
from include.cdf.errors import BadRequest
from include.cdf.parameters import (
    ACMPCA,
    CREATE_DEVICE_AWS_CERTIFICATE,
    CREATE_DEVICE_CERTIFICATE,
    PCA_REGISTER_WITH_CA,
    REGISTER_WITHOUT_CA,
    CdfBlock,
    ProvisioningParameters,
)
from include.certificate_authority import (
    CertificateAuthority,
    certificate_id_from_pem,
    device_subject,
    load_device_csr_key,
)
from include.errors import CsrError

PARAMETERS = "cdfProvisioningParameters"
# The template parameters each CDF mode fills (only those the template declares are passed on).
FILLED = {
    CREATE_DEVICE_CERTIFICATE: ("CertificatePem", "CaCertificatePem"),
    CREATE_DEVICE_AWS_CERTIFICATE: ("CertificateId", "CertificateArn", "CertificatePem"),
    REGISTER_WITHOUT_CA: ("CertificateId", "CertificateArn"),
    ACMPCA: ("CertificateId", "CertificateArn", "CertificatePem"),
}
# The one of them a template must declare for the certificate to reach its certificate resource.
NEEDED = {
    CREATE_DEVICE_CERTIFICATE: "CertificatePem",
    CREATE_DEVICE_AWS_CERTIFICATE: "CertificateId",
    REGISTER_WITHOUT_CA: "CertificateId",
    ACMPCA: "CertificateId",
}


@dataclass(frozen=True)
class Signers:
    """Who can sign or register: AWS clients, the factory CA (loaded only when a mode needs it), config."""

    iot: Any
    acm_pca: Any
    factory_ca: Callable[[], CertificateAuthority]
    config: CdfConfig


def check_declared(
    mode: str | None, declared: Mapping[str, Any], given: Mapping[str, str], template_id: str
) -> None:
    """The template declares the parameter the mode fills, and the caller does not fill it."""
    if mode is None:
        return
    if NEEDED[mode] not in declared:
        raise BadRequest(
            f"template {template_id}: {mode} fills the parameter {NEEDED[mode]}, which the template does not "
            "declare (its certificate resource needs it)"
        )
    for name in FILLED[mode]:
        if name in given:
            raise BadRequest(f"parameters.{name}: is filled by the template's {mode}; leave it out")


def _filled(values: dict[str, str | None], declared: Mapping[str, Any]) -> dict[str, str]:
    return {name: value for name, value in values.items() if name in declared and value is not None}


def _factory_ca(signers: Signers, ca_id: str | None) -> CertificateAuthority:
    ca = signers.factory_ca()
    own = certificate_id_from_pem(ca.certificate_pem)
    if ca_id is not None and ca_id != own:
        raise BadRequest(
            f"{PARAMETERS}.caId {ca_id[:70]}: this service signs with the factory CA only (caId {own})"
        )
    return ca


def pca_arns(signers: Signers, parameters: ProvisioningParameters, with_ca: bool) -> tuple[str, str | None]:
    """(ACM PCA ARN, IoT CA ARN or None) from the ARNs or aliases given."""
    config = signers.config
    pca = parameters.pca_arn
    if pca is None and parameters.pca_alias is not None:
        pca = config.pca_aliases.get(parameters.pca_alias.lower())
        if pca is None:
            raise BadRequest(
                f"{PARAMETERS}.acmpcaCaAlias {parameters.pca_alias!r}: no such alias "
                f"(set CDF_PCA_{parameters.pca_alias.upper()} to the ACM PCA ARN)"
            )
    if pca is None:
        raise BadRequest(f"{PARAMETERS}.acmpcaCaArn: acmpca needs acmpcaCaArn or acmpcaCaAlias")
    iot_ca = parameters.awsiotCaArn
    if iot_ca is None and parameters.awsiotCaAlias is not None:
        iot_ca = config.iot_ca_aliases.get(parameters.awsiotCaAlias.lower())
        if iot_ca is None:
            raise BadRequest(
                f"{PARAMETERS}.awsiotCaAlias {parameters.awsiotCaAlias!r}: no such alias "
                f"(set CDF_CA_{parameters.awsiotCaAlias.upper()} to the IoT CA certificate ARN)"
            )
    if with_ca and iot_ca is None:
        raise BadRequest(
            f"{PARAMETERS}.awsiotCaArn: acmpca mode REGISTER_WITH_CA needs awsiotCaArn or awsiotCaAlias"
        )
    if not with_ca and iot_ca is not None:
        raise BadRequest(
            f"{PARAMETERS}.awsiotCaArn: acmpca mode REGISTER_WITHOUT_CA registers no CA; leave it out"
        )
    return pca, iot_ca


def cdf_material(
    signers: Signers,
    block: CdfBlock,
    parameters: ProvisioningParameters,
    declared: Mapping[str, Any],
    thing_name: str,
    serial: str | None,
) -> certs.Material:
    """The certificate the template's CDF mode makes (nothing for a template without one)."""
    mode = block.mode
    days = (parameters.certInfo and parameters.certInfo.daysExpiry) or signers.config.default_expiry_days
    if mode == CREATE_DEVICE_CERTIFICATE:
        ca = _factory_ca(signers, parameters.caId)
        key = certs.new_key(block.keyAlgorithm)
        subject = certs.subject_name(parameters.certInfo, thing_name, serial)
        certificate = certs.sign_with_ca(ca, key.public_key(), subject, days)
        private, public = certs.key_pems(key)
        pem = certificate.public_bytes(certs.PEM).decode("ascii")
        values = {"CertificatePem": pem, "CaCertificatePem": ca.certificate_pem}
        return certs.Material(
            _filled(values, declared),
            pem,
            private,
            public,
            certs.certificate_id_of(pem),
            None,
            certificate_id_from_pem(ca.certificate_pem),
        )
    if mode == CREATE_DEVICE_AWS_CERTIFICATE:
        material = certs.aws_keys_and_certificate(signers.iot)
        values = {
            "CertificateId": material.certificate_id,
            "CertificateArn": material.certificate_arn,
            "CertificatePem": material.certificate_pem,
        }
        material.parameters = _filled(values, declared)
        return material
    if mode == REGISTER_WITHOUT_CA:
        if parameters.certificatePem is None or parameters.certificateStatus is None:
            missing = "certificatePem" if parameters.certificatePem is None else "certificateStatus"
            raise BadRequest(f"{PARAMETERS}.{missing}: registerDeviceCertificateWithoutCA needs it")
        pem = parameters.certificatePem.replace("\\n", "\n")
        certs.load_certificate(pem, f"{PARAMETERS}.certificatePem")
        certificate_id, arn = certs.register_without_ca(
            signers.iot, pem, parameters.certificateStatus, PARAMETERS
        )
        values = {"CertificateId": certificate_id, "CertificateArn": arn}
        return certs.Material(_filled(values, declared), pem, None, None, certificate_id, arn, None, True)
    if mode == ACMPCA:
        assert block.acmpca is not None
        with_ca = block.acmpca.mode == PCA_REGISTER_WITH_CA
        pca_arn, iot_ca_arn = pca_arns(signers, parameters, with_ca)
        private = public = None
        if parameters.csr is not None:
            csr = parameters.csr.replace("\\n", "\n")
            certs.load_csr(csr, f"{PARAMETERS}.csr")
        else:  # CDF dropped this key and returned a certificate nobody could use; we return it
            key = certs.new_key(block.keyAlgorithm)
            private, public = certs.key_pems(key)
            csr = certs.csr_pem(key, certs.subject_name(parameters.certInfo, thing_name, serial))
        ca_pem = certs.iot_ca_certificate(signers.iot, iot_ca_arn, PARAMETERS) if iot_ca_arn else None
        pem, _chain = certs.pca_issue(signers.acm_pca, pca_arn, csr, days, PARAMETERS)
        if ca_pem is not None:
            certificate_id, arn = certs.register_with_ca(signers.iot, pem, ca_pem, "ACTIVE", "acmpca")
        else:
            certificate_id, arn = certs.register_without_ca(signers.iot, pem, "ACTIVE", "acmpca")
        values = {"CertificateId": certificate_id, "CertificateArn": arn, "CertificatePem": pem}
        return certs.Material(
            _filled(values, declared), pem, private, public, certificate_id, arn, pca_arn, True
        )
    return certs.Material()


def product_material(
    signers: Signers, product: Product, row: Mapping[str, Any], pca_arn: str | None
) -> certs.Material:
    """A catalog product's certificate, made as its bulk runs make them (subject rule, validity)."""
    thing, serial = str(row["thing_name"]), row.get("serial_number")
    mode = product.certificate_mode
    days = product.validity_days
    if mode == "device_csr":
        try:
            _, public_key = load_device_csr_key(str(row.get("csr") or ""))
        except CsrError as error:
            raise BadRequest(f"parameters.csr: {error}") from None
        ca = signers.factory_ca()
        pem = (
            ca.issue_device_certificate(public_key, thing, serial, validity_days=days)
            .public_bytes(certs.PEM)
            .decode()
        )
        return certs.Material(
            {"CertificatePem": pem},
            pem,
            None,
            None,
            certs.certificate_id_of(pem),
            None,
            certificate_id_from_pem(ca.certificate_pem),
        )
    key = certs.new_key(product.key_algorithm)
    private, public = certs.key_pems(key)
    if mode == "aws_issued":  # RegisterThing signs the CSR; its answer carries the certificate
        csr = certs.csr_pem(key, device_subject(thing, serial).name())
        return certs.Material({"CSR": csr}, None, private, public, None, None, "aws")
    if mode == "acm_pca":
        if not pca_arn:
            raise BadRequest(
                f"product {product.model} is acm_pca, and no ACM Private CA is configured "
                "(PIPELINE_ACM_PCA_ARN)"
            )
        csr = certs.csr_pem(key, device_subject(thing, serial).name())
        pem, _chain = certs.pca_issue(signers.acm_pca, pca_arn, csr, days, f"product {product.model}")
        return certs.Material(
            {"CertificatePem": pem}, pem, private, public, certs.certificate_id_of(pem), None, pca_arn
        )
    ca = signers.factory_ca()
    pem = (
        ca.issue_device_certificate(key.public_key(), thing, serial, validity_days=days)
        .public_bytes(certs.PEM)
        .decode()
    )
    if mode == "without_ca":
        certificate_id, arn = certs.register_without_ca(
            signers.iot, pem, "ACTIVE", f"product {product.model}"
        )
        return certs.Material(
            {"CertificateId": certificate_id},
            pem,
            private,
            public,
            certificate_id,
            arn,
            certificate_id_from_pem(ca.certificate_pem),
            True,
        )
    return certs.Material(
        {"CertificatePem": pem},
        pem,
        private,
        public,
        certs.certificate_id_of(pem),
        None,
        certificate_id_from_pem(ca.certificate_pem),
    )
