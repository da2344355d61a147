"""The key bundle: CMS EnvelopedData around a tar of key files, the CLI, FKB1 bundles and the recipient."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import itertools
import json
import os
import stat
import struct
import tarfile
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from include import key_bundle
from include.errors import KeyBundleError
from include.key_bundle_archive import Entries, archive, device_entry, file_stem, meta, read_archive, records
from include.key_bundle_cms import Envelope, _children, _tlv, envelope, load_recipient, open_envelope
from scripts.bootstrap import ensure_factory_line_keys


def _device_credentials(thing: str) -> tuple[str, str]:
    """A real P-256 key and a certificate for it (self-signed: the bundle only pairs them)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem.decode(), _certificate(key, thing).decode()


def _certificate(key, name: str = "line") -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = dt.datetime.now(dt.UTC)
    builder = x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
    builder = builder.public_key(key.public_key()).serial_number(1).not_valid_before(now)
    builder = builder.not_valid_after(now + dt.timedelta(days=1))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _record(i: int, thing: str | None = None, serial: str | None = None, certificate: bool = True) -> dict:
    thing = thing or f"TH-100-{i}"
    key_pem, certificate_pem = _device_credentials(thing)
    return {
        "thing_name": thing,
        "serial_number": serial or str(i),
        "model": "TH-100",
        "row": i,
        "certificate_id": f"{i:064x}" if certificate else None,
        "certificate_pem": certificate_pem if certificate else None,
        "private_key_pem": key_pem,
    }


RECORDS = [
    _record(1),
    _record(2, certificate=False),  # AWS-issued: the certificate comes after registration
    _record(3, thing="TH-100:3", serial="=HYPERLINK(1)"),  # ':' in the name, a formula for a serial
    _record(4, thing="T" * 128, serial='a "quoted", multi\nline serial'),  # longer than ustar's 100 bytes
    _record(5, thing="-5", serial="-5"),
]


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> tuple[Path, Path]:
    """The factory line's development pair: (key path, certificate path)."""
    return key_bundle.generate_recipient(tmp_path_factory.mktemp("line"))


@pytest.fixture(scope="module")
def other_line(tmp_path_factory) -> tuple[Path, Path]:
    return key_bundle.generate_recipient(tmp_path_factory.mktemp("other"))


def test_round_trip_and_what_anyone_can_read(line):
    key_path, certificate_path = line
    sealed = key_bundle.seal(RECORDS, certificate_path.read_bytes(), batch_id="b" * 64, chunk=7)
    assert b"PRIVATE KEY" not in sealed and b"TH-100-1" not in sealed
    assert (
        list(key_bundle.open_bundle(sealed, key_path.read_bytes(), certificate_path.read_bytes())) == RECORDS
    )

    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    info = key_bundle.bundle_info(sealed)
    assert info["content_encryption"] == "aes-256-cbc" and info["encrypted_bytes"] < len(sealed)
    assert info["recipients"] == [
        {
            "key_transport": "rsaEncryption (PKCS#1 v1.5 key transport)",
            "issuer": certificate.issuer.rfc4514_string(),
            "serial": hex(certificate.serial_number),
        }
    ]


def test_the_archive_layout(line):
    key_path, certificate_path = line
    sealed = key_bundle.seal(RECORDS, certificate_path.read_bytes(), batch_id="B", chunk=3)
    tar = open_envelope(sealed, key_path.read_bytes(), certificate_path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(tar)) as opened:
        members = {m.name: m for m in opened.getmembers()}
        meta = json.loads(opened.extractfile("bundle.json").read())
        index = opened.extractfile("index.csv").read().decode()
    assert list(members)[-2:] == ["index.csv", "bundle.json"]  # they count what came before
    assert {k: meta[k] for k in ("format", "version", "batch_id", "chunk", "count")} == {
        "format": "factory-key-bundle",
        "version": 2,
        "batch_id": "B",
        "chunk": 3,
        "count": 5,
    }
    stem3 = file_stem("TH-100:3")
    assert sorted(n for n in members if n.endswith(".key.pem")) == sorted(
        [
            "TH-100-1.key.pem",
            "TH-100-2.key.pem",
            f"{stem3}.key.pem",
            "T" * 128 + ".key.pem",
            f"{file_stem('-5')}.key.pem",
        ]
    )
    assert "TH-100-2.cert.pem" not in members and "TH-100-1.cert.pem" in members
    assert all(stat.S_IMODE(m.mode) == 0o600 for n, m in members.items() if n.endswith(".key.pem"))
    lines = index.split("\r\n")
    assert lines[0] == "thing_name,serial_number,model,row,certificate_id,key_file,certificate_file"
    assert lines[1] == f"TH-100-1,1,TH-100,1,{1:064x},TH-100-1.key.pem,TH-100-1.cert.pem"
    assert lines[2] == "TH-100-2,2,TH-100,2,,TH-100-2.key.pem,"  # no certificate yet: empty columns
    assert lines[3].startswith("TH-100:3,'=HYPERLINK(1),TH-100,3,")  # neutralised as every CSV we write


