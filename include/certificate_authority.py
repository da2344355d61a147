"""The factory CA: load or create it, issue device certificates from a public key or a verified CSR.

Device certificates follow one subject rule, total over every thing name ([a-zA-Z0-9:_-]{1,128}) and serial
([A-Za-z0-9][A-Za-z0-9._-]{0,127}) the manifest contract allows (`device_subject`):

- commonName, a UTF8String: the thing name when it has at most 64 characters (X.520's upper bound);
  otherwise its first 55 characters + "-" + the first 8 hex digits of its SHA-256 (64 characters), and
  then the full thing name is also in a subjectAltName URI `urn:factory-provisioning:thing:<thing name>`.
- serialNumber, after it: the device serial as a PrintableString when its characters allow (every one
  but "_"), as a UTF8String otherwise; omitted when empty or longer than 64 characters (the full serial is
  in the thing name).
- Nothing from a CSR's own subject.

Extensions, in this order: authorityKeyIdentifier; basicConstraints CA:FALSE and keyUsage (digitalSignature,
plus keyEncipherment for RSA keys), both critical; extendedKeyUsage clientAuth; subjectAltName only for a
shortened commonName. Validity: from 5 minutes before issuing for `validity_days` (default 3650), never past
the CA's own notAfter. include.certificate_template assembles the same bytes from a DER template.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from include.errors import CertificateAuthorityError, CsrError

DEVICE_VALIDITY_DAYS = 3650
CA_VALIDITY_DAYS = 365 * 20  # outlives the certificates it signs (theirs are cut at the CA's end)
CLOCK_SKEW = dt.timedelta(minutes=5)
# Key types AWS IoT accepts for device certificates (CreateCertificateFromCsr documentation).
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS = 2048
# X.520 upper bounds (ub-common-name, ub-serial-number), in characters.
MAX_COMMON_NAME = MAX_SERIAL_NUMBER = 64
SHORTENED_PREFIX, DIGEST_HEX = 55, 8
THING_URI_PREFIX = "urn:factory-provisioning:thing:"
PRINTABLE_STRING = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]*")


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A KeyUsage extension allowing only the named usages."""
    usages = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment")
    usages += ("key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{usage: usage in allowed for usage in usages})


# Extensions every device certificate carries, built once (their constructors' checks cost per device).
END_ENTITY = x509.BasicConstraints(ca=False, path_length=None)
EC_DEVICE_KEY_USAGE = _key_usage("digital_signature")  # ECDSA keys only sign
RSA_DEVICE_KEY_USAGE = _key_usage("digital_signature", "key_encipherment")  # RSA also transports keys
CLIENT_AUTH = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])


def utcnow() -> dt.datetime:
    """The one clock of this module (tests replace it)."""
    return dt.datetime.now(dt.UTC)


def new_serial_number() -> int:
    """Certificate serial numbers: 159 random bits like x509.random_serial_number (tests replace it)."""
    return int.from_bytes(os.urandom(20), "big") >> 1


def certificate_id(certificate: x509.Certificate) -> str:
    """AWS IoT's certificate id: lowercase hex SHA-256 of the DER encoding."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_id_from_pem(pem: str | bytes) -> str:
    data = pem.encode() if isinstance(pem, str) else pem
    return certificate_id(x509.load_pem_x509_certificate(data))


def signing_hash(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> hashes.HashAlgorithm:
    """The hash this CA key signs with: SHA-384/512 for P-384/521 keys, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP521R1):
        return hashes.SHA512()
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


class DeviceSubject(NamedTuple):
    """What the subject rule (module docstring) makes of one thing name and serial."""

    common_name: str
    serial_number: str | None  # None: not in the subject
    serial_printable: bool  # PrintableString, else UTF8String
    thing_uri: str | None  # the subjectAltName URI, set only when the common name is shortened

    def name(self) -> x509.Name:
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)]
        if self.serial_number is not None:
            kind = _ASN1Type.PrintableString if self.serial_printable else _ASN1Type.UTF8String
            # cryptography would always choose PrintableString for serialNumber, which cannot hold "_".
            attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, self.serial_number, _type=kind))
        return x509.Name(attributes)


