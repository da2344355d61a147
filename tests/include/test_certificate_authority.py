"""The factory CA: issued certificates' fields and extensions, CSR checks, errors that keep secrets."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from include import certificate_authority
from include.certificate_authority import CertificateAuthority, certificate_id, load_device_csr
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
    assert cert.not_valid_after_utc == fixed + dt.timedelta(days=365 * 20)
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


def test_serials_are_random_and_ids_are_sha256_of_der(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    one, two = (ca.issue_device_certificate(key.public_key(), "T") for _ in range(2))
    assert one.serial_number != two.serial_number
    import hashlib

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
    assert load_device_csr(csr.public_bytes(serialization.Encoding.PEM).decode()).is_signature_valid
