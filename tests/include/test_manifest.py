"""Manifest contract v1: every reason code, tolerated formats, hostile inputs."""

from __future__ import annotations

import csv
import io
import re

import pytest

from include.catalog import load_catalog
from include.errors import ManifestError
from include.manifest import (
    REASONS,
    full_verdict,
    quarantine_csv,
    read_manifest,
    retry_csv,
    validate_manifest,
)
from include.settings import Settings
from scripts.generate_manifest import device_csr
from tests.include.flow import SAMPLE


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(Settings().catalog_path)


def run(text: str | bytes, catalog, **options):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return validate_manifest(read_manifest(data), catalog, **options)


def test_sample_has_every_row_reason_once(catalog):
    result = full_verdict(read_manifest(SAMPLE.read_bytes()), catalog)
    expected = set(REASONS) - {"too_many_attributes", "over_max_devices"}  # catalog- and run-dependent
    expected -= {
        "line_break_in_field",
        "csr_multiple_pem",
        "duplicate_serial_case",
        "duplicate_mac",
    }  # newer than the sample
    assert result.reasons == {code: 1 for code in expected}
    assert result.rows == result.accepted.num_rows + len(result.quarantined) == 1000
    assert result.ignored_columns == ["qa_station"]


def test_bom_crlf_blank_lines_header_case_and_spaces(catalog):
    text = (
        "\ufeff Serial Number ,MODEL,Mac-Address\r\n\r\n"
        "A1,TH-100,00-1A-2B-3C-4D-5E\r\n  \r\nA2,TH-100,001a2b3c4d5f\r\n"
    )
    result = run(text, catalog)
    assert result.accepted["row"].to_pylist() == [1, 2]
    assert result.accepted["mac_address"].to_pylist() == [
        "00:1a:2b:3c:4d:5e",
        "00:1a:2b:3c:4d:5f",
    ]
    assert result.quarantined == []


def test_normalised_values(catalog):
    result = run("serial_number,model,manufactured_at\n  A1 ,TH-100,2026-11-02T10:00:00+02:00\n", catalog)
    (row,) = result.accepted.to_pylist()
    assert row["serial_number"] == "A1" and row["thing_name"] == "TH-100-A1"
    assert row["manufactured_at"] == "2026-11-02T08:00:00Z"


@pytest.mark.parametrize(
    ("row", "code", "words"),
    [
        ("A1,TH-100,,,extra", "malformed_row", "5 fields, the header has 4"),
        (",TH-100,,", "missing_field", "serial_number is empty"),
        ("A1,,,", "missing_field", "model is empty"),
        ("A1,XX-9,,", "unknown_model", "'XX-9' is not in the product catalog"),
        ("-A1,TH-100,,", "invalid_serial", "'-A1'"),
        ("A1,TH-100,00:11:22,", "invalid_mac", "'00:11:22'"),
        ("A1,TH-100,,yesterday", "invalid_date", "'yesterday'"),
        ("A.1,TH-100,,", "thing_name_invalid", "'TH-100-A.1'"),
        ("S" * 125 + ",TH-100,,", "thing_name_too_long", "132 characters"),
        (
            "A1,TH-100,,2026-01-01T00:00:00Z" + "0" * 2000,
            "field_too_long",
            "manufactured_at is longer than 1024",
        ),
    ],
)
def test_each_reason_has_a_precise_sentence(catalog, row, code, words):
    result = run(f"serial_number,model,mac_address,manufactured_at\n{row}\n", catalog)
    assert result.accepted.num_rows == 0
    ((number, got, sentence),) = result.quarantined
    assert (number, got) == (1, code)
    assert words in sentence


def test_csr_reasons(catalog):
    good = device_csr("GW-200-G1")
    tampered = good.replace(good.splitlines()[3], good.splitlines()[3][::-1])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerows(
        [
            ["serial_number", "model", "csr"],
            ["G1", "GW-200", good],
            ["G2", "GW-200", ""],
            ["G3", "GW-200", "not a csr"],
            ["G4", "GW-200", tampered],
            ["T1", "TH-100", good],
            ["G5", "GW-200", good.replace("\n", "\\n")],  # one-line PEM with literal \n escapes is tolerated
        ]
    )
    table = read_manifest(text.getvalue().encode())
    shape = validate_manifest(table, catalog)  # the CSR's shape only: the tampered one passes
    assert shape.accepted["serial_number"].to_pylist() == ["G1", "G4", "G5"]
    codes = {n: code for n, code, _ in shape.quarantined}
    assert codes == {2: "csr_required", 3: "csr_unparseable", 5: "csr_not_allowed"}
    result = full_verdict(table, catalog)
    assert result.accepted["serial_number"].to_pylist() == ["G1", "G5"]
    codes = {n: code for n, code, _ in result.quarantined}
    assert codes[2] == "csr_required" and codes[3] == "csr_unparseable" and codes[5] == "csr_not_allowed"
    assert codes[4] in ("csr_signature_invalid", "csr_unparseable")


def test_duplicates_keep_the_first_row(catalog):
    result = run("serial_number,model\nA1,TH-100\nA2,TH-100\nA1,TH-100\n", catalog)
    assert result.accepted["row"].to_pylist() == [1, 2]
    assert result.quarantined == [
        (3, "duplicate_serial", "serial number A1 of TH-100 already appears in row 1")
    ]


def test_attribute_values_aws_refuses(catalog):
    result = run("serial_number,model,factory\nA1,TH-100,Plant 3\n", catalog)
    assert result.quarantined[0][1] == "invalid_attribute_value"


