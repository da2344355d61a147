"""CMS EnvelopedData (RFC 5652) around the key bundle's archive: what `openssl cms -decrypt` opens.

The archive is encrypted once with a random AES-256-CBC key, which is wrapped (RSA PKCS#1 v1.5 key
transport: what cryptography's PKCS7EnvelopeBuilder writes) for each recipient certificate: one for the
factory line, two while it rotates its key. The recipient is named by issuer and serial number, so the
pipeline needs the line's X.509 certificate (self-signed is fine), not only its public key.

`Envelope` writes the builder's DER, byte for byte but for the random key, IV and ciphertext, from
plaintext that arrives in pieces: the builder wants the whole plaintext at once, so a chunk's archive would
be encrypted only once every worker is done. Encrypted as each slice arrives, it overlaps their work.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7

from include.errors import KeyBundleError

MIN_RSA_BITS = 2048
MAKE_CERTIFICATE = (
    'openssl req -x509 -new -key LINE.key.pem -subj "/CN=factory line" -days 3650 -out LINE.cert.pem'
)
# DER of the object identifiers `describe` names (OID content octets).
_OIDS = {
    bytes.fromhex("2a864886f70d010703"): "envelopedData",
    bytes.fromhex("2a864886f70d010701"): "data",
    bytes.fromhex("2a864886f70d010101"): "rsaEncryption (PKCS#1 v1.5 key transport)",
    bytes.fromhex("2a864886f70d010107"): "RSAES-OAEP",
    bytes.fromhex("608648016503040102"): "aes-128-cbc",
    bytes.fromhex("60864801650304012a"): "aes-256-cbc",
    bytes.fromhex("550403"): "CN",
    bytes.fromhex("55040a"): "O",
    bytes.fromhex("55040b"): "OU",
    bytes.fromhex("550406"): "C",
}
_ENVELOPED_DATA = bytes.fromhex("06092a864886f70d010703")  # the OID's full TLV, right after ContentInfo's
# Full TLVs of what the builder writes around the variable parts: version 0, rsaEncryption with NULL
# parameters, the content type data, the aes-256-cbc OID.
_VERSION_0 = bytes.fromhex("020100")
_RSA_ENCRYPTION = bytes.fromhex("300d06092a864886f70d0101010500")
_DATA = bytes.fromhex("06092a864886f70d010701")
_AES_256_CBC = bytes.fromhex("060960864801650304012a")
BLOCK = 16


def load_recipient(pem: str | bytes) -> list[x509.Certificate]:
    """The factory line's certificate(s), PEM, each with an RSA key of at least 2048 bits."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"-----BEGIN CERTIFICATE-----" not in data:
        if b"PUBLIC KEY-----" in data:
            raise KeyBundleError(
                "the bundle recipient is a bare public key; CMS bundles name their recipient by certificate, "
                f"so give the factory line's X.509 certificate (self-signed is fine: {MAKE_CERTIFICATE}, "
                "or python -m include.key_bundle keygen)"
            )
        raise KeyBundleError("the bundle recipient is not a PEM certificate")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KeyBundleError("the bundle recipient's PEM certificate cannot be parsed") from None
    for certificate in certificates:
        key = certificate.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            raise KeyBundleError(
                f"the bundle recipient {certificate.subject.rfc4514_string()} has an EC key; CMS key "
                "transport (cryptography's envelope builder, openssl cms) needs an RSA key of at least "
                f"{MIN_RSA_BITS} bits: make an RSA pair (python -m include.key_bundle keygen)"
            )
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            raise KeyBundleError(
                f"the bundle recipient {certificate.subject.rfc4514_string()} must hold an RSA key of at "
                f"least {MIN_RSA_BITS} bits"
            )
    return certificates


def _head(tag: int, length: int) -> bytes:
    """A DER tag and definite length."""
    if length < 0x80:
        return bytes((tag, length))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets


def _tlv_of(tag: int, content: bytes) -> bytes:
    return _head(tag, len(content)) + content