def test_file_stems():
    assert file_stem("TH-100-SN_1") == "TH-100-SN_1"
    assert file_stem("a:b") != file_stem("a_b") == "a_b"
    assert file_stem("a:b").startswith("a_b-") and file_stem("-x").startswith("x-")
    assert file_stem("..").startswith("__-") and "/" not in file_stem("../../etc/passwd")


def test_entries_join_in_order_and_count():
    first = Entries.of([device_entry("T-1", "1", "M", 1, None, None, b"K1")])
    rest = Entries.of([device_entry(f"T-{i}", str(i), "M", i, None, None, b"K") for i in (2, 3)])
    joined = Entries.join([first, Entries(), rest])
    assert joined.count == 3 and "K1" not in repr(joined) and repr(joined) == "Entries(count=3)"
    files = read_archive(archive(joined, {}))
    assert [r["thing_name"] for r in records(files)] == ["T-1", "T-2", "T-3"]
    assert files["T-1.key.pem"] == b"K1" and meta(files)["count"] == 3
    assert archive(Entries(), {}).endswith(bytes(1024))


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.key.pem", "dir/x.key.pem", ".hidden", "link"])
def test_unsafe_archive_members_are_refused(name):
    info = tarfile.TarInfo(name)
    if name == "link":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(KeyBundleError, match="unexpected member"):
        read_archive(_tar((info, b"x")))
    with pytest.raises(KeyBundleError, match="not a tar"):
        read_archive(b"\x01" * 600)


def test_index_naming_missing_files_or_wrong_count_is_refused():
    entries = Entries.of([device_entry("T-1", "1", "M", 1, "c", "CERT", b"K")])
    files = read_archive(archive(entries, {}))
    del files["T-1.cert.pem"]
    with pytest.raises(KeyBundleError, match="names files it does not hold"):
        list(records(files))
    files = read_archive(archive(entries, {}))
    files["bundle.json"] = files["bundle.json"].replace(b'"count": 1', b'"count": 2')
    with pytest.raises(KeyBundleError, match="holds 1 devices"):
        list(records(files))


def test_two_recipients_either_opens(line, other_line):
    both = line[1].read_bytes() + other_line[1].read_bytes()
    sealed = key_bundle.seal(RECORDS[:1], both, batch_id="b", chunk=0)
    assert len(key_bundle.bundle_info(sealed)["recipients"]) == 2
    for key_path, certificate_path in (line, other_line):
        opened = key_bundle.open_bundle(sealed, key_path.read_bytes(), certificate_path.read_bytes())
        assert list(opened) == RECORDS[:1]


def _entry(record: dict) -> tuple[bytes, bytes]:
    fields = ("thing_name", "serial_number", "model", "row", "certificate_id", "certificate_pem")
    return device_entry(*(record[f] for f in fields), record["private_key_pem"].encode())


