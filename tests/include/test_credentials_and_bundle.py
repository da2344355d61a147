"""Credentials per chunk (inline and on the process pool) and the key bundle entries they hand over."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import os
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from include import credentials, key_bundle_archive
from include.catalog import Attribute, Product
from include.certificate_authority import CertificateAuthority, certificate_id
from include.credentials import ProductSpec, issue_chunk
from include.errors import CertificateAuthorityError
from include.worker_pool import shutdown_workers, worker_pids, worker_pool
from scripts.generate_manifest import device_csr


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_development()


TH = ProductSpec("TH-100", "ec-p256", mode="own_ca_key", attributes=(("serial_number", "SerialNumber"),))
GW = ProductSpec(
    "GW-200", "ec-p256", mode="device_csr", attributes=(("mac_address", "MacAddress"), ("line", "Line"))
)
LK = ProductSpec("LK-300", "rsa-2048", mode="own_ca_key", attributes=())
PRODUCTS = {"TH-100": TH, "GW-200": GW, "LK-300": LK}


def _table(devices: list[tuple[int, str, str, str | None]]) -> pa.Table:
    """Devices (row, model, serial, csr) as the pipeline hands them over: thing name {model}-{serial}."""
    return pa.table(
        {
            "row": pa.array([d[0] for d in devices], pa.int64()),
            "model": [d[1] for d in devices],
            "serial_number": [d[2] for d in devices],
            "thing_name": [f"{d[1]}-{d[2]}" for d in devices],
            "csr": pa.array([d[3] for d in devices], pa.string()),
            "mac_address": [f"00:1a:2b:00:00:{d[0] % 256:02x}" for d in devices],
        }
    )


def _devices(count: int) -> pa.Table:
    return _table(
        [
            (i + 1, "GW-200", f"G{i}", device_csr(f"G{i}"))
            if i % 10 == 0
            else (i + 1, "TH-100", f"T_{i}", None)
            for i in range(count)
        ]
    )


def _lines(blob: bytes) -> list[dict]:
    return [orjson.loads(line) for line in blob.splitlines()]


def _bundle(output: credentials.ChunkOutput) -> list[dict]:
    """The devices of a chunk's bundle entries as the factory line reads them (the archive, unencrypted)."""
    tar = key_bundle_archive.archive(output.bundle, {})
    return list(key_bundle_archive.records(key_bundle_archive.read_archive(tar)))