def _recipient_info(certificate: x509.Certificate, key: bytes) -> bytes:
    """KeyTransRecipientInfo: version 0, issuer and serial number, the key wrapped with RSA PKCS#1 v1.5."""
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)  # load_recipient admits nothing else
    serial = certificate.serial_number
    serial_der = _tlv_of(0x02, serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True))
    rid = _tlv_of(0x30, certificate.issuer.public_bytes() + serial_der)
    wrapped = _tlv_of(0x04, public_key.encrypt(key, padding.PKCS1v15()))
    return _tlv_of(0x30, _VERSION_0 + rid + _RSA_ENCRYPTION + wrapped)


class Envelope:
    """EnvelopedData for the recipients, its plaintext given piece by piece (`update`), its DER at `finish`.

    A fresh AES-256 key and IV per envelope; only the ciphertext is kept.
    """

    def __init__(self, recipients: list[x509.Certificate]) -> None:
        if not recipients:
            raise KeyBundleError("a bundle needs at least one recipient certificate")
        key, self._iv = os.urandom(32), os.urandom(BLOCK)
        # DER orders a SET OF by the members' encodings, as the builder does.
        self._recipients = b"".join(sorted(_recipient_info(c, key) for c in recipients))
        self._encryptor = Cipher(algorithms.AES256(key), modes.CBC(self._iv)).encryptor()
        self._ciphertext: list[bytes] = []
        self._plaintext_bytes = 0

    def update(self, data: bytes) -> None:
        """Encrypt the next piece (CBC keeps a partial block for the next one)."""
        self._plaintext_bytes += len(data)
        self._ciphertext.append(self._encryptor.update(data))

    def finish(self) -> list[bytes]:
        """The DER as pieces to send in order: the header, then the ciphertext (PKCS#7-padded)."""
        padding_bytes = BLOCK - self._plaintext_bytes % BLOCK
        self._ciphertext.append(
            self._encryptor.update(bytes([padding_bytes]) * padding_bytes) + self._encryptor.finalize()
        )
        content = sum(map(len, self._ciphertext))
        algorithm = _tlv_of(0x30, _AES_256_CBC + _tlv_of(0x04, self._iv))
        content_info = _DATA + algorithm + _head(0x80, content)  # [0] IMPLICIT OCTET STRING
        enveloped = (
            _VERSION_0
            + _tlv_of(0x31, self._recipients)
            + _head(0x30, len(content_info) + content)
            + content_info
        )
        enveloped = _head(0x30, len(enveloped) + content) + enveloped
        explicit = _head(0xA0, len(enveloped) + content) + enveloped
        header = _head(0x30, len(_ENVELOPED_DATA) + len(explicit) + content) + _ENVELOPED_DATA + explicit
        return [header, *self._ciphertext]


def envelope(plaintext: bytes, recipients: list[x509.Certificate]) -> bytes:
    """The plaintext encrypted once (AES-256-CBC) for every recipient, as DER."""
    sealed = Envelope(recipients)
    sealed.update(plaintext)
    return b"".join(sealed.finish())


def is_envelope(data: bytes) -> bool:
    """Whether data starts like a DER ContentInfo of type envelopedData."""
    if data[:1] != b"\x30" or len(data) < 16:
        return False
    length_octets = data[1] - 0x80 if data[1] & 0x80 else 0
    return data[2 + length_octets : 13 + length_octets] == _ENVELOPED_DATA


