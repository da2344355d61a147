"""Device certificates from a per-CA DER template: only serial, subject, validity and public key vary.

CertificateBuilder re-checks and re-encodes every field of every certificate; a chunk's certificates differ
only in four fields, so the rest (version, algorithms, issuer, extensions) is cut once from a prototype that
CertificateBuilder made, and each certificate is those bytes around the four fields, signed once. The
template exists only when reassembling the prototype gives back its exact TBSCertificate; it covers EC
device keys and subjects without a subjectAltName, and `DeviceIssuer` uses CertificateBuilder for the rest.
"""

from __future__ import annotations

import binascii
import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from include.certificate_authority import (
    DEVICE_VALIDITY_DAYS,
    CertificateAuthority,
    DeviceSubject,
    device_subject,
    new_serial_number,
    signing_hash,
)

SEQUENCE, SET, INTEGER, BIT_STRING = 0x30, 0x31, 0x02, 0x03
UTF8_STRING, PRINTABLE_STRING, UTC_TIME, GENERALIZED_TIME = 0x0C, 0x13, 0x17, 0x18
VERSION_3 = bytes.fromhex("a003020102")
COMMON_NAME_OID = bytes.fromhex("0603550403")  # 2.5.4.3
SERIAL_NUMBER_OID = bytes.fromhex("0603550405")  # 2.5.4.5
# An OpenSSL PKCS#8 P-256 key: header, 32-byte secret, then the public point as ECPrivateKey's publicKey.
P256_PKCS8_HEAD = bytes.fromhex("308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420")
P256_PKCS8_POINT = bytes.fromhex("a144034200")
P256_SPKI_HEAD = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
# PKCS#8 PEM's armour lines, spelled from their parts: the source holds no key-shaped text.
PKCS8_PEM_HEAD, PKCS8_PEM_TAIL = (b"-----%s PRIVATE KEY-----\n" % word for word in (b"BEGIN", b"END"))
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
EC_KEYS = (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)
PRIVATE_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)
DeviceKey = CertificatePublicKeyTypes | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def der_header(tag: int, length: int) -> bytes:
    """A DER tag and definite length (short form below 128, else the fewest length octets)."""
    if length < 0x80:
        return bytes((tag, length))
    if length < 0x100:
        return bytes((tag, 0x81, length))
    if length < 0x10000:
        return bytes((tag, 0x82, length >> 8, length & 0xFF))
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big")


def der_tlv(tag: int, content: bytes) -> bytes:
    return der_header(tag, len(content)) + content


