"""Encrypted key bundles for the factory line: the only place generated private keys ever go.

One bundle per credentials chunk, `chunk-NNNNN.tar.p7m`: a CMS EnvelopedData (RFC 5652, DER) whose content
is a POSIX tar of the chunk's key files (include/key_bundle_archive.py has the layout):

    openssl cms -decrypt -binary -inform DER -in chunk-00000.tar.p7m -inkey line.key.pem | tar -x -C DIR

The tar is encrypted once per chunk with a random AES-256-CBC key, wrapped for each recipient certificate
(RSA key transport; include/key_bundle_cms.py). Per device there is only archive framing, done in the
credentials workers (`device_entry`, joined per slice as `Entries`); the parent seals each slice's entries
as they arrive (`BundleWriter`; `seal_payload` for entries already whole).

`python -m include.key_bundle` opens bundles without openssl too (and the former FKB1 files,
include/key_bundle_fkb1.py): `info`, `open`, `convert` (FKB1 to CMS) and `keygen` (a development pair).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from include import key_bundle_archive as archive
from include import key_bundle_cms as cms
from include import key_bundle_fkb1 as fkb1
from include.errors import KeyBundleError
from include.key_bundle_archive import Entries, certificates_archive, device_entry
from include.key_bundle_cms import load_recipient

__all__ = [
    "BUNDLE_SUFFIX",
    "BundleWriter",
    "CONTENT_TYPE",
    "Entries",
    "bundle_info",
    "certificates_archive",
    "convert",
    "device_entry",
    "extract",
    "generate_recipient",
    "load_recipient",
    "open_bundle",
    "seal",
    "seal_payload",
]

BUNDLE_SUFFIX = ".tar.p7m"
CONTENT_TYPE = "application/pkcs7-mime"
RECIPIENT_KEY_FILE = "recipient.key.pem"
RECIPIENT_CERTIFICATE_FILE = "recipient.cert.pem"
RECIPIENT_RSA_BITS = 3072
RECIPIENT_VALIDITY = dt.timedelta(days=3650)


class BundleWriter:
    """A chunk's bundle sealed as its device entries arrive (`add`, in device order), closed by `finish`.

    Each part's tar members are encrypted at once and dropped; only the index lines wait for the end.
    """

    def __init__(self, recipient_pem: str | bytes, *, batch_id: str, chunk: int) -> None:
        self._envelope = cms.Envelope(load_recipient(recipient_pem))
        created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self._meta = {"batch_id": batch_id, "chunk": chunk, "created_at": created_at}
        self._index: list[bytes] = []
        self.count = 0

    def add(self, entries: Entries) -> None:
        self._envelope.update(entries.members)
        self._index.append(entries.index)
        self.count += entries.count

    def finish(self) -> bytes:
        """The bundle (CMS DER)."""
        self._envelope.update(archive.closing(b"".join(self._index), self.count, self._meta))
        return b"".join(self._envelope.finish())

    def __repr__(self) -> str:  # never show what it holds
        return f"BundleWriter(count={self.count})"


def seal_payload(entries: Entries, recipient_pem: str | bytes, *, batch_id: str, chunk: int) -> bytes:
    """The bundle (CMS DER) of the device entries, encrypted once."""
    writer = BundleWriter(recipient_pem, batch_id=batch_id, chunk=chunk)
    writer.add(entries)
    return writer.finish()


def _entries(records: Iterable[dict[str, Any]]) -> Entries:
    return Entries.of(
        [
            device_entry(
                r["thing_name"],
                r.get("serial_number"),
                r.get("model") or "",
                r.get("row") or 0,
                r.get("certificate_id"),
                r.get("certificate_pem"),
                r["private_key_pem"].encode("ascii"),
            )
            for r in records
        ]
    )


def seal(
    records: Iterable[dict[str, Any]], recipient_pem: str | bytes, *, batch_id: str, chunk: int
) -> bytes:
    """A bundle from device records (the fields `open_bundle` yields); for tools and tests."""
    return seal_payload(_entries(records), recipient_pem, batch_id=batch_id, chunk=chunk)


def bundle_info(bundle: bytes) -> dict[str, Any]:
    """What a bundle says about itself without a key: CMS recipients and algorithms, or the FKB1 header."""
    if fkb1.is_fkb1(bundle):
        return fkb1.read_header(bundle)
    return cms.describe(bundle)


def _bytes(pem: str | bytes) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem


def _files(
    bundle: bytes, private_key_pem: str | bytes, certificate_pem: str | bytes | None
) -> dict[str, bytes]:
    """The archive's files of a CMS bundle, or of an FKB1 bundle laid out the same way."""
    if fkb1.is_fkb1(bundle):
        header = fkb1.read_header(bundle)
        entries = _entries(fkb1.open_records(bundle, _bytes(private_key_pem)))
        meta = {key: header.get(key) for key in ("batch_id", "chunk", "created_at")}
        return archive.read_archive(archive.archive(entries, {**meta, "converted_from": "FKB1"}))
    if not cms.is_envelope(bundle):
        raise KeyBundleError("not a key bundle (neither CMS EnvelopedData nor FKB1)")
    if certificate_pem is None:
        raise KeyBundleError("a CMS bundle opens with the factory line's key and its certificate (--cert)")
    return archive.read_archive(cms.open_envelope(bundle, _bytes(private_key_pem), _bytes(certificate_pem)))


