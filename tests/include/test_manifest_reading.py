"""Reading a manifest: as Python's strict csv reader reads it, line breaks, the quarantine layout."""

from __future__ import annotations

import csv
import io
import random
import re

import pytest

from include.catalog import load_catalog
from include.errors import ManifestError
from include.manifest import quarantine_csv, read_manifest, retry_csv, validate_manifest
from include.settings import Settings
from scripts.generate_manifest import device_csr


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(Settings().catalog_path)


def rows_of(data: bytes) -> list[list[str]]:
    table = read_manifest(data)
    cells = [list(row.values()) for row in table.cells.to_pylist()]
    return [table.malformed.get(n, row) for n, row in enumerate(cells, start=1)]


def python_csv(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and data rows as Python's strict csv reader gives them, blank lines left out."""
    csv.field_size_limit(1 << 30)
    records = [r for r in csv.reader(io.StringIO(text, newline=""), strict=True) if any(c.strip() for c in r)]
    return records[0], records[1:]


@pytest.mark.parametrize(
    "pieces",
    [
        ["a", "b", " ", ",", '"', '""', "\n"],  # LF line ends, quotes anywhere
        ["a", ",", '"', "\r\n", " ", "x"],  # CRLF line ends, also inside quoted fields
    ],
)
def test_every_readable_file_reads_as_pythons_csv_reader_reads_it(pieces):
    rng = random.Random(7)
    for _ in range(1500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40)))
        try:
            header, expected = python_csv(text)
        except (csv.Error, IndexError):  # broken, or nothing but blank lines
            with pytest.raises(ManifestError):
                read_manifest(text.encode())
            continue
        try:
            table = read_manifest(text.encode())
        except ManifestError as exc:
            assert "more than once" in str(exc), text  # the one refusal Python's reader has no opinion on
            continue
        assert table.header == header, text
        assert rows_of(text.encode()) == expected, text


def test_quotes_only_at_a_fields_start_open_it():
    data = b'serial_number,model,factory\nA1,TH-100,5" panel\n"A""2",TH-100,"x,y"\nA3,TH-100,a""b"\n'
    assert rows_of(data) == [
        ["A1", "TH-100", '5" panel'],
        ['A"2', "TH-100", "x,y"],
        ["A3", "TH-100", 'a""b"'],
    ]


def test_a_field_opened_then_left_open_is_found_past_its_doubled_quotes():
    with pytest.raises(ManifestError, match="near line 3: the quoted field opened there"):
        read_manifest(b'serial_number,model\nA1,TH-100\nA2,"TH""\n""100\n')


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (
            b'serial_number,model\nA1,"TH-100\nA2,TH-100\n',
            "near line 2: the quoted field opened there never closes",
        ),
        (b'serial_number,model\nA1,"TH"-100\n', "near line 2: ',' expected after '\"'"),
        (b"serial_number,mo\rdel\nA1,TH-100\n", "header row has a line break outside quotes"),
        (b"serial_number,model\rA1,TH-100\r", "header row has a line break outside quotes"),  # classic Mac
    ],
)
def test_broken_quoting_and_bare_cr_line_ends_fail_the_file(data, words):
    with pytest.raises(ManifestError, match=re.escape(words)):
        read_manifest(data)


def test_a_bare_cr_in_an_unquoted_field_keeps_the_row_whole_and_refuses_it(catalog):
    data = b"serial_number,model,factory\nA1,TH-1\r00,SZX\nA2,TH-100,SZX\nA3,TH-100,S\rZX,extra\n"
    table = read_manifest(data)
    assert table.rows == 3  # not 5: the CR split nothing
    assert table.line_breaks == {1: 1, 3: 2}
    assert table.cells["model"].to_pylist() == ["TH-1\r00", "TH-100", "TH-100"]
    result = validate_manifest(table, catalog)
    assert result.accepted["row"].to_pylist() == [2]
    assert result.quarantined == [
        (
            1,
            "line_break_in_field",
            "field model has a line break outside quotes, which would split the row: 'TH-1\\r00'",
        ),
        (
            3,
            "line_break_in_field",
            "field factory has a line break outside quotes, which would split the row: 'S\\rZX'",
        ),
    ]
    assert (
        retry_csv(table, [1, 3])
        == b'serial_number,model,factory\r\nA1,"TH-1\r00",SZX\r\nA3,TH-100,"S\rZX",extra\r\n'
    )


