"""The factory CA: device subjects, certificate fields and extensions, CSR checks, secret-keeping errors."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from include import certificate_authority
from include.certificate_authority import (
    CertificateAuthority,
    certificate_id,
    load_device_csr,
    load_device_csr_key,
)
from include.certificate_template import DeviceCertificateTemplate, DeviceIssuer
from include.errors import CertificateAuthorityError, CsrError
from scripts.generate_manifest import device_csr


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_development()


def test_device_certificate_from_public_key(ca, monkeypatch):
    fixed = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    monkeypatch.setattr(certificate_authority, "utcnow", lambda: fixed)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_device_certificate(key.public_key(), "TH-100-A1", "A1")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "TH-100-A1"
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "A1"
    assert cert.issuer == ca.certificate.subject
    assert cert.not_valid_before_utc == fixed - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == fixed + dt.timedelta(days=3650)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.public_key() == key.public_key()


SUBJECT_CASES = [
    # thing name, serial -> common name, serialNumber (value, ASN.1 type) or None, SAN URI or None
    ("TH-100-A1", "A1", "TH-100-A1", ("A1", _ASN1Type.PrintableString), None),
    ("TH-100-A_1", "A_1", "TH-100-A_1", ("A_1", _ASN1Type.UTF8String), None),
    ("TH-100-a.b-c", "a.b-c", "TH-100-a.b-c", ("a.b-c", _ASN1Type.PrintableString), None),
    ("X:" + "s" * 62, "s" * 64, "X:" + "s" * 62, ("s" * 64, _ASN1Type.PrintableString), None),
    ("T-" + "s" * 65, "s" * 65, None, None, "urn:factory-provisioning:thing:T-" + "s" * 65),
    ("T_" + "9" * 126, "9_" * 64, None, None, "urn:factory-provisioning:thing:T_" + "9" * 126),
    ("thing", None, "thing", None, None),
]


def _issued(ca, path, key, thing_name, serial):
    if path == "builder":
        return ca.issue_device_certificate(key.public_key(), thing_name, serial)
    issuer = DeviceIssuer(ca, DeviceCertificateTemplate.for_authority(ca))
    return x509.load_der_x509_certificate(issuer.issue(key, thing_name, serial))


@pytest.mark.parametrize("path", ["builder", "template"])
@pytest.mark.parametrize(("thing_name", "serial", "common_name", "serial_attribute", "uri"), SUBJECT_CASES)
def test_subject_rule(ca, path, thing_name, serial, common_name, serial_attribute, uri):
    """Every thing name and serial the manifest contract allows makes a valid subject (module docstring)."""
    cert = _issued(ca, path, ec.generate_private_key(ec.SECP256R1()), thing_name, serial)
    (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common_name is None:  # shortened: 55 characters, "-", 8 hex digits of the name's SHA-256
        digest = hashlib.sha256(thing_name.encode()).hexdigest()[:8]
        common_name = f"{thing_name[:55]}-{digest}"
        assert len(common_name) == 64
    assert (cn.value, cn._type) == (common_name, _ASN1Type.UTF8String)
    serials = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    assert [(a.value, a._type) for a in serials] == ([serial_attribute] if serial_attribute else [])
    assert [a.oid for a in cert.subject] == [NameOID.COMMON_NAME] + [NameOID.SERIAL_NUMBER] * len(serials)
    if uri is None:
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    else:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert not extension.critical
        assert extension.value.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
        assert list(cert.extensions)[-1] == extension
    cert.verify_directly_issued_by(ca.certificate)


def test_validity_days_and_the_ca_end(ca, monkeypatch):
    fixed = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    monkeypatch.setattr(certificate_authority, "utcnow", lambda: fixed)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_device_certificate(key.public_key(), "T", validity_days=30)
    assert cert.not_valid_after_utc == fixed + dt.timedelta(days=30)
    cert = ca.issue_device_certificate(key.public_key(), "T", validity_days=365 * 100)
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc  # never past the CA
    with pytest.raises(ValueError, match="at least 1"):
        ca.issue_device_certificate(key.public_key(), "T", validity_days=0)


def test_serials_are_random_and_ids_are_sha256_of_der(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    one, two = (ca.issue_device_certificate(key.public_key(), "T") for _ in range(2))
    assert one.serial_number != two.serial_number
    assert certificate_id(one) == hashlib.sha256(one.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_csr_is_verified_then_signed_with_our_subject(ca):
    cert = ca.issue_from_csr(device_csr("whatever-the-device-said"), "GW-200-G1", "G1")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "GW-200-G1"
    cert.verify_directly_issued_by(ca.certificate)


def test_csr_checks():
    with pytest.raises(CsrError) as bad:
        load_device_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    assert bad.value.code == "csr_unparseable"
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(CsrError) as small:
        load_device_csr(device_csr("x", weak))
    assert small.value.code == "csr_key_unsupported"
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(CsrError) as curve:
        load_device_csr(device_csr("x", k1))
    assert curve.value.code == "csr_key_unsupported"
    # A CSR whose content was changed after signing.
    good = x509.load_pem_x509_csr(device_csr("GW-200-ABC").encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[der.find(b"GW-200-ABC")] ^= 0x01
    import base64

    tampered = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der)).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CsrError) as signature:
        load_device_csr(tampered)
    assert signature.value.code == "csr_signature_invalid"


def test_rsa_device_keys_get_key_encipherment(ca):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = ca.issue_device_certificate(key.public_key(), "T")
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_verification_certificate_carries_the_registration_code(ca):
    pem = ca.issue_verification_certificate("ab" * 32)
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ab" * 32
    cert.verify_directly_issued_by(ca.certificate)


def test_loading_round_trip_and_errors_never_show_the_key(ca):
    loaded = CertificateAuthority.from_pem(ca.certificate_pem, ca.private_key_pem())
    assert loaded.certificate == ca.certificate
    assert "PRIVATE" not in repr(loaded)
    other = CertificateAuthority.create_development("Other")
    with pytest.raises(CertificateAuthorityError, match="does not belong") as mismatch:
        CertificateAuthority.from_pem(ca.certificate_pem, other.private_key_pem())
    assert "BEGIN" not in str(mismatch.value)
    with pytest.raises(CertificateAuthorityError, match="not an unencrypted PEM private key") as garbage:
        CertificateAuthority.from_pem(ca.certificate_pem, "-----BEGIN PRIVATE KEY-----\nsecretstuff\n")
    assert "secretstuff" not in str(garbage.value)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.issue_device_certificate(leaf_key.public_key(), "T")
    leaf_key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CertificateAuthorityError, match="CA:TRUE"):
        CertificateAuthority.from_pem(leaf.public_bytes(serialization.Encoding.PEM), leaf_key_pem)


def test_csr_signed_with_sha256_builder_helper_is_valid():
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA384())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    assert load_device_csr(pem).is_signature_valid
    parsed, public_key = load_device_csr_key(pem)
    assert parsed == csr and public_key == key.public_key()