def _key_matches(record: dict[str, Any]) -> bool:
    """Whether the record's key parses and, when it has a certificate, is the certificate's key."""
    try:
        key = serialization.load_pem_private_key(record["private_key_pem"].encode("ascii"), None)
        certificate = record["certificate_pem"]
        return not certificate or (
            x509.load_pem_x509_certificate(certificate.encode("ascii")).public_key() == key.public_key()
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _verified(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each record, once its key checks out.

    AES-CBC carries no integrity tag, but an altered ciphertext garbles whole blocks, so a changed key no
    longer parses or matches the certificate its signer made: the same check the line makes with openssl.
    """
    for record in records:
        if not _key_matches(record):
            raise KeyBundleError(
                f"the bundle is damaged or was altered: the key of {record['thing_name']} does not parse "
                "or does not match its certificate"
            )
        yield record


def open_bundle(
    bundle: bytes, private_key_pem: str | bytes, certificate_pem: str | bytes | None = None
) -> Iterator[dict[str, Any]]:
    """The bundle's devices: thing_name, serial_number, model, row, certificate_id and certificate_pem
    (None when not known at sealing time), private_key_pem. FKB1 bundles need no certificate."""
    yield from _verified(archive.records(_files(bundle, private_key_pem, certificate_pem)))


def _write(path: Path, data: bytes, mode: int) -> None:
    # O_NOFOLLOW: a planted symlink must not redirect a key; fchmod: an existing file keeps no wider mode.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, mode)
        handle.write(data)


def extract(
    bundle: bytes, private_key_pem: str | bytes, out: str | Path, certificate_pem: str | bytes | None = None
) -> int:
    """Write the bundle's files into `out` as `tar -x` would (keys 0600); returns the device count."""
    files = _files(bundle, private_key_pem, certificate_pem)
    count = sum(1 for _ in _verified(archive.records(files)))  # index, files, count and keys all check out
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        _write(out / name, data, 0o600 if name.endswith(archive.KEY_SUFFIX) else 0o644)
    return count


def convert(fkb1_bundle: bytes, private_key_pem: str | bytes, recipient_pem: str | bytes) -> bytes:
    """An FKB1 bundle sealed again as a CMS bundle for the recipient certificate(s)."""
    header = fkb1.read_header(fkb1_bundle)
    records = fkb1.open_records(fkb1_bundle, _bytes(private_key_pem))
    return seal(records, recipient_pem, batch_id=header["batch_id"], chunk=header["chunk"])


def generate_recipient(directory: str | Path) -> tuple[Path, Path]:
    """A development factory-line pair: (RSA-3072 private key PEM, 0600; self-signed certificate PEM)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RECIPIENT_RSA_BITS)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "factory line (development key bundle recipient)")]
    )
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + RECIPIENT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_path = directory / RECIPIENT_KEY_FILE
    certificate_path = directory / RECIPIENT_CERTIFICATE_FILE
    _write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        0o600,
    )
    _write(certificate_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, certificate_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m include.key_bundle", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    opener = commands.add_parser(
        "open", help="decrypt a bundle (.tar.p7m or .fkb) into key and certificate files"
    )
    opener.add_argument("bundle", help="the bundle file (download it first, e.g. aws s3 cp)")
    opener.add_argument("--key", required=True, help="the factory line's private key (PEM)")
    opener.add_argument("--cert", help="the factory line's certificate (PEM); needed for .tar.p7m bundles")
    opener.add_argument("--out", required=True, help="directory to write the files into")
    info = commands.add_parser("info", help="print what the bundle says without a key")
    info.add_argument("bundle")
    converter = commands.add_parser("convert", help="seal an FKB1 bundle again as a CMS bundle")
    converter.add_argument("bundle", help="the .fkb file")
    converter.add_argument("--key", required=True, help="the private key the .fkb was sealed for (PEM)")
    converter.add_argument("--recipient", required=True, help="the factory line's certificate(s) (PEM)")
    converter.add_argument("--out", required=True, help="the .tar.p7m file to write")
    keygen = commands.add_parser("keygen", help="make a development factory-line key and certificate")
    keygen.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            key_path, certificate_path = generate_recipient(args.out)
            print(f"private key {key_path} (keep it on the factory line), certificate {certificate_path}")
        elif args.command == "info":
            print(json.dumps(bundle_info(Path(args.bundle).read_bytes()), indent=2))
        elif args.command == "convert":
            sealed = convert(
                Path(args.bundle).read_bytes(), Path(args.key).read_bytes(), Path(args.recipient).read_bytes()
            )
            Path(args.out).write_bytes(sealed)
            print(f"wrote {args.out}")
        else:
            certificate = Path(args.cert).read_bytes() if args.cert else None
            count = extract(
                Path(args.bundle).read_bytes(), Path(args.key).read_bytes(), args.out, certificate
            )
            print(f"wrote {count} device key(s) and {archive.INDEX_FILE} to {args.out}")
    except (KeyBundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