def der_integer(value: int) -> bytes:
    """A non-negative DER INTEGER: minimal octets, a leading zero when the top bit would read as a sign."""
    return der_tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_time(moment: dt.datetime) -> bytes:
    """UTCTime before 2050, GeneralizedTime from then on (RFC 5280 4.1.2.5), in UTC to the second."""
    moment = moment.astimezone(dt.UTC)
    if moment.year < 2050:
        return der_tlv(UTC_TIME, moment.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return der_tlv(GENERALIZED_TIME, moment.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def der_validity(not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    return der_tlv(SEQUENCE, der_time(not_before) + der_time(not_after))


def _rdn_heads(oid: bytes, tag: int) -> list[bytes]:
    """RelativeDistinguishedName SET { SEQUENCE { oid, tag+length } } before a value, per value length.

    Up to 117 bytes every length inside the RDN takes one octet, so each head is a constant.
    """
    return [bytes((SET, size + 9, SEQUENCE, size + 7)) + oid + bytes((tag, size)) for size in range(118)]


RDN_HEADS = {
    (oid, tag): _rdn_heads(oid, tag)
    for oid, tag in (
        (COMMON_NAME_OID, UTF8_STRING),
        (SERIAL_NUMBER_OID, PRINTABLE_STRING),
        (SERIAL_NUMBER_OID, UTF8_STRING),
    )
}


def _single_rdn(oid: bytes, tag: int, text: str) -> bytes:
    value = text.encode("utf-8")
    heads = RDN_HEADS[oid, tag]
    if len(value) < len(heads):
        return heads[len(value)] + value
    return der_tlv(SET, der_tlv(SEQUENCE, oid + der_tlv(tag, value)))


def subject_der(subject: DeviceSubject) -> bytes:
    """The Name of a device subject: one single-valued RDN per attribute, commonName first."""
    rdns = _single_rdn(COMMON_NAME_OID, UTF8_STRING, subject.common_name)
    if subject.serial_number is not None:
        kind = PRINTABLE_STRING if subject.serial_printable else UTF8_STRING
        rdns += _single_rdn(SERIAL_NUMBER_OID, kind, subject.serial_number)
    return der_header(SEQUENCE, len(rdns)) + rdns


def pem(der: bytes, label: str) -> str:
    """PEM as cryptography writes it: 64 base64 characters (48 bytes) per line."""
    lines = b"".join([binascii.b2a_base64(der[i : i + 48]) for i in range(0, len(der), 48)])
    return f"-----BEGIN {label}-----\n{lines.decode('ascii')}-----END {label}-----\n"


def p256_spki(private_key_pem: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo DER of a P-256 key, read from its PKCS#8 PEM (None for another layout).

    Cheaper than asking the key again: the PKCS#8 encoding already holds the public point.
    """
    der = binascii.a2b_base64(private_key_pem[len(PKCS8_PEM_HEAD) : -len(PKCS8_PEM_TAIL)])
    if len(der) != 138 or not der.startswith(P256_PKCS8_HEAD) or der[68:73] != P256_PKCS8_POINT:
        return None
    return P256_SPKI_HEAD + der[73:]


def _children(der: bytes) -> list[bytes]:
    """The encoded elements inside one DER constructed value (the whole of `der`)."""

    def end_of_header(at: int) -> tuple[int, int]:
        length = der[at + 1]
        start = at + 2
        if length & 0x80:
            size = length & 0x7F
            length, start = int.from_bytes(der[start : start + size], "big"), start + size
        return start, start + length

    position, end = end_of_header(0)
    elements = []
    while position < end:
        _, stop = end_of_header(position)
        elements.append(der[position:stop])
        position = stop
    return elements


def _signer(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    """What CertificateBuilder.sign does with this key: ECDSA, or RSA PKCS#1 v1.5, with its hash."""
    algorithm = signing_hash(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = ec.ECDSA(algorithm)
        return lambda data: key.sign(data, ecdsa)
    pkcs1 = padding.PKCS1v15()
    return lambda data: key.sign(data, pkcs1, algorithm)


@dataclass(frozen=True)
class DeviceCertificateTemplate:
    """The constant DER of one CA's EC device certificates (without subjectAltName)."""

    signature_and_issuer: bytes  # TBSCertificate.signature AlgorithmIdentifier + issuer Name
    extensions: bytes  # the [3] EXPLICIT Extensions
    signature_algorithm: bytes  # Certificate.signatureAlgorithm
    sign: Callable[[bytes], bytes] = field(repr=False)

    @classmethod
    def for_authority(cls, ca: CertificateAuthority) -> DeviceCertificateTemplate | None:
        """The template cut from a CertificateBuilder prototype; None when reassembly would differ."""
        key = ec.generate_private_key(ec.SECP256R1())
        thing_name, serial = "TEMPLATE-PROTOTYPE", "PROTO_1"
        prototype = ca.issue_device_certificate(key.public_key(), thing_name, serial)
        tbs = prototype.tbs_certificate_bytes
        parts = _children(tbs)
        if len(parts) != 8 or parts[0] != VERSION_3 or parts[7][:1] != b"\xa3":
            return None
        template = cls(
            parts[2] + parts[3], parts[7], _children(prototype.public_bytes(DER))[1], _signer(ca.private_key)
        )
        spki = key.public_key().public_bytes(DER, SPKI)
        rebuilt = template.tbs(
            prototype.serial_number,
            subject_der(device_subject(thing_name, serial)),
            der_validity(prototype.not_valid_before_utc, prototype.not_valid_after_utc),
            spki,
        )
        if rebuilt != tbs:
            return None
        certificate = x509.load_der_x509_certificate(template.certificate(1, parts[5], parts[4], spki))
        try:
            certificate.verify_directly_issued_by(ca.certificate)
        except (InvalidSignature, ValueError, TypeError):
            return None
        return template

    def tbs(self, serial_number: int, subject: bytes, validity: bytes, spki: bytes) -> bytes:
        content = b"".join(
            (
                VERSION_3,
                der_integer(serial_number),
                self.signature_and_issuer,
                validity,
                subject,
                spki,
                self.extensions,
            )
        )
        return der_header(SEQUENCE, len(content)) + content

    def certificate(self, serial_number: int, subject: bytes, validity: bytes, spki: bytes) -> bytes:
        """The Certificate DER: TBSCertificate, algorithm, and the one signature as a BIT STRING."""
        tbs = self.tbs(serial_number, subject, validity, spki)
        signature = self.sign(tbs)
        bits = der_header(BIT_STRING, len(signature) + 1)
        size = len(tbs) + len(self.signature_algorithm) + len(bits) + 1 + len(signature)
        return b"".join((der_header(SEQUENCE, size), tbs, self.signature_algorithm, bits, b"\0", signature))


@functools.cache
def _is_ec(kind: type) -> bool:
    """Whether keys of this type are EC (asked per type: isinstance on these ABCs costs per device)."""
    return issubclass(kind, EC_KEYS)


def _public_key(key: DeviceKey) -> CertificatePublicKeyTypes:
    return key.public_key() if isinstance(key, PRIVATE_KEYS) else key


class DeviceIssuer:
    """Device certificates (DER) of one CA, issued at one moment: from the template when it covers them."""

    def __init__(self, ca: CertificateAuthority, template: DeviceCertificateTemplate | None) -> None:
        self.ca, self.template = ca, template
        self._validity: dict[int, bytes] = {}  # validity days -> Validity DER, fixed at first use

    def issue(
        self,
        key: DeviceKey,
        thing_name: str,
        serial_number: str | None,
        validity_days: int = DEVICE_VALIDITY_DAYS,
        spki: bytes | None = None,
    ) -> bytes:
        """The certificate of a device key: its public key, or the private key we made for it.

        `spki`, the key's SubjectPublicKeyInfo DER when the caller has it, saves encoding it again.
        """
        subject = device_subject(thing_name, serial_number)
        if self.template is None or subject.thing_uri is not None or not _is_ec(type(key)):
            certificate = self.ca.issue_device_certificate(
                _public_key(key), thing_name, serial_number, validity_days=validity_days
            )
            return certificate.public_bytes(DER)
        period = self._validity.get(validity_days)
        if period is None:
            period = self._validity[validity_days] = der_validity(*self.ca.device_validity(validity_days))
        if spki is None:
            spki = _public_key(key).public_bytes(DER, SPKI)
        return self.template.certificate(new_serial_number(), subject_der(subject), period, spki)