def device_subject(thing_name: str, serial_number: str | None) -> DeviceSubject:
    """A device certificate's subject for this thing name and serial (the rule of the module docstring)."""
    if not thing_name:
        raise CertificateAuthorityError("the thing name is empty")
    common_name, thing_uri = thing_name, None
    if len(thing_name) > MAX_COMMON_NAME:
        digest = hashlib.sha256(thing_name.encode("utf-8")).hexdigest()[:DIGEST_HEX]
        common_name = f"{thing_name[:SHORTENED_PREFIX]}-{digest}"
        thing_uri = THING_URI_PREFIX + thing_name
    if not serial_number or len(serial_number) > MAX_SERIAL_NUMBER:
        return DeviceSubject(common_name, None, False, thing_uri)
    printable = PRINTABLE_STRING.fullmatch(serial_number) is not None
    return DeviceSubject(common_name, serial_number, printable, thing_uri)


def device_csr_der(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, thing_name: str, serial: str | None
) -> bytes:
    """The CSR (DER) the pipeline makes for a key it generated when AWS or ACM PCA signs: same subject rule,
    the thing name as a subjectAltName URI when the common name is shortened."""
    subject = device_subject(thing_name, serial)
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject.name())
    if subject.thing_uri:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(subject.thing_uri)])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def check_device_key(public_key: object) -> None:
    """Refuse key types AWS IoT would refuse (RSA < 2048, curves other than P-256/384/521, EdDSA)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise CsrError(
                "csr_key_unsupported", f"the CSR has an RSA-{public_key.key_size} key; AWS IoT needs ≥2048"
            )
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ACCEPTED_CURVES):
            raise CsrError(
                "csr_key_unsupported",
                f"the CSR uses curve {public_key.curve.name}; AWS IoT accepts P-256/384/521",
            )
        return
    raise CsrError(
        "csr_key_unsupported", f"the CSR has a {type(public_key).__name__}; AWS IoT accepts RSA or ECDSA"
    )


def load_device_csr_key(pem: str) -> tuple[x509.CertificateSigningRequest, CertificatePublicKeyTypes]:
    """Parse a device CSR, check its key type and self-signature; CsrError carries the reason code.

    The one definition of the CSR checks; returns the public key too, read once.
    """
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise CsrError("csr_unparseable", "the csr column is not a PEM certificate signing request") from None
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CsrError("csr_unparseable", "the CSR's public key cannot be read") from None
    check_device_key(public_key)
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CsrError("csr_signature_invalid", "the CSR's signature does not verify with its own public key")
    return csr, public_key


def load_device_csr(pem: str) -> x509.CertificateSigningRequest:
    """Parse a device CSR and check its self-signature and key type; CsrError carries the reason code."""
    return load_device_csr_key(pem)[0]


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its private key. Never log or repr the key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    def __repr__(self) -> str:
        return f"CertificateAuthority(subject={self.certificate.subject.rfc4514_string()!r})"

    @classmethod
    def from_pem(cls, certificate_pem: str | bytes, private_key_pem: str | bytes) -> CertificateAuthority:
        """Load a CA; checks that the key belongs to the certificate and that it is a CA certificate."""
        cert_bytes = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
        key_bytes = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        try:
            certificate = x509.load_pem_x509_certificate(cert_bytes)
        except ValueError:
            raise CertificateAuthorityError("the CA certificate is not a PEM X.509 certificate") from None
        try:
            key = serialization.load_pem_private_key(key_bytes, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # Say nothing about the key's content: it is a secret.
            raise CertificateAuthorityError(
                "the CA private key is not an unencrypted PEM private key"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CertificateAuthorityError("the CA private key must be an EC or RSA key")
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(
            serialization.Encoding.DER, public
        ) != certificate.public_key().public_bytes(serialization.Encoding.DER, public):
            raise CertificateAuthorityError("the CA private key does not belong to the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateAuthorityError("the CA certificate lacks basicConstraints CA:TRUE")
        return cls(certificate=certificate, private_key=key)

    @classmethod
    def create_development(
        cls,
        common_name: str = "Factory Development CA",
        organization: str = "Example Devices Ltd",
        validity_days: int = CA_VALIDITY_DAYS,
    ) -> CertificateAuthority:
        """A new self-signed ECDSA P-256 CA (bootstrap's development CA, and manage_factory_ca's `create`)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            ]
        )
        now = utcnow()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(new_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate=certificate, private_key=key)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def private_key_pem(self) -> str:
        """The CA key as unencrypted PKCS8 PEM: for storing it in a secret, never for logs."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")

    def device_validity(self, validity_days: int = DEVICE_VALIDITY_DAYS) -> tuple[dt.datetime, dt.datetime]:
        """(notBefore, notAfter) of a certificate issued now, to the second (X.509 holds no fractions)."""
        if validity_days < 1:
            raise ValueError(f"validity_days must be at least 1, not {validity_days}")
        now = utcnow().replace(microsecond=0)
        not_after = now + dt.timedelta(days=validity_days)
        return now - CLOCK_SKEW, min(not_after, self.certificate.not_valid_after_utc)

    def _builder(self, subject: x509.Name, public_key: object, validity_days: int) -> x509.CertificateBuilder:
        """Fields every issued certificate shares; each issuing path adds only its own extensions."""
        not_before, not_after = self.device_validity(validity_days)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(new_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(self._authority_key_identifier, critical=False)
        )

    @property
    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        cached = self.__dict__.get("_aki")
        if cached is None:
            try:
                ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                cached = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
            except x509.ExtensionNotFound:
                cached = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key())
            object.__setattr__(self, "_aki", cached)
        return cached

    def issue_device_certificate(
        self,
        public_key: object,
        thing_name: str,
        serial_number: str | None = None,
        *,
        validity_days: int = DEVICE_VALIDITY_DAYS,
    ) -> x509.Certificate:
        """A TLS client certificate for a device key, straight from its public key (no CSR round trip)."""
        subject = device_subject(thing_name, serial_number)
        san = None
        if subject.thing_uri is not None:
            san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(subject.thing_uri)])
        return self.issue_certificate(public_key, subject.name(), validity_days=validity_days, san=san)

    def issue_certificate(
        self,
        public_key: object,
        subject: x509.Name,
        *,
        validity_days: int = DEVICE_VALIDITY_DAYS,
        san: x509.SubjectAlternativeName | None = None,
    ) -> x509.Certificate:
        """A device (TLS client) certificate of any subject: what every device certificate of this CA has."""
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        builder = (
            self._builder(subject, public_key, validity_days)
            .add_extension(END_ENTITY, critical=True)
            .add_extension(RSA_DEVICE_KEY_USAGE if is_rsa else EC_DEVICE_KEY_USAGE, critical=True)
            .add_extension(CLIENT_AUTH, critical=False)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(self.private_key, signing_hash(self.private_key))

    def issue_from_csr(
        self,
        csr: x509.CertificateSigningRequest | str,
        thing_name: str,
        serial_number: str | None = None,
        *,
        validity_days: int = DEVICE_VALIDITY_DAYS,
    ) -> x509.Certificate:
        """Sign a device CSR after checking its signature and key; the subject is set by us, not the CSR."""
        if isinstance(csr, str):
            csr = load_device_csr(csr)
        elif not csr.is_signature_valid:
            raise CsrError(
                "csr_signature_invalid", "the CSR's signature does not verify with its own public key"
            )
        return self.issue_device_certificate(
            csr.public_key(), thing_name, serial_number, validity_days=validity_days
        )

    def issue_verification_certificate(self, registration_code: str) -> str:
        """The certificate RegisterCACertificate wants: CN = registration code, signed by this CA (PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_code)])
        certificate = (
            self._builder(subject, key.public_key(), DEVICE_VALIDITY_DAYS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.private_key, signing_hash(self.private_key))
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