@pytest.mark.parametrize("workers", [1, 2])
def test_chunk_in_order_keys_match_certificates(ca, workers):
    devices = _devices(600)
    output = issue_chunk(devices, PRODUCTS, ca.certificate_pem, ca.private_key_pem(), workers=workers)
    assert output.counts == {"GW-200": 60, "TH-100": 540} and output.sealed == 540 and output.failures == []

    ledger = output.ledger
    assert ledger.schema == pa.schema(
        [("row", pa.int64()), ("group", pa.string()), ("bytes", pa.int64()), ("certificate_id", pa.string())]
    )
    assert ledger.column("row").to_pylist() == list(range(1, 601))  # input order, across slices
    things = dict(
        zip(devices.column("row").to_pylist(), devices.column("thing_name").to_pylist(), strict=True)
    )
    macs = dict(
        zip(devices.column("row").to_pylist(), devices.column("mac_address").to_pylist(), strict=True)
    )
    certificates = {}
    for group, blob in output.params.items():
        entries = [e for e in ledger.to_pylist() if e["group"] == group]
        sizes = [len(line) for line in blob.splitlines(keepends=True)]
        assert [e["bytes"] for e in entries] == sizes  # the ledger locates each line in the parameter file
        for entry, line in zip(entries, _lines(blob), strict=True):
            assert line["ThingName"] == things[entry["row"]] and "PRIVATE" not in orjson.dumps(line).decode()
            der = x509.load_pem_x509_certificate(line["CertificatePem"].encode()).public_bytes(
                serialization.Encoding.DER
            )
            cert = x509.load_der_x509_certificate(der)
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == line["ThingName"]
            assert entry["certificate_id"] == certificate_id(cert) == hashlib.sha256(der).hexdigest()
            cert.verify_directly_issued_by(ca.certificate)
            certificates[line["ThingName"]] = cert
            if group == "GW-200":
                assert (line["MacAddress"], line["Line"]) == (macs[entry["row"]], "")  # no line column: ""
            else:
                assert list(line) == ["ThingName", "CertificatePem", "SerialNumber"]
    assert _lines(output.params["TH-100"])[0]["SerialNumber"] == "T_1"

    bundle = _bundle(output)
    assert [b["row"] for b in bundle] == [e["row"] for e in ledger.to_pylist() if e["group"] == "TH-100"]
    for record in bundle:
        assert record["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
        key = serialization.load_pem_private_key(record["private_key_pem"].encode(), None)
        assert key.public_key() == certificates[record["thing_name"]].public_key()
        assert (
            record["certificate_pem"]
            == certificates[record["thing_name"]].public_bytes(serialization.Encoding.PEM).decode()
        )
    assert "PRIVATE" not in repr(output) and "BEGIN" not in repr(output)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_bundle_is_handed_over_slice_by_slice_in_device_order(ca, workers):
    parts: list[key_bundle_archive.Entries] = []
    output = issue_chunk(
        _devices(600),
        PRODUCTS,
        ca.certificate_pem,
        ca.private_key_pem(),
        workers=workers,
        bundle=parts.append,
    )
    assert output.bundle.count == 0 and output.ledger.num_rows == 600  # the entries went to the caller
    assert len(parts) == (1 if workers == 1 else 2 * credentials.SLICES_PER_WORKER)
    whole = dataclasses.replace(output, bundle=key_bundle_archive.Entries.join(parts))
    rows = [e["row"] for e in output.ledger.to_pylist() if e["group"] == "TH-100"]
    assert [b["row"] for b in _bundle(whole)] == rows and sum(p.count for p in parts) == 540


def _broken_csrs() -> dict[str, str]:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused on purpose
    good = x509.load_pem_x509_csr(device_csr("GW-200-BAD").encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[der.find(b"GW-200-BAD")] ^= 0x01
    tampered = base64.encodebytes(bytes(der)).decode()
    return {
        "unparseable": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "tampered": f"-----BEGIN CERTIFICATE REQUEST-----\n{tampered}-----END CERTIFICATE REQUEST-----\n",
        "weak": device_csr("GW-200-WEAK", weak),
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_one_bad_device_fails_alone(ca, workers):
    broken = _broken_csrs()
    rows = [
        (i, "TH-100", f"T{i}", None) if i % 2 else (i, "GW-200", f"G{i}", device_csr("x"))
        for i in range(1, 600)
    ]
    rows[10] = (11, "GW-200", "BAD1", broken["unparseable"])
    rows[300] = (301, "GW-200", "BAD2", broken["tampered"])
    rows[301] = (302, "GW-200", "BAD3", broken["weak"])
    rows[450] = (451, "GW-200", "BAD4", None)
    rows[598] = (599, "XX-999", "BAD5", None)
    devices = _table(rows)
    output = issue_chunk(devices, PRODUCTS, ca.certificate_pem, ca.private_key_pem(), workers=workers)
    assert [(row, code) for row, code, _ in output.failures] == [
        (11, "csr_unparseable"),
        (301, "csr_signature_invalid"),
        (302, "csr_key_unsupported"),
        (451, "csr_required"),
        (599, "credential_error"),
    ]
    for row, _, sentence in output.failures:
        assert sentence.startswith(f"row {row} (") and "BEGIN" not in sentence and "AAAA" not in sentence
    assert "RSA-1024" in output.failures[2][2] and "XX-999" in output.failures[4][2]
    assert output.ledger.column("row").to_pylist() == [
        r[0] for r in rows if r[0] not in {11, 301, 302, 451, 599}
    ]


def test_unexpected_errors_name_the_row_and_never_their_text(ca, monkeypatch):
    real = credentials.encode_line

    def flaky(names, values):
        if values[0] == "TH-100-B":
            raise RuntimeError("-----BEGIN PRIVATE KEY----- secret")
        return real(names, values)

    monkeypatch.setattr(credentials, "encode_line", flaky)
    devices = _table([(1, "TH-100", "A", None), (2, "TH-100", "B", None), (3, "TH-100", "", None)])
    output = issue_chunk(devices, PRODUCTS, ca.certificate_pem, ca.private_key_pem())
    assert output.failures == [
        (2, "credential_error", "row 2 (TH-100-B): issuing its credentials failed (RuntimeError)")
    ]
    assert output.ledger.column("row").to_pylist() == [1, 3] and output.sealed == 2
    assert b"TH-100-B" not in output.bundle.index + output.bundle.members  # its key went nowhere


def test_a_bad_ca_fails_the_whole_chunk(ca):
    other = CertificateAuthority.create_development("Other")
    with pytest.raises(CertificateAuthorityError, match="does not belong"):
        issue_chunk(_devices(3), PRODUCTS, ca.certificate_pem, other.private_key_pem())


def test_workers_live_across_chunks(ca):
    first = issue_chunk(_devices(600), PRODUCTS, ca.certificate_pem, ca.private_key_pem(), workers=2)
    pool, pids = worker_pool(2), worker_pids()  # the pool issue_chunk used
    assert len(pids) == 2 and os.getpid() not in pids
    second = issue_chunk(_devices(600), PRODUCTS, ca.certificate_pem, ca.private_key_pem(), workers=2)
    assert worker_pool(2) is pool and worker_pids() == pids  # no new processes for the next chunk
    assert first.counts == second.counts
    shutdown_workers()
    assert worker_pids() == []
    assert worker_pool(2) is not pool
    shutdown_workers()


def test_validity_days_per_product(ca):
    short = {"TH-100": dataclasses.replace(TH, validity_days=30)}
    output = issue_chunk(_table([(1, "TH-100", "A", None)]), short, ca.certificate_pem, ca.private_key_pem())
    cert = x509.load_pem_x509_certificate(_lines(output.params["TH-100"])[0]["CertificatePem"].encode())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30, minutes=5)
    assert ProductSpec("X", "ec-p256", ()).validity_days == 3650
    with pytest.raises(ValueError, match="at least 1"):
        ProductSpec("X", "ec-p256", (), validity_days=0)


def test_product_spec_of_a_catalog_product():
    product = Product(
        model="TH-100",
        template=Path("t.json.j2"),
        thing_name="{model}-{serial_number}",
        policy="P",
        certificate_mode="own_ca_key",
        attributes=(Attribute(column="mac_address", name="macAddress"),),
    )
    assert ProductSpec.of(product) == ProductSpec("TH-100", "ec-p256", (("mac_address", "MacAddress"),))


def test_minimal_and_empty_tables(ca):
    """Only the required columns (no csr, no attribute columns): attributes are ""; no rows: empty output."""
    devices = pa.table(
        {
            "row": pa.array([7], pa.int64()),
            "model": ["GW-200"],
            "serial_number": ["G7"],
            "thing_name": ["GW-200-G7"],
        }
    )
    output = issue_chunk(devices, PRODUCTS, ca.certificate_pem, ca.private_key_pem())
    assert [(row, code) for row, code, _ in output.failures] == [(7, "csr_required")]
    output = issue_chunk(devices, {"GW-200": TH}, ca.certificate_pem, ca.private_key_pem())
    assert _lines(output.params["TH-100"])[0]["SerialNumber"] == "G7" and output.sealed == 1
    empty = issue_chunk(_devices(0), PRODUCTS, ca.certificate_pem, ca.private_key_pem(), workers=2)
    assert (empty.params, empty.ledger.num_rows, empty.bundle, empty.sealed, empty.failures) == (
        {},
        0,
        key_bundle_archive.Entries(),
        0,
        [],
    )


def test_rsa_product_keys(ca):
    output = issue_chunk(
        _table([(1, "LK-300", "1", None)]), PRODUCTS, ca.certificate_pem, ca.private_key_pem()
    )
    (record,) = _bundle(output)
    key = serialization.load_pem_private_key(record["private_key_pem"].encode(), None)
    assert key.key_size == 2048
    cert = x509.load_pem_x509_certificate(record["certificate_pem"].encode())
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.certificate)