def _masked(der: bytes) -> bytes:
    """The DER with its random parts zeroed: each wrapped key, the IV and the ciphertext."""
    data = bytearray(der)

    def zero(element: tuple[int, int, int]) -> None:
        data[element[1] : element[2]] = bytes(element[2] - element[1])

    _, start, end = _tlv(der, 0)
    _, start, end = _tlv(der, _children(der, start, end)[1][1])
    _, recipients, content = _children(der, start, end)
    for _, r_start, r_end in _children(der, recipients[1], recipients[2]):
        zero(_children(der, r_start, r_end)[3])
    _, algorithm, ciphertext = _children(der, content[1], content[2])
    zero(_children(der, algorithm[1], algorithm[2])[1])
    zero(ciphertext)
    return bytes(data)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 127, 128, 255, 256, 65_535, 65_536, 1_000_003])
def test_the_envelope_is_the_builders_der_but_for_its_random_parts(line, other_line, size):
    plaintext = os.urandom(size)
    both = load_recipient(line[1].read_bytes() + other_line[1].read_bytes())
    for recipients in (both[:1], both, both[::-1]):
        builder = pkcs7.PKCS7EnvelopeBuilder().set_data(plaintext)
        for certificate in recipients:
            builder = builder.add_recipient(certificate)
        builder = builder.set_content_encryption_algorithm(algorithms.AES256)
        theirs = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        ours = envelope(plaintext, recipients)
        assert _masked(ours) == _masked(theirs) and ours != theirs
        certificate = x509.load_pem_x509_certificate(line[1].read_bytes())
        private_key = serialization.load_pem_private_key(line[0].read_bytes(), None)
        assert pkcs7.pkcs7_decrypt_der(ours, certificate, private_key, []) == plaintext


def test_the_envelope_takes_its_plaintext_in_any_pieces(line):
    plaintext = os.urandom(10_000)
    cuts = [0, 1, 16, 17, 33, 1_000, 1_000, 4_097, 9_999, 10_000]
    sealed = Envelope(load_recipient(line[1].read_bytes()))
    for start, end in itertools.pairwise(cuts):
        sealed.update(plaintext[start:end])
    der = b"".join(sealed.finish())
    assert open_envelope(der, line[0].read_bytes(), line[1].read_bytes()) == plaintext
    with pytest.raises(KeyBundleError, match="at least one recipient"):
        Envelope([])


def test_a_bundle_written_part_by_part_holds_every_part_in_order(line):
    writer = key_bundle.BundleWriter(line[1].read_bytes(), batch_id="b", chunk=7)
    for part in (RECORDS[:2], [], RECORDS[2:]):
        writer.add(Entries.of([_entry(r) for r in part]))
    assert writer.count == len(RECORDS) and "PRIVATE" not in repr(writer)
    opened = key_bundle.open_bundle(writer.finish(), line[0].read_bytes(), line[1].read_bytes())
    assert list(opened) == RECORDS


def test_wrong_key_mismatch_and_tampering_are_refused(line, other_line):
    key_path, certificate_path = line
    sealed = key_bundle.seal(RECORDS, certificate_path.read_bytes(), batch_id="b", chunk=0)
    with pytest.raises(KeyBundleError, match="another factory-line certificate"):
        list(key_bundle.open_bundle(sealed, other_line[0].read_bytes(), other_line[1].read_bytes()))
    with pytest.raises(KeyBundleError, match="do not belong together"):
        list(key_bundle.open_bundle(sealed, other_line[0].read_bytes(), certificate_path.read_bytes()))
    with pytest.raises(KeyBundleError, match="needs|certificate \\(--cert\\)"):
        list(key_bundle.open_bundle(sealed, key_path.read_bytes()))
    # CBC has no tag: flip a ciphertext byte over a key's text, and opening must still notice.
    pair = (key_path.read_bytes(), certificate_path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(open_envelope(sealed, *pair))) as opened:
        for name in ("TH-100-1.key.pem", "TH-100-2.key.pem"):  # with a certificate and without
            where = len(sealed) - key_bundle.bundle_info(sealed)["encrypted_bytes"]
            where += opened.getmember(name).offset_data + 64
            flipped = bytearray(sealed)
            flipped[where] ^= 1
            with pytest.raises(KeyBundleError, match="damaged or was altered"):
                list(key_bundle.open_bundle(bytes(flipped), *pair))
    with pytest.raises(KeyBundleError, match="neither CMS EnvelopedData nor FKB1"):
        list(key_bundle.open_bundle(b"PK\x03\x04" + bytes(60), key_path.read_bytes()))
    with pytest.raises(KeyBundleError, match="not a CMS EnvelopedData"):
        key_bundle.bundle_info(b"PK\x03\x04")


