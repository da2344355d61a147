"""Verdicts: every reason code in one manifest, its quarantine.csv read back by header, the newer codes, the
accepted table, the full verdict that check_manifest and the pipeline share."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from include.catalog import load_catalog
from include.check_manifest import main as check_manifest
from include.errors import CatalogError
from include.manifest import REASONS, full_verdict, quarantine_csv, read_manifest, validate_manifest
from include.settings import Settings
from scripts.generate_manifest import _tampered_csr, _weak_rsa_csr, device_csr

HEADER = "serial_number,model,mac_address,hardware_revision,firmware_version,manufactured_at,factory,line,csr"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(Settings().catalog_path)


@pytest.fixture(scope="module")
def catalog_with_a_small_product(tmp_path_factory):
    """The shipped products plus X-1, which has no thing type, so its things take at most 3 attributes."""
    folder = tmp_path_factory.mktemp("catalog")
    (folder / "t.json.j2").write_text("{}")
    shutil.copytree(Path(Settings().catalog_path).parent / "templates", folder / "templates")
    shipped = Path(Settings().catalog_path).read_text().replace("templates/device.json.j2", "t.json.j2")
    (folder / "products.yaml").write_text(
        shipped
        + "  X-1:\n    template: t.json.j2\n    thing_name: '{model}-{serial_number}'\n    policy: P\n"
        "    certificate_mode: own_ca_key\n"
        "    attributes: {factory: factory, line: line, firmware_version: fw, hardware_revision: hw}\n"
    )
    return load_catalog(folder / "products.yaml")


def quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


def every_reason_manifest() -> tuple[bytes, dict[int, str]]:
    """A manifest with a row for every reason code (and a few accepted ones), and the code each row gets."""
    gw = device_csr("GW-200-G1")
    lines = [
        ("A1,TH-100,00:1A:2B:3C:4D:01,,,,,,", None),
        ("B2,TH-1\r00,,,,,,,", "line_break_in_field"),
        ("C3,TH-100,,,,,,,,extra", "malformed_row"),
        ("C4,TH-100", "malformed_row"),
        ("C5,TH-100,," + "X" * 2000 + ",,,,,", "field_too_long"),
        (",TH-100,,,,,,,", "missing_field"),
        ("D1,ZZ-9,,,,,,,", "unknown_model"),
        ("-E1,TH-100,,,,,,,", "invalid_serial"),
        ("E2,TH-100,00:11,,,,,,", "invalid_mac"),
        ("E3,TH-100,,,,yesterday,,,", "invalid_date"),
        ("F1,GW-200,,,,,,,", "csr_required"),
        (f"F2,TH-100,,,,,,,{quoted(gw)}", "csr_not_allowed"),
        (f"F3,GW-200,,,,,,,{quoted(gw + gw)}", "csr_multiple_pem"),
        ("F4,GW-200,,,,,,,not a csr", "csr_unparseable"),
        (f"F5,GW-200,,,,,,,{quoted(_tampered_csr('GW-200-F5'))}", "csr_signature_invalid"),
        (f"F6,GW-200,,,,,,,{quoted(_weak_rsa_csr('GW-200-F6'))}", "csr_key_unsupported"),
        ("G1.v2,TH-100,,,,,,,", "thing_name_invalid"),
        ("S" * 125 + ",TH-100,,,,,,,", "thing_name_too_long"),
        ("H1,X-1,,A,1,,SZX,L1,", "too_many_attributes"),
        ("H2,TH-100,,,,,Plant 3,,", "invalid_attribute_value"),
        ("A1,TH-100,00:1A:2B:3C:4D:02,,,,,,", "duplicate_serial"),
        ("a1,TH-100,00:1A:2B:3C:4D:03,,,,,,", "duplicate_serial_case"),
        ("J1,GW-200,00-1a-2b-3c-4d-01,,,,,," + quoted(gw), "duplicate_mac"),
        (f"G1,GW-200,,,,,,,{quoted(gw)}", None),
        ("K1,TH-100,001a2b3c4d04,,,,,,", None),
        ("K2,TH-100,,,,,,,", "over_max_devices"),
    ]
    data = "\n".join([HEADER, *(line for line, _ in lines)]) + "\n"
    return data.encode(), {n: code for n, (_, code) in enumerate(lines, start=1) if code}


def test_one_manifest_with_every_reason_and_its_quarantine_read_back_by_header(catalog_with_a_small_product):
    data, expected = every_reason_manifest()
    table = read_manifest(data)
    # Accepted by validation: A1, F5, F6 (their CSRs fail only in the full verdict), G1, K1; K2 is the sixth.
    result = full_verdict(table, catalog_with_a_small_product, max_devices=5)
    assert set(result.reasons) == set(REASONS)
    assert {row: code for row, code, _ in result.quarantined} == expected
    assert result.accepted["serial_number"].to_pylist() == ["A1", "G1", "K1"]
    rows = list(csv.DictReader(io.StringIO(quarantine_csv(table, result.quarantined).decode(), newline="")))
    assert [(int(r["manifest_row"]), r["reason_code"], r["reason"]) for r in rows] == result.quarantined
    assert all(None not in row and len(row) == len(table.header) + 4 for row in rows)
    by_row = {int(r["manifest_row"]): r for r in rows}
    assert by_row[2]["model"] == "TH-1\r00" and by_row[3]["extra_fields"] == "extra"
    assert by_row[4]["mac_address"] == "" and by_row[8]["serial_number"] == "'-E1"


@pytest.mark.parametrize(
    ("rows", "quarantined"),
    [
        (
            [
                "A1,TH-100,00:1A:2B:3C:4D:5E",
                "A2,TH-100,00-1a-2b-3c-4d-5e",
                "A3,X-1,001a2b3c4d5e",
                "A4,TH-100,",
            ],
            [
                (
                    2,
                    "duplicate_mac",
                    "mac_address '00-1a-2b-3c-4d-5e' is the device of row 1 ('00:1A:2B:3C:4D:5E')",
                ),
                (
                    3,
                    "duplicate_mac",
                    "mac_address '001a2b3c4d5e' is the device of row 1 ('00:1A:2B:3C:4D:5E')",
                ),
            ],
        ),
        (
            [
                "Ab1,TH-100,",
                "AB1,TH-100,",
                "ab1,X-1,",
                "X2,TH-100,",
                "x2,TH-100,",
                "A5,TH-100,",
                "A6,TH-100,",
            ],
            [
                (
                    2,
                    "duplicate_serial_case",
                    "serial number 'AB1' of TH-100 is row 1's 'Ab1' but for letter case",
                ),
                (
                    5,
                    "duplicate_serial_case",
                    "serial number 'x2' of TH-100 is row 4's 'X2' but for letter case",
                ),
            ],
        ),
    ],
)
def test_one_device_one_row_the_first_wins(catalog_with_a_small_product, rows, quarantined):
    data = "\n".join(["serial_number,model,mac_address", *rows]) + "\n"
    result = validate_manifest(read_manifest(data.encode()), catalog_with_a_small_product)
    assert result.quarantined == quarantined


def test_a_refused_row_does_not_claim_its_serial_or_mac(catalog):
    data = b"serial_number,model,mac_address,factory\nA1,TH-100,00:00:00:00:00:01,Plant 3\n"
    data += b"A1,TH-100,000000000001,\n"
    result = validate_manifest(read_manifest(data), catalog)
    assert result.accepted["row"].to_pylist() == [2]


def test_csr_multiple_pem_names_the_blocks(catalog):
    csr = device_csr("GW-200-G1")
    key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    result = validate_manifest(
        read_manifest(f"serial_number,model,csr\nG1,GW-200,{quoted(csr + key)}\n".encode()), catalog
    )
    assert result.quarantined == [
        (
            1,
            "csr_multiple_pem",
            "the csr field holds 2 PEM blocks ('CERTIFICATE REQUEST, PRIVATE KEY'); a device sends exactly "
            "one CERTIFICATE REQUEST",
        )
    ]


def test_the_accepted_table(catalog):
    csr = device_csr("GW-200-G1")
    data = (
        "serial_number,model,mac_address,manufactured_at,qa_station,csr\n"
        "T1,TH-100,00-1A-2B-3C-4D-5E,2026-11-02,QA1,\n"
        f"G1,GW-200,,2026-11-02T10:00:00.5+02:00,QA2,{csr.replace(chr(10), chr(92) + 'n')}\n"
    )
    accepted = validate_manifest(read_manifest(data.encode()), catalog).accepted
    assert accepted.schema.names == [
        "row",
        "model",
        "serial_number",
        "thing_name",
        "csr",
        "factory",
        "firmware_version",
        "hardware_revision",
        "line",
        "mac_address",
        "manufactured_at",
    ]
    assert accepted.schema.field("row").type == pa.int64()
    assert all(accepted.schema.field(name).type == pa.string() for name in accepted.schema.names[1:])
    assert accepted.to_pylist() == [
        {
            "row": 1,
            "model": "TH-100",
            "serial_number": "T1",
            "thing_name": "TH-100-T1",
            "csr": None,
            "factory": "",
            "firmware_version": "",
            "hardware_revision": "",
            "line": "",
            "mac_address": "00:1a:2b:3c:4d:5e",
            "manufactured_at": "2026-11-02T00:00:00Z",
        },
        {
            "row": 2,
            "model": "GW-200",
            "serial_number": "G1",
            "thing_name": "GW-200-G1",
            "csr": csr,  # trimmed before its \\n escapes were undone, as ever
            "factory": "",
            "firmware_version": "",
            "hardware_revision": "",
            "line": "",
            "mac_address": "",
            "manufactured_at": "2026-11-02T08:00:00Z",
        },
    ]


def test_a_thing_name_pattern_with_a_format_spec_is_refused(tmp_path):
    (tmp_path / "t.json.j2").write_text("{}")
    (tmp_path / "products.yaml").write_text(
        "products:\n  X-1:\n    template: t.json.j2\n    thing_name: '{model}-{serial_number:>12}'\n"
        "    policy: P\n    certificate_mode: own_ca_key\n"
    )
    with pytest.raises(CatalogError, match="must use plain"):
        validate_manifest(
            read_manifest(b"serial_number,model\nA1,X-1\n"), load_catalog(tmp_path / "products.yaml")
        )


def test_check_manifest_gives_the_full_verdict(tmp_path, capsys):
    data, expected = every_reason_manifest()
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(data)
    catalog = Settings().catalog_path
    assert (
        check_manifest([str(manifest), "--catalog", str(catalog), "--quarantine", str(tmp_path / "q.csv")])
        == 2
    )
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    verdict = full_verdict(read_manifest(data), load_catalog(catalog))
    assert summary["accepted"] == verdict.accepted.num_rows
    assert summary["reasons"] == verdict.reasons
    assert summary["reasons"]["csr_signature_invalid"] == summary["reasons"]["csr_key_unsupported"] == 1
    assert (tmp_path / "q.csv").read_bytes() == quarantine_csv(read_manifest(data), verdict.quarantined)