def open_envelope(der: bytes, private_key_pem: bytes, certificate_pem: bytes) -> bytes:
    """The plaintext, decrypted with the factory line's RSA key and its certificate (names the recipient)."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        raise KeyBundleError("the factory-line key is not an unencrypted PEM private key") from None
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        raise KeyBundleError("the factory-line certificate is not a PEM certificate") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyBundleError("a CMS bundle opens with the factory line's RSA key; this key is not RSA")
    if key.public_key() != certificate.public_key():
        raise KeyBundleError("the factory-line key and certificate do not belong together")
    name_der = certificate.issuer.public_bytes()
    _, start, end = _tlv(name_der, 0)
    wanted = (name_der[start:end], certificate.serial_number)
    if wanted not in [(r.get("issuer_der"), r.get("serial")) for r in _structure(der)["recipients"]]:
        raise KeyBundleError("this bundle was sealed for another factory-line certificate")
    try:
        return pkcs7.pkcs7_decrypt_der(der, certificate, key, [])
    except ValueError:
        raise KeyBundleError("the bundle is damaged or was altered (it does not decrypt)") from None


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at offset."""
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first & 0x80:
        octets = first & 0x7F
        length = int.from_bytes(data[offset : offset + octets], "big")
        offset += octets
    else:
        length = first
    if offset + length > len(data):
        raise KeyBundleError("the bundle is cut short (DER length beyond the end)")
    return tag, offset, offset + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    elements = []
    while start < end:
        element = _tlv(data, start)
        elements.append(element)
        start = element[2]
    return elements


def _name(data: bytes, start: int, end: int) -> str:
    parts = []
    for _, rdn_start, rdn_end in _children(data, start, end):
        for _, pair_start, pair_end in _children(data, rdn_start, rdn_end):
            (_, oid_start, oid_end), (_, value_start, value_end) = _children(data, pair_start, pair_end)[:2]
            oid = data[oid_start:oid_end]
            label = _OIDS.get(oid, oid.hex())
            parts.append(f"{label}={data[value_start:value_end].decode('utf-8', 'replace')}")
    return ",".join(reversed(parts))  # RFC 4514 order, as cryptography and openssl -nameopt RFC2253 print


def _structure(der: bytes) -> dict[str, Any]:
    """The parts of a ContentInfo holding EnvelopedData that can be read without a key."""
    if not is_envelope(der):
        raise KeyBundleError("not a CMS EnvelopedData bundle")
    try:
        _, start, end = _tlv(der, 0)
        _, explicit = _children(der, start, end)
        _, start, end = _tlv(der, explicit[1])
        fields = [f for f in _children(der, start, end) if f[0] != 0xA0]  # skip originatorInfo
        _, recipients_set, content_info = fields[:3]
        recipients = []
        for _, r_start, r_end in _children(der, recipients_set[1], recipients_set[2]):
            _, rid, algorithm, _ = _children(der, r_start, r_end)
            recipient: dict[str, Any] = {"key_transport": _algorithm(der, algorithm)}
            if rid[0] == 0x30:  # issuerAndSerialNumber (the other choice, a key identifier, is not ours)
                issuer, serial = _children(der, rid[1], rid[2])
                recipient["issuer_der"] = der[issuer[1] : issuer[2]]
                recipient["issuer"] = _name(der, issuer[1], issuer[2])
                recipient["serial"] = int.from_bytes(der[serial[1] : serial[2]], "big", signed=True)
            recipients.append(recipient)
        _, content_algorithm, encrypted = _children(der, content_info[1], content_info[2])
        return {
            "content_encryption": _algorithm(der, content_algorithm),
            "encrypted_bytes": encrypted[2] - encrypted[1],
            "recipients": recipients,
        }
    except (ValueError, IndexError):
        raise KeyBundleError(
            "the bundle's CMS structure is not EnvelopedData as this tool writes it"
        ) from None


def describe(der: bytes) -> dict[str, Any]:
    """What anyone can read without a key: recipients (issuer, serial) and algorithms."""
    structure = _structure(der)
    recipients = [
        {k: hex(v) if k == "serial" else v for k, v in r.items() if k != "issuer_der"}
        for r in structure["recipients"]
    ]
    return {"format": "CMS EnvelopedData (DER)", **structure, "recipients": recipients}


def _algorithm(der: bytes, element: tuple[int, int, int]) -> str:
    _, oid_start, oid_end = _children(der, element[1], element[2])[0]
    oid = der[oid_start:oid_end]
    return _OIDS.get(oid, oid.hex())
