"""Reading the project's former key bundle format FKB1 (.fkb files sealed before CMS bundles); never written.

    b"FKB1" | header length (4 bytes, big-endian) | header (UTF-8 JSON) | AES-256-GCM ciphertext + 16-byte tag

header = {"format": "factory-key-bundle", "version": 1, "batch_id", "chunk", "count", "created_at",
          "cipher": "AES-256-GCM", "nonce": b64, "wrap": <see below>}
The whole header is the GCM associated data. The data key is wrapped for the factory line's public key:

  - RSA (>= 2048 bits): wrap = {"alg": "RSA-OAEP-SHA256", "key_id", "wrapped_key": b64}
  - EC P-256 (ECIES):   wrap = {"alg": "ECDH-P256-HKDF-SHA256-A256GCM", "key_id",
                        "ephemeral_public_key": b64 (X9.62 uncompressed point), "nonce": b64,
                        "wrapped_key": b64}; key-encryption key = HKDF-SHA256(ECDH(ephemeral, recipient),
                        salt = none, info = b"FKB1 key wrap" + ephemeral point), AES-256-GCM with aad b"FKB1".

key_id = SHA-256 (hex) of the recipient public key's DER SubjectPublicKeyInfo. Plaintext = JSON lines:
    {"thing_name", "serial_number", "model", "row", "certificate_id", "certificate_pem", "private_key_pem"}
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterator
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from include.errors import KeyBundleError

MAGIC = b"FKB1"
WRAP_RSA = "RSA-OAEP-SHA256"
WRAP_EC = "ECDH-P256-HKDF-SHA256-A256GCM"
HKDF_INFO = b"FKB1 key wrap"
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def key_id(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def is_fkb1(data: bytes) -> bool:
    return data[:4] == MAGIC


def read_header(bundle: bytes) -> dict[str, Any]:
    """The bundle's clear-text header (no key needed)."""
    if not is_fkb1(bundle) or len(bundle) < 8:
        raise KeyBundleError("not an FKB1 bundle (magic FKB1 missing)")
    (length,) = struct.unpack(">I", bundle[4:8])
    try:
        return json.loads(bundle[8 : 8 + length])
    except ValueError:
        raise KeyBundleError("the bundle header is not JSON") from None


def _unwrap(wrap: dict[str, str], private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    if wrap.get("key_id") != key_id(private_key.public_key()):
        raise KeyBundleError("this bundle was sealed for another factory-line key (key_id differs)")
    try:
        if wrap["alg"] == WRAP_RSA and isinstance(private_key, rsa.RSAPrivateKey):
            return private_key.decrypt(_unb64(wrap["wrapped_key"]), OAEP)
        if wrap["alg"] == WRAP_EC and isinstance(private_key, ec.EllipticCurvePrivateKey):
            point = _unb64(wrap["ephemeral_public_key"])
            ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            shared = private_key.exchange(ec.ECDH(), ephemeral)
            kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO + point).derive(shared)
            return AESGCM(kek).decrypt(_unb64(wrap["nonce"]), _unb64(wrap["wrapped_key"]), MAGIC)
    except (InvalidTag, ValueError, KeyError):
        raise KeyBundleError("the bundle's data key cannot be unwrapped with this key") from None
    raise KeyBundleError(f"wrap algorithm {wrap.get('alg')!r} does not match a {type(private_key).__name__}")


def open_records(bundle: bytes, private_key_pem: bytes) -> Iterator[dict[str, Any]]:
    """Decrypt an FKB1 bundle with the factory line's private key (RSA or EC); yields the device records."""
    header = read_header(bundle)
    (length,) = struct.unpack(">I", bundle[4:8])
    header_bytes = bundle[8 : 8 + length]
    try:
        private_key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        raise KeyBundleError("the factory-line key is not an unencrypted PEM private key") from None
    if not isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyBundleError("the factory-line key must be RSA or EC")
    data_key = _unwrap(header["wrap"], private_key)
    try:
        payload = AESGCM(data_key).decrypt(_unb64(header["nonce"]), bundle[8 + length :], header_bytes)
    except InvalidTag:
        raise KeyBundleError("the bundle is damaged or was altered (authentication failed)") from None
    records = [orjson.loads(line) for line in payload.splitlines() if line]
    if len(records) != header["count"]:
        raise KeyBundleError(f"the bundle holds {len(records)} records, its header says {header['count']}")
    yield from records
