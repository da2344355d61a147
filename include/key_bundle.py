"""Encrypted key bundles for the factory line: the only place generated private keys ever go.

Format "FKB1" (one file per credentials chunk, `.fkb`):

    b"FKB1" | header length (4 bytes, big-endian) | header (UTF-8 JSON) | AES-256-GCM ciphertext + 16-byte tag

header = {"format": "factory-key-bundle", "version": 1, "batch_id", "chunk", "count", "created_at",
          "cipher": "AES-256-GCM", "nonce": b64, "wrap": <see below>}
The payload is encrypted ONCE with a random 256-bit data key; the whole header is the GCM associated data,
so any change to it (count, batch, wrapping) makes opening fail. The data key is wrapped for the factory
line's public key (PEM), chosen by its type:

  - RSA (>= 2048 bits): wrap = {"alg": "RSA-OAEP-SHA256", "key_id", "wrapped_key": b64}
  - EC P-256 (ECIES):   wrap = {"alg": "ECDH-P256-HKDF-SHA256-A256GCM", "key_id",
                        "ephemeral_public_key": b64 (X9.62 uncompressed point), "nonce": b64,
                        "wrapped_key": b64};
                        the key-encryption key is HKDF-SHA256(ECDH(ephemeral, recipient), salt = none,
                        info = b"FKB1 key wrap" + ephemeral point) and wraps the data key with AES-256-GCM.

key_id = SHA-256 (hex) of the recipient public key's DER SubjectPublicKeyInfo, so the line can tell which of
its keys opens a bundle. Plaintext payload = JSON lines, one per device:
    {"thing_name", "serial_number", "model", "row", "certificate_id", "certificate_pem", "private_key_pem"}
with the private key as unencrypted PKCS#8 PEM (the bundle's encryption protects it; no per-key password).

The factory line opens a bundle with
    python -m include.key_bundle open BUNDLE.fkb --key factory-line-private.pem --out DIR
which writes DIR/<thing_name>.key.pem (mode 0600) and DIR/<thing_name>.cert.pem plus DIR/index.csv.
`python -m include.key_bundle keygen --out DIR [--rsa]` makes a recipient key pair for development.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def key_id(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def load_recipient(pem: str | bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The factory line's public key: RSA >= 2048 or EC P-256, as PEM (or a certificate holding it)."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        if b"BEGIN CERTIFICATE" in data:
            from cryptography import x509

            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyBundleError("the bundle recipient is not a PEM public key or certificate") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise KeyBundleError("the bundle recipient key must be RSA (>= 2048 bits) or EC P-256")


def _ecdh_kek(shared: bytes, ephemeral_point: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO + ephemeral_point).derive(
        shared
    )


def _wrap(data_key: bytes, recipient: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    if isinstance(recipient, rsa.RSAPublicKey):
        wrapped = recipient.encrypt(
            data_key, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        )
        return {"alg": WRAP_RSA, "key_id": key_id(recipient), "wrapped_key": _b64(wrapped)}
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    kek = _ecdh_kek(ephemeral.exchange(ec.ECDH(), recipient), point)
    nonce = os.urandom(12)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, MAGIC)
    return {
        "alg": WRAP_EC,
        "key_id": key_id(recipient),
        "ephemeral_public_key": _b64(point),
        "nonce": _b64(nonce),
        "wrapped_key": _b64(wrapped),
    }


def _unwrap(wrap: dict[str, str], private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    if wrap.get("key_id") != key_id(private_key.public_key()):
        raise KeyBundleError("this bundle was sealed for another factory-line key (key_id differs)")
    try:
        if wrap["alg"] == WRAP_RSA and isinstance(private_key, rsa.RSAPrivateKey):
            return private_key.decrypt(
                _unb64(wrap["wrapped_key"]),
                padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
            )
        if wrap["alg"] == WRAP_EC and isinstance(private_key, ec.EllipticCurvePrivateKey):
            point = _unb64(wrap["ephemeral_public_key"])
            ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            kek = _ecdh_kek(private_key.exchange(ec.ECDH(), ephemeral), point)
            return AESGCM(kek).decrypt(_unb64(wrap["nonce"]), _unb64(wrap["wrapped_key"]), MAGIC)
    except (InvalidTag, ValueError, KeyError):
        raise KeyBundleError("the bundle's data key cannot be unwrapped with this key") from None
    raise KeyBundleError(f"wrap algorithm {wrap.get('alg')!r} does not match a {type(private_key).__name__}")


def seal(
    records: list[dict[str, Any]],
    recipient_pem: str | bytes,
    *,
    batch_id: str,
    chunk: int,
) -> bytes:
    """Encrypt device records (with their private key PEMs) once, for the factory line's public key."""
    payload = b"".join(orjson.dumps(r) + b"\n" for r in records)
    return seal_payload(payload, len(records), recipient_pem, batch_id=batch_id, chunk=chunk)


