"""X.509 helpers for the emulator: parsing, certificate ids and the stand-in for Amazon's issuing CA."""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# What AWS-issued device certificates carry (decoded from a real one, see aws-iot-facts.md 4.5).
AMAZON_ISSUER_OU = "Amazon Web Services O=Amazon.com Inc. L=Seattle ST=Washington C=US"
AMAZON_DEVICE_SUBJECT_CN = "AWS IoT Certificate"
AMAZON_DEVICE_NOT_AFTER = dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
# Issuer of real claim certificates (decoded from the CLI example, aws-iot-facts.md 3.2).
CLAIM_ISSUER = (
    (NameOID.COUNTRY_NAME, "US"),
    (NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
    (NameOID.LOCALITY_NAME, "Seattle"),
    (NameOID.ORGANIZATION_NAME, "Amazon.com Inc."),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "Amazon IoT Provisioning"),
    (NameOID.SERIAL_NUMBER, "1.0"),
)
# Key types AWS accepts in a CSR: RSA >= 2048 bits or ECC P-256/P-384/P-521.
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class X509Error(ValueError):
    """A certificate or CSR that cannot be used; the message is safe to return to the caller."""


def load_certificate(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError) as exc:
        raise X509Error("The certificate is not a valid PEM encoded X.509 certificate") from exc


def load_csr(pem: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError) as exc:
        raise X509Error("The certificate signing request is not a valid PEM encoded CSR") from exc
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise X509Error("RSA keys in a certificate signing request must be at least 2048 bits")
    elif not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _ACCEPTED_CURVES)):
        raise X509Error(
            "The certificate signing request key must be RSA (2048 bits or more) or ECC P-256/P-384/P-521"
        )
    if not csr.is_signature_valid:
        raise X509Error("The certificate signing request signature is not valid")
    return csr


def certificate_id(cert: x509.Certificate) -> str:
    """AWS's certificate id: lowercase hex SHA-256 of the DER encoding."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def public_key_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def validity(cert: x509.Certificate) -> dict[str, float]:
    return {
        "notBefore": cert.not_valid_before_utc.timestamp(),
        "notAfter": cert.not_valid_after_utc.timestamp(),
    }


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        # X.509 v1 certificates carry no extensions; AWS accepts them as CAs when self-consistent.
        return cert.version is x509.Version.v1


def is_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer`` names and signed ``cert`` (one signature check)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def stand_in_amazon_ca(account_id: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A stand-in for Amazon's issuing CA, stable per account (its key derives from the account id)."""
    seed = int.from_bytes(hashlib.sha256(f"iot-emulator-amazon-ca:{account_id}".encode()).digest(), "big")
    key = ec.derive_private_key(seed % (2**255 - 19) + 1, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, AMAZON_ISSUER_OU)])
    not_before = dt.datetime(2015, 5, 28, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(seed >> 100)
        .not_valid_before(not_before)
        .not_valid_after(AMAZON_DEVICE_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def stand_in_claim_ca(account_id: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The issuer of claim certificates, named as Amazon's provisioning CA and stable per account.

    A CA certificate (not only a key) so that the MQTT endpoint's TLS can trust the claims it signs.
    """
    seed = int.from_bytes(hashlib.sha256(f"iot-emulator-claim-ca:{account_id}".encode()).digest(), "big")
    key = ec.derive_private_key(seed % (2**255 - 19) + 1, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in CLAIM_ISSUER])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(seed >> 100)
        .not_valid_before(dt.datetime(2015, 5, 28, tzinfo=dt.UTC))
        .not_valid_after(AMAZON_DEVICE_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_device_certificate(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: float,
) -> x509.Certificate:
    """A device certificate shaped like AWS-issued ones (CN "AWS IoT Certificate", valid to 2049)."""
    not_before = dt.datetime.fromtimestamp(int(now), tz=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AMAZON_DEVICE_SUBJECT_CN)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(AMAZON_DEVICE_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def new_rsa_key_pair() -> tuple[rsa.RSAPrivateKey, str, str]:
    """RSA-2048 key pair as CreateKeysAndCertificate returns it: (key, public PEM, private PEM in PKCS#1)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return key, public_pem.decode("ascii"), private_pem.decode("ascii")