def _one_product_catalog(tmp_path, extra: str = ""):
    """A catalog with one product X-1 (no thing type), plus the given YAML lines."""
    (tmp_path / "t.json.j2").write_text("{}")
    (tmp_path / "products.yaml").write_text(
        "products:\n  X-1:\n    template: t.json.j2\n    thing_name: '{model}-{serial_number}'\n"
        "    policy: P\n    certificate_mode: own_ca_key\n" + extra
    )
    return load_catalog(tmp_path / "products.yaml")


def test_too_many_attributes_for_a_product_without_thing_type(tmp_path):
    catalog = _one_product_catalog(
        tmp_path,
        "    attributes: {factory: factory, line: line, firmware_version: fw, hardware_revision: hw}\n",
    )
    result = run(
        "serial_number,model,factory,line,firmware_version,hardware_revision\nA,X-1,f,l,1,2\nB,X-1,f,,,\n",
        catalog,
    )
    assert result.accepted["serial_number"].to_pylist() == ["B"]
    assert result.quarantined[0][1:] == (
        "too_many_attributes",
        "the row gives 4 attributes; a X-1 thing may have at most 3",
    )


def test_product_override_and_max_devices(catalog):
    result = run("serial_number\nA1\nA2\nA3\n", catalog, product="TH-100", max_devices=2)
    assert result.accepted["thing_name"].to_pylist() == ["TH-100-A1", "TH-100-A2"]
    assert result.quarantined[0][:2] == (3, "over_max_devices")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b",,\n\n", "no header row"),
        (
            "serial_number,model\nA1,Th\xe9\n".encode("latin-1"),
            "not UTF-8: byte 0xe9 at offset 25 (line 2)",
        ),
        (b"serial_number,Serial Number\n", "more than once"),
        (b'serial_number,model\n"A1,TH-100\n', "not valid CSV"),
    ],
)
def test_whole_file_problems_raise_precise_errors(data, words):
    with pytest.raises(ManifestError, match=re.escape(words)):
        read_manifest(data)


def test_missing_required_column(catalog):
    with pytest.raises(ManifestError, match=r"lacks required column\(s\) \['model'\]"):
        run("serial_number,mac\nA1,x\n", catalog)


def test_huge_field_is_refused_per_row_not_for_the_file(catalog):
    result = run("serial_number,model,csr\nA1,GW-200," + "A" * 1_000_000 + "\nA2,TH-100,\n", catalog)
    assert result.accepted["serial_number"].to_pylist() == ["A2"]
    assert result.quarantined[0][1] == "field_too_long"


def test_quarantine_and_retry_files_neutralise_formulas_and_round_trip(catalog):
    text = "serial_number,model,factory\n=1+1,TH-100,@SUM(A1)\nA2,TH-100,+x\nA3,TH-100,SZX\n"
    table = read_manifest(text.encode())
    result = validate_manifest(table, catalog)
    quarantine = quarantine_csv(table, result.quarantined).decode()
    for line in quarantine.splitlines()[1:]:
        assert all(not cell.startswith(("=", "+", "-", "@")) for cell in next(csv.reader([line])))
    assert "'=1+1" in quarantine and "'@SUM(A1)" in quarantine
    retry = retry_csv(table, [3])
    assert retry.decode().splitlines() == ["serial_number,model,factory", "A3,TH-100,SZX"]
    # A neutralised cell reads back as the original value.
    reread = read_manifest(retry_csv(table, [2]))
    assert validate_manifest(reread, catalog).quarantined[0][2].startswith("factory '+x'")


def test_check_manifest_cli(tmp_path, capsys):
    from include.check_manifest import main

    assert main([str(SAMPLE), "--quarantine", str(tmp_path / "q.csv"), "--show", "1"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert '"quarantined": 16' in out[0] and out[1].startswith("row ")
    assert (tmp_path / "q.csv").read_text().count("\n") >= 17
    (tmp_path / "ok.csv").write_text("serial_number,model\nA1,TH-100\n")
    assert main([str(tmp_path / "ok.csv")]) == 0
    (tmp_path / "bad.csv").write_bytes(b"serial,model\n")
    assert main([str(tmp_path / "bad.csv")]) == 1


def test_device_csr_survives_the_retry_manifest(catalog):
    out = io.StringIO()
    csv.writer(out).writerows([["serial_number", "model", "csr"], ["G1", "GW-200", device_csr("GW-200-G1")]])
    table = read_manifest(out.getvalue().encode())
    retry = retry_csv(table, [1])
    assert b"'-----BEGIN CERTIFICATE REQUEST-----" in retry  # neutralised for spreadsheets...
    result = validate_manifest(read_manifest(retry), catalog)
    assert result.accepted["serial_number"].to_pylist() == ["G1"]  # ...and still a valid CSR when read back
    assert result.accepted["csr"][0].as_py().startswith("-----BEGIN CERTIFICATE REQUEST-----")


def test_mac_with_a_line_break_and_bare_macs_normalise_value_by_value(catalog):
    text = 'serial_number,model,mac_address\nA1,TH-100,"00:1A:2B:3C:4D\n:5E"\nA2,TH-100,001A2B3C4D5F\n'
    result = run(text, catalog)
    assert result.accepted["mac_address"].to_pylist() == ["00:1a:2b:3c:4d:5f"]
    assert result.quarantined[0][:2] == (1, "invalid_mac")


def test_a_product_mapping_no_attributes_gives_things_without_attributes(tmp_path):
    bare = _one_product_catalog(tmp_path)
    result = validate_manifest(read_manifest(b"serial_number,model\nA1,X-1\nA2,X-1\n"), bare)
    assert result.accepted.column_names == ["row", "model", "serial_number", "thing_name", "csr"]
    assert result.accepted["thing_name"].to_pylist() == ["X-1-A1", "X-1-A2"]
