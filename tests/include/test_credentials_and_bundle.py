"""Credentials per chunk (inline and on the process pool) and the encrypted key bundle."""

from __future__ import annotations

import os
import stat

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from include import key_bundle
from include.certificate_authority import CertificateAuthority, certificate_id
from include.credentials import ProductSpec, issue_chunk
from include.errors import KeyBundleError
from scripts.generate_manifest import device_csr


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_development()


TH = ProductSpec("TH-100", "ec-p256", device_csr=False, attributes=(("serialNumber", "SerialNumber"),))
GW = ProductSpec("GW-200", "ec-p256", device_csr=True, attributes=())
LK = ProductSpec("LK-300", "rsa-2048", device_csr=False, attributes=())


def _device(row: int, model: str, serial: str, csr: str | None = None) -> bytes:
    """One record of a chunk's devices.jsonl, as pre-flight writes it."""
    record = {
        "row": row,
        "model": model,
        "serial_number": serial,
        "thing_name": f"{model}-{serial}",
        "attributes": {"serialNumber": serial},
        "csr": csr,
    }
    return orjson.dumps(record)


def _devices(count: int) -> list[bytes]:
    return [
        _device(i + 1, "GW-200", f"G{i}", device_csr(f"G{i}"))
        if i % 10 == 0
        else _device(i + 1, "TH-100", f"T{i}")
        for i in range(count)
    ]


def _lines(blob: bytes) -> list[dict]:
    return [orjson.loads(line) for line in blob.splitlines()]


@pytest.mark.parametrize("workers", [1, 2])
def test_chunk_in_order_keys_match_certificates(ca, workers):
    devices = _devices(600)
    products = {"TH-100": TH, "GW-200": GW}
    output = issue_chunk(devices, products, ca.certificate_pem, ca.private_key_pem(), workers=workers)
    assert output.counts == {"GW-200": 60, "TH-100": 540} and output.sealed == 540

    ledger = _lines(output.ledger)
    assert [entry["row"] for entry in ledger] == list(range(1, 601))  # input order, across slices
    params = {group: _lines(blob) for group, blob in output.params.items()}
    certificates = {}
    for group, lines in params.items():
        sizes = [len(line) for line in output.params[group].splitlines(keepends=True)]
        entries = [e for e in ledger if e["group"] == group]
        assert [e["bytes"] for e in entries] == sizes  # the ledger locates each line in the parameter file
        for entry, line in zip(entries, lines, strict=True):
            assert line["ThingName"] == entry["thing_name"] and "PRIVATE" not in orjson.dumps(line).decode()
            cert = x509.load_pem_x509_certificate(line["CertificatePem"].encode())
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == entry["thing_name"]
            assert entry["certificate_id"] == certificate_id(cert)
            certificates[entry["thing_name"]] = cert
    assert params["TH-100"][0]["SerialNumber"] == "T1"

    bundle = _lines(output.bundle)
    assert {b["thing_name"] for b in bundle} == {e["thing_name"] for e in ledger if e["group"] == "TH-100"}
    for record in bundle:
        assert record["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
        key = serialization.load_pem_private_key(record["private_key_pem"].encode(), None)
        assert key.public_key() == certificates[record["thing_name"]].public_key()
    assert "PRIVATE" not in repr(output)


def test_rsa_product_keys(ca):
    output = issue_chunk(
        [_device(1, "LK-300", "1")], {"LK-300": LK}, ca.certificate_pem, ca.private_key_pem()
    )
    (record,) = _lines(output.bundle)
    key = serialization.load_pem_private_key(record["private_key_pem"].encode(), None)
    assert key.key_size == 2048


@pytest.mark.parametrize("rsa", [False, True])
def test_bundle_round_trip(tmp_path, rsa):
    private_path, public_path = key_bundle.generate_recipient(tmp_path / "line", use_rsa=rsa)
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    records = [
        {
            "thing_name": f"TH-100-{i}",
            "serial_number": str(i),
            "model": "TH-100",
            "row": i,
            "certificate_id": "c" * 64,
            "certificate_pem": "CERT",
            "private_key_pem": f"KEY{i}",
        }
        for i in range(3)
    ]
    sealed = key_bundle.seal(records, public_path.read_bytes(), batch_id="b" * 64, chunk=7)
    assert b"KEY1" not in sealed
    header = key_bundle.read_header(sealed)
    assert (header["count"], header["chunk"], header["cipher"]) == (3, 7, "AES-256-GCM")
    assert header["wrap"]["alg"] == ("RSA-OAEP-SHA256" if rsa else "ECDH-P256-HKDF-SHA256-A256GCM")
    assert list(key_bundle.open_bundle(sealed, private_path.read_bytes())) == records

    out = tmp_path / "opened"
    bundle_path = tmp_path / "chunk.fkb"
    bundle_path.write_bytes(sealed)
    assert key_bundle.main(["open", str(bundle_path), "--key", str(private_path), "--out", str(out)]) == 0
    assert (out / "TH-100-1.key.pem").read_text() == "KEY1"
    assert stat.S_IMODE(os.stat(out / "TH-100-1.key.pem").st_mode) == 0o600
    assert (out / "index.csv").read_text().count("\n") == 4


def test_bundle_refuses_wrong_key_and_tampering(tmp_path):
    _, public_path = key_bundle.generate_recipient(tmp_path / "line")
    other_private, _ = key_bundle.generate_recipient(tmp_path / "other")
    sealed = key_bundle.seal([{"private_key_pem": "K"}], public_path.read_bytes(), batch_id="b", chunk=0)
    with pytest.raises(KeyBundleError, match="another factory-line key"):
        list(key_bundle.open_bundle(sealed, other_private.read_bytes()))
    own_private = tmp_path / "line" / "recipient.key.pem"
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(KeyBundleError, match="damaged or was altered"):
        list(key_bundle.open_bundle(bytes(flipped), own_private.read_bytes()))
    header_changed = sealed.replace(b'"count": 1', b'"count": 2')
    with pytest.raises(KeyBundleError, match="damaged or was altered"):
        list(key_bundle.open_bundle(header_changed, own_private.read_bytes()))
    with pytest.raises(KeyBundleError, match="magic"):
        key_bundle.read_header(b"PK\x03\x04")
    bundle_path = tmp_path / "x.fkb"
    bundle_path.write_bytes(sealed)
    code = key_bundle.main(
        ["open", str(bundle_path), "--key", str(other_private), "--out", str(tmp_path / "o")]
    )
    assert code == 1


def test_weak_recipients_are_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyBundleError, match="RSA"):
        key_bundle.seal([], pem, batch_id="b", chunk=0)
