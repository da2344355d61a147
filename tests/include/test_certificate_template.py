"""The DER template makes byte for byte what CertificateBuilder makes, and steps aside where it cannot."""

from __future__ import annotations

import datetime as dt
import random
import string

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from include import certificate_authority, certificate_template
from include.certificate_authority import CertificateAuthority, device_subject
from include.certificate_template import (
    DeviceCertificateTemplate,
    DeviceIssuer,
    der_header,
    der_integer,
    der_validity,
    p256_spki,
    pem,
    subject_der,
)

DER, PEM = serialization.Encoding.DER, serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
THING_ALPHABET = string.ascii_letters + string.digits + ":_-"
SERIAL_ALPHABET = string.ascii_letters + string.digits + "._-"


def _ca(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: x509.Name) -> CertificateAuthority:
    """A CA with the given key and subject (an empty subject makes device TBSCertificates short)."""
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365 * 30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=certificate, private_key=key)


@pytest.fixture(scope="module")
def authorities() -> dict[str, CertificateAuthority]:
    named = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Factory Test CA")])
    return {
        "p256": CertificateAuthority.create_development(),
        "p384": _ca(ec.generate_private_key(ec.SECP384R1()), named),
        "rsa": _ca(rsa.generate_private_key(public_exponent=65537, key_size=2048), named),
        "empty-subject": _ca(ec.generate_private_key(ec.SECP256R1()), x509.Name([])),
    }


def _reference(
    ca: CertificateAuthority, subject: x509.Name, public_key: object, serial: int, validity_days: int
) -> x509.Certificate:
    """What CertificateBuilder makes of the same fields, the extension list spelled out independently."""
    not_before, not_after = ca.device_validity(validity_days)
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.private_key, certificate_authority.signing_hash(ca.private_key))
    )


def _serial(rng: random.Random) -> int:
    """A positive serial of 1 to 159 bits whose top bit is set: a leading zero octet when bits % 8 == 0."""
    bits = rng.choice([8, 16, 64, 152, 159, rng.randint(1, 159)])
    return (1 << (bits - 1)) | rng.getrandbits(bits - 1)


@pytest.mark.parametrize("which", ["p256", "p384", "rsa", "empty-subject"])
def test_template_tbs_equals_certificate_builder(authorities, which, monkeypatch):
    ca = authorities[which]
    template = DeviceCertificateTemplate.for_authority(ca)
    assert template is not None
    rng = random.Random(which)
    curves = [ec.SECP256R1(), ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()]
    subject_forms, tbs_forms, leading_zero = set(), set(), 0  # second octet: a length or its size
    for _ in range(150):
        thing = "".join(rng.choices(THING_ALPHABET, k=rng.randint(1, 64)))
        serial = rng.choice([None, "", "".join(rng.choices(SERIAL_ALPHABET, k=rng.randint(1, 70)))])
        key = ec.generate_private_key(rng.choice(curves))
        number = _serial(rng)
        days = rng.choice([1, 30, 3650, 9000, 20000])  # 9000 days: GeneralizedTime; 20000: capped by the CA
        at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randint(0, 10**8))
        monkeypatch.setattr(certificate_authority, "utcnow", lambda at=at: at)
        monkeypatch.setattr(certificate_authority, "new_serial_number", lambda number=number: number)
        monkeypatch.setattr(certificate_template, "new_serial_number", lambda number=number: number)

        built = ca.issue_device_certificate(key.public_key(), thing, serial, validity_days=days)
        subject = subject_der(device_subject(thing, serial))
        spki = key.public_key().public_bytes(DER, SPKI)
        tbs = template.tbs(number, subject, der_validity(*ca.device_validity(days)), spki)
        assert tbs == built.tbs_certificate_bytes
        assert tbs == _reference(ca, built.subject, key.public_key(), number, days).tbs_certificate_bytes

        issued = x509.load_der_x509_certificate(DeviceIssuer(ca, template).issue(key, thing, serial, days))
        assert issued.tbs_certificate_bytes == tbs
        issued.verify_directly_issued_by(ca.certificate)
        subject_forms.add(subject[1] if subject[1] & 0x80 else 0)
        tbs_forms.add(tbs[1])
        leading_zero += number.bit_length() % 8 == 0
    assert subject_forms == {0, 0x81}  # Names both below 128 bytes (short form) and from 128 on
    assert leading_zero > 10
    if which == "empty-subject":  # TBSCertificates both below 256 bytes and from 256 on
        assert {0x81, 0x82} <= tbs_forms