def seal_payload(
    payload: bytes,
    count: int,
    recipient_pem: str | bytes,
    *,
    batch_id: str,
    chunk: int,
) -> bytes:
    """Encrypt an already encoded payload (`count` JSON lines, as `seal` writes them) once."""
    recipient = load_recipient(recipient_pem)
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    header = {
        "format": "factory-key-bundle",
        "version": 1,
        "batch_id": batch_id,
        "chunk": chunk,
        "count": count,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cipher": "AES-256-GCM",
        "nonce": _b64(nonce),
        "wrap": _wrap(data_key, recipient),
    }
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    ciphertext = AESGCM(data_key).encrypt(nonce, payload, header_bytes)
    return MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes + ciphertext


def read_header(bundle: bytes) -> dict[str, Any]:
    """The bundle's clear-text header (no key needed)."""
    if bundle[:4] != MAGIC or len(bundle) < 8:
        raise KeyBundleError("not a factory key bundle (magic FKB1 missing)")
    (length,) = struct.unpack(">I", bundle[4:8])
    try:
        return json.loads(bundle[8 : 8 + length])
    except ValueError:
        raise KeyBundleError("the bundle header is not JSON") from None


def open_bundle(bundle: bytes, private_key_pem: str | bytes) -> Iterator[dict[str, Any]]:
    """Decrypt a bundle with the factory line's private key; yields the device records."""
    header = read_header(bundle)
    (length,) = struct.unpack(">I", bundle[4:8])
    header_bytes = bundle[8 : 8 + length]
    data = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
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


def generate_recipient(directory: str | Path, *, use_rsa: bool = False) -> tuple[Path, Path]:
    """A factory-line key pair for development: (private PEM path, public PEM path)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key: Any = rsa.generate_private_key(65537, 3072) if use_rsa else ec.generate_private_key(ec.SECP256R1())
    private_path = directory / "recipient.key.pem"
    public_path = directory / "recipient.pub.pem"
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return cleaned or "device"


def extract(bundle: bytes, private_key_pem: str | bytes, out: str | Path) -> int:
    """Write each device's key (0600) and certificate into `out`, plus index.csv; returns the device count."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as index:
        writer = csv.writer(index)
        writer.writerow(
            ["thing_name", "serial_number", "model", "row", "certificate_id", "key_file", "cert_file"]
        )
        for record in open_bundle(bundle, private_key_pem):
            stem = _safe_name(record["thing_name"])
            fd = os.open(out / f"{stem}.key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(record["private_key_pem"])
            (out / f"{stem}.cert.pem").write_text(record["certificate_pem"], encoding="ascii")
            writer.writerow(
                [
                    record["thing_name"],
                    record["serial_number"],
                    record["model"],
                    record["row"],
                    record["certificate_id"],
                    f"{stem}.key.pem",
                    f"{stem}.cert.pem",
                ]
            )
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.key_bundle", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    opener = commands.add_parser("open", help="decrypt a bundle into key and certificate files")
    opener.add_argument("bundle", help="path of the .fkb file (download it first, e.g. aws s3 cp)")
    opener.add_argument("--key", required=True, help="the factory line's private key (PEM)")
    opener.add_argument("--out", required=True, help="directory to write the files into")
    info = commands.add_parser("info", help="print the clear-text header")
    info.add_argument("bundle")
    keygen = commands.add_parser("keygen", help="make a development factory-line key pair")
    keygen.add_argument("--out", required=True)
    keygen.add_argument("--rsa", action="store_true", help="RSA-3072 instead of EC P-256")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            private_path, public_path = generate_recipient(args.out, use_rsa=args.rsa)
            print(f"private key {private_path} (keep it on the factory line), public key {public_path}")
        elif args.command == "info":
            print(json.dumps(read_header(Path(args.bundle).read_bytes()), indent=2))
        else:
            count = extract(Path(args.bundle).read_bytes(), Path(args.key).read_bytes(), args.out)
            print(f"wrote {count} device key(s) and certificate(s) to {args.out}")
    except (KeyBundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