def test_recipients_that_cannot_be_used_are_refused_precisely(line):
    key = serialization.load_pem_private_key(line[0].read_bytes(), None)
    bare = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyBundleError, match="bare public key.*openssl req -x509 -new -key"):
        key_bundle.load_recipient(bare)
    with pytest.raises(KeyBundleError, match="CN=line has an EC key.*RSA key of at least 2048"):
        key_bundle.load_recipient(_certificate(ec.generate_private_key(ec.SECP256R1())))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused on purpose
    with pytest.raises(KeyBundleError, match="at least 2048 bits"):
        key_bundle.load_recipient(_certificate(weak))
    with pytest.raises(KeyBundleError, match="not a PEM certificate"):
        key_bundle.load_recipient("hello")
    with pytest.raises(KeyBundleError, match="cannot be parsed"):
        key_bundle.load_recipient("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert len(key_bundle.load_recipient(line[1].read_text())) == 1


def test_development_pair(line):
    key_path, certificate_path = line
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    assert certificate.public_key() == key.public_key()
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_cli_keygen_info_open(tmp_path, capsys):
    assert key_bundle.main(["keygen", "--out", str(tmp_path / "line")]) == 0
    key_path, certificate_path = (
        tmp_path / "line" / "recipient.key.pem",
        tmp_path / "line" / "recipient.cert.pem",
    )
    bundle = tmp_path / "chunk-00007.tar.p7m"
    bundle.write_bytes(key_bundle.seal(RECORDS, certificate_path.read_bytes(), batch_id="b", chunk=7))
    capsys.readouterr()
    assert key_bundle.main(["info", str(bundle)]) == 0
    assert json.loads(capsys.readouterr().out)["content_encryption"] == "aes-256-cbc"

    out = tmp_path / "keys"
    out.mkdir()
    (out / "TH-100-1.key.pem").write_text("old")
    os.chmod(out / "TH-100-1.key.pem", 0o644)  # a file left behind keeps no wider mode
    args = ["open", str(bundle), "--key", str(key_path), "--out", str(out)]
    assert key_bundle.main(args) == 1 and "--cert" in capsys.readouterr().err
    assert key_bundle.main([*args, "--cert", str(certificate_path)]) == 0
    assert "wrote 5 device key(s)" in capsys.readouterr().out
    assert (out / "TH-100-1.key.pem").read_text() == RECORDS[0]["private_key_pem"]
    assert (out / "TH-100-1.cert.pem").read_text() == RECORDS[0]["certificate_pem"]
    assert not (out / "TH-100-2.cert.pem").exists()
    for path in out.glob("*.key.pem"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert (out / "index.csv").read_bytes().count(b"\r\n") == 6  # header and 5 devices (a quoted \n inside)


def _fkb1(records: list[dict], public_key, *, batch_id: str = "b", chunk: int = 0) -> bytes:
    """An FKB1 bundle written from its specification (include/key_bundle_fkb1.py), not from our reader."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    data_key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    wrap: dict = {"key_id": hashlib.sha256(spki).hexdigest()}
    if isinstance(public_key, rsa.RSAPublicKey):
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        wrap |= {
            "alg": "RSA-OAEP-SHA256",
            "wrapped_key": base64.b64encode(public_key.encrypt(data_key, oaep)),
        }
    else:
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        shared = ephemeral.exchange(ec.ECDH(), public_key)
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"FKB1 key wrap" + point).derive(
            shared
        )
        wrap_nonce = os.urandom(12)
        wrap |= {
            "alg": "ECDH-P256-HKDF-SHA256-A256GCM",
            "ephemeral_public_key": base64.b64encode(point),
            "nonce": base64.b64encode(wrap_nonce),
            "wrapped_key": base64.b64encode(AESGCM(kek).encrypt(wrap_nonce, data_key, b"FKB1")),
        }
    wrap = {k: v.decode() if isinstance(v, bytes) else v for k, v in wrap.items()}
    header = {
        "format": "factory-key-bundle",
        "version": 1,
        "batch_id": batch_id,
        "chunk": chunk,
        "count": len(records),
        "created_at": "2025-01-01T00:00:00+00:00",
        "cipher": "AES-256-GCM",
        "nonce": base64.b64encode(nonce).decode(),
        "wrap": wrap,
    }
    header_bytes = json.dumps(header, sort_keys=True).encode()
    payload = b"".join(orjson.dumps(r) + b"\n" for r in records)
    return (
        b"FKB1"
        + struct.pack(">I", len(header_bytes))
        + header_bytes
        + AESGCM(data_key).encrypt(nonce, payload, header_bytes)
    )


FKB1_RECORDS = [_record(1), _record(3, thing="TH-100:3", serial="=1")]


@pytest.mark.parametrize("algorithm", ["ec", "rsa"])
def test_fkb1_bundles_still_open(tmp_path, capsys, algorithm):
    old_key = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ec"
        else rsa.generate_private_key(65537, 2048)
    )
    old_key_path = tmp_path / "old.key.pem"
    old_key_path.write_bytes(
        old_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    old = _fkb1(FKB1_RECORDS, old_key.public_key(), batch_id="b" * 64, chunk=4)
    assert key_bundle.bundle_info(old)["wrap"]["alg"].startswith("ECDH" if algorithm == "ec" else "RSA")
    assert list(key_bundle.open_bundle(old, old_key_path.read_bytes())) == FKB1_RECORDS

    bundle = tmp_path / "chunk-00004.fkb"
    bundle.write_bytes(old)
    out = tmp_path / "keys"
    assert key_bundle.main(["open", str(bundle), "--key", str(old_key_path), "--out", str(out)]) == 0
    assert (out / "TH-100-1.key.pem").read_text() == FKB1_RECORDS[0]["private_key_pem"]
    assert stat.S_IMODE(os.stat(out / f"{file_stem('TH-100:3')}.key.pem").st_mode) == 0o600
    assert json.loads((out / "bundle.json").read_text())["converted_from"] == "FKB1"

    flipped = bytearray(old)
    flipped[-1] ^= 1
    with pytest.raises(KeyBundleError, match="damaged or was altered"):
        list(key_bundle.open_bundle(bytes(flipped), old_key_path.read_bytes()))
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyBundleError, match="another factory-line key"):
        list(key_bundle.open_bundle(old, other))


def test_convert_fkb1_to_cms(tmp_path, line):
    old_key = ec.generate_private_key(ec.SECP256R1())
    old_key_path = tmp_path / "old.key.pem"
    old_key_path.write_bytes(
        old_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "old.fkb").write_bytes(_fkb1(FKB1_RECORDS, old_key.public_key(), batch_id="B", chunk=2))
    new = tmp_path / "chunk-00002.tar.p7m"
    args = ["convert", str(tmp_path / "old.fkb"), "--key", str(old_key_path), "--recipient", str(line[1])]
    assert key_bundle.main([*args, "--out", str(new)]) == 0
    converted = new.read_bytes()
    assert key_bundle.bundle_info(converted)["format"] == "CMS EnvelopedData (DER)"
    assert list(key_bundle.open_bundle(converted, line[0].read_bytes(), line[1].read_bytes())) == FKB1_RECORDS


def test_bootstrap_makes_the_pair_once_and_keeps_an_fkb1_key(tmp_path):
    directory = tmp_path / "factory-line"
    directory.mkdir()
    old_key = ec.generate_private_key(ec.SECP256R1())
    (directory / "recipient.key.pem").write_bytes(
        old_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (directory / "recipient.pub.pem").write_text("public")
    assert ensure_factory_line_keys(directory) is True
    assert (directory / "recipient-fkb1.pub.pem").read_text() == "public"
    kept = serialization.load_pem_private_key((directory / "recipient-fkb1.key.pem").read_bytes(), None)
    assert kept.private_numbers() == old_key.private_numbers()
    certificate = (directory / "recipient.cert.pem").read_bytes()
    assert key_bundle.load_recipient(certificate)
    assert ensure_factory_line_keys(directory) is False
    assert (directory / "recipient.cert.pem").read_bytes() == certificate