def test_template_takes_any_subject_length(authorities):
    """Subjects whose total length crosses 127/128 and 255/256 bytes, against CertificateBuilder."""
    ca = authorities["p256"]
    template = DeviceCertificateTemplate.for_authority(ca)
    assert template is not None
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(DER, SPKI)
    sizes = set()
    for length in range(100, 260):
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x" * length)])
        reference = _reference(ca, name, key.public_key(), 12345, 3650)
        validity = der_validity(reference.not_valid_before_utc, reference.not_valid_after_utc)
        subject = name.public_bytes()
        assert template.tbs(12345, subject, validity, spki) == reference.tbs_certificate_bytes
        sizes.add(len(subject))
    assert {127, 128, 255, 256} <= sizes


def test_der_primitives():
    assert der_header(0x30, 0) == b"\x30\x00"
    assert der_header(0x30, 127) == b"\x30\x7f"
    assert der_header(0x30, 128) == b"\x30\x81\x80"
    assert der_header(0x30, 255) == b"\x30\x81\xff"
    assert der_header(0x30, 256) == b"\x30\x82\x01\x00"
    assert der_header(0x30, 65536) == b"\x30\x83\x01\x00\x00"
    assert der_integer(0) == b"\x02\x01\x00"
    assert der_integer(127) == b"\x02\x01\x7f"
    assert der_integer(128) == b"\x02\x02\x00\x80"
    assert der_integer(256) == b"\x02\x02\x01\x00"
    assert der_integer((1 << 159) - 1) == b"\x02\x14\x7f" + b"\xff" * 19
    assert der_integer(1 << 151) == b"\x02\x14\x00\x80" + b"\x00" * 18


def test_pem_and_spki_match_cryptography(authorities):
    ca = authorities["p256"]
    for _ in range(20):
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        assert p256_spki(key_pem) == key.public_key().public_bytes(DER, SPKI)
        certificate = ca.issue_device_certificate(key.public_key(), "TH-100-" + "9" * random.randint(1, 50))
        assert pem(certificate.public_bytes(DER), "CERTIFICATE") == certificate.public_bytes(PEM).decode()
    other = ec.generate_private_key(ec.SECP384R1())
    assert (
        p256_spki(other.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        is None
    )


def test_issuer_falls_back_to_the_builder_beyond_the_template(authorities):
    ca = authorities["p256"]
    issuer = DeviceIssuer(ca, DeviceCertificateTemplate.for_authority(ca))
    long_name = "GW-200-" + "A" * 100
    certificate = x509.load_der_x509_certificate(
        issuer.issue(ec.generate_private_key(ec.SECP256R1()), long_name, "A" * 100)
    )
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:factory-provisioning:thing:{long_name}"
    ]
    certificate.verify_directly_issued_by(ca.certificate)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = x509.load_der_x509_certificate(issuer.issue(rsa_key, "LK-300-1", "1"))
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert certificate.public_key() == rsa_key.public_key()
    certificate.verify_directly_issued_by(ca.certificate)


def test_no_template_when_reassembly_differs(authorities, monkeypatch):
    """Should an encoding here ever disagree with CertificateBuilder, the template is refused, not used."""
    ca = authorities["p256"]
    monkeypatch.setattr(certificate_template, "der_time", lambda moment: b"\x17\x00")
    assert DeviceCertificateTemplate.for_authority(ca) is None
    issuer = DeviceIssuer(ca, None)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = x509.load_der_x509_certificate(issuer.issue(key, "TH-100-1", "1"))
    certificate.verify_directly_issued_by(ca.certificate)