def test_in_a_crlf_file_a_bare_lf_outside_quotes_is_a_line_break_in_a_field(catalog):
    csr = device_csr("GW-200-G1")  # LF line ends inside a quoted field: data
    text = f'serial_number,model,csr\r\nG1,GW-200,"{csr}"\r\nT1,TH-\n100,\r\nT2,TH-100,\r\n'
    table = read_manifest(text.encode())
    assert table.rows == 3 and table.line_breaks == {2: 1}
    result = validate_manifest(table, catalog)
    assert result.accepted["serial_number"].to_pylist() == ["G1", "T2"]
    assert result.accepted["csr"][0].as_py() == csr.strip()
    assert [q[:2] for q in result.quarantined] == [(2, "line_break_in_field")]


def test_in_an_lf_file_crlf_line_ends_and_quoted_crs_are_fine():
    data = b'serial_number,model,factory\nA1,TH-100,"S\rZX"\r\nA2,TH-100,x\n'
    table = read_manifest(data)
    assert table.line_breaks == {}
    assert rows_of(data) == [["A1", "TH-100", "S\rZX"], ["A2", "TH-100", "x"]]


def test_nul_characters_survive_the_line_break_rule():
    data = b"serial_number,model,factory\nA\x00r1,TH-100,x\rz\nA2,TH\x00-100,\x00\x000n\n"
    table = read_manifest(data)
    assert table.line_breaks == {1: 2}
    assert rows_of(data) == [["A\x00r1", "TH-100", "x\rz"], ["A2", "TH\x00-100", "\x00\x000n"]]


def test_blank_lines_and_rows_numbering_around_malformed_rows():
    data = b'\n \n serial_number ,model\n\nA1,TH-100\n , \nA2\n"",""\nA3,TH-100,x,y\n,\nA4,TH-100\n\n'
    table = read_manifest(data)
    assert table.rows == 4
    assert rows_of(data) == [["A1", "TH-100"], ["A2"], ["A3", "TH-100", "x", "y"], ["A4", "TH-100"]]
    assert set(table.malformed) == {2, 3}


def test_a_record_longer_than_a_parse_block_is_still_one_row(catalog):
    data = b"serial_number,model,factory\nA1,TH-100," + b"x" * (17 << 20) + b"\nA2,TH-100,y\n"
    result = validate_manifest(read_manifest(data), catalog)
    assert result.accepted["row"].to_pylist() == [2]
    assert result.quarantined[0][:2] == (1, "field_too_long")


def test_quarantine_rows_line_up_whatever_their_width(catalog):
    data = b"serial_number,model,factory\nA1\nA2,TH-100,=x,=1,two\nA3,TH-100,Plant 3\n"
    table = read_manifest(data)
    result = validate_manifest(table, catalog)
    rows = list(csv.DictReader(io.StringIO(quarantine_csv(table, result.quarantined).decode())))
    assert [(r["manifest_row"], r["reason_code"]) for r in rows] == [
        ("1", "malformed_row"),
        ("2", "malformed_row"),
        ("3", "invalid_attribute_value"),
    ]
    assert all(None not in row and len(row) == 7 for row in rows)
    assert [r["serial_number"] for r in rows] == ["A1", "A2", "A3"]
    assert [r["model"] for r in rows] == ["", "TH-100", "TH-100"]
    assert [r["factory"] for r in rows] == ["", "'=x", "Plant 3"]
    assert [r["extra_fields"] for r in rows] == ["", "'=1,two", ""]
    assert rows[0]["reason"] == "the row has 1 fields, the header has 3"
