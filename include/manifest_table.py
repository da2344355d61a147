"""A manifest read into a table of its original cells (contract v1), written back as retry or quarantine CSV.

Rows are numbered 1, 2, ... over the data rows (header and blank lines not counted); that number is the row's
identity in every later file (quarantine, ledger, inventory, failed.csv). A blank line is one whose fields are
all empty or whitespace.

CSV as Python's strict csv reader reads it: a quote opens a quoted field only at the field's start (elsewhere
it is text), "" inside a quoted field is one quote, and a closing quote must end its field; a quoted field
left open, or text after a closing quote, makes the whole file unreadable.

Line breaks: a line ends with LF or CRLF, and a line break inside a quoted field is data (a PEM CSR keeps its
lines). Any other line break outside quotes is a line break inside an unquoted field: a CR not followed by LF,
and, in a file whose first line ends with CRLF, an LF not preceded by CR. It does not end the row: the row
keeps the break in its cell (`ManifestTable.line_breaks` names the field) and validation refuses it as
`line_break_in_field`, so a stray CR costs one refused row instead of splitting it into two misread ones. A
file whose lines end with a bare CR (classic Mac OS) therefore fails on its header.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from include.csv_safety import write_csv
from include.errors import ManifestError

_CR, _LF, _QUOTE, _COMMA = b"\r"[0], b"\n"[0], b'"'[0], b","[0]
# 16 MiB blocks parse fastest; a single record longer than a block needs a block the size of the file.
_BLOCK = 1 << 24
_ASCII_SPACES = re.compile(rb"[ \t\n\r\x0b\x0c\x1c-\x1f]*")  # what str.isspace() calls whitespace in ASCII
# A manifest with line breaks inside unquoted fields is parsed with each such break written NUL r or NUL n, so
# that it does not end the row, and each NUL of the manifest itself written NUL 0.
_ESCAPES = {_CR: b"\x00r", _LF: b"\x00n"}
_BREAKS = ("\x00r", "\x00n")
# Every NUL of the escaped text starts an escape, so NUL r is always a break; the breaks go first, as NUL 0 r
# turned into NUL r would pass for one.
_UNESCAPES = (("\x00r", "\r"), ("\x00n", "\n"), ("\x000", "\x00"))


@dataclass(frozen=True)
class ManifestTable:
    """A manifest as read: its header, normalised column names and every data row's original cells.

    `cells` holds one string column per header column, named by `columns`; data row n is its row n - 1,
    padded with "" or cut to the header's width. A row with another number of fields keeps all of them in
    `malformed`; `line_breaks` gives, for a row with a line break inside an unquoted field, that field's
    index.
    """

    header: list[str]
    columns: list[str]
    cells: pa.Table
    malformed: dict[int, list[str]]
    line_breaks: dict[int, int]

    @property
    def rows(self) -> int:
        return self.cells.num_rows

    def cells_of(self, rows: list[int]) -> list[list[str]]:
        """The given rows' cells (header width), in the given order."""
        picked = self.cells.take(pa.array([row - 1 for row in rows], pa.int64()))
        return [list(cells) for cells in zip(*(column.to_pylist() for column in picked.columns), strict=True)]


def normalise_column(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def read_manifest(data: bytes) -> ManifestTable:
    """Decode (UTF-8, BOM tolerated) and split into rows; any whole-file problem raises ManifestError."""
    _check_text(data)
    header = read_header(data)
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    body = np.frombuffer(data, np.uint8, offset=start)
    first_line_end = data.find(b"\n", start)
    crlf = first_line_end > start and data[first_line_end - 1] == _CR
    opens, closes = _quoted_fields(data, start, body, crlf)
    breaks = _stray_line_breaks(data, start, body, crlf, opens, closes)
    source = _escape(data, start, breaks) if len(breaks) else pa.py_buffer(data).slice(start)
    records, invalid = _parse(source, len(header))
    return _table(header, records, invalid, escaped=bool(len(breaks)))


def read_header(data: bytes) -> list[str]:
    """Only the header row (the first non-blank one) of a manifest: no full parse."""
    csv.field_size_limit(sys.maxsize)  # long fields are refused per row (field_too_long), not for the file
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline=""), strict=True)
    try:
        for cells in reader:
            if not _blank(cells):
                return cells
    except csv.Error as exc:
        raise ManifestError(f"the manifest is not valid CSV near line {reader.line_num}: {exc}") from None
    raise ManifestError("the manifest has no header row: every line is blank")


def _check_text(data: bytes) -> None:
    """UTF-8 and not empty, or ManifestError."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    # ASCII after any BOM (the common case) is told in milliseconds; decoding would copy the whole file.
    if np.frombuffer(data, np.uint8, offset=start).max(initial=0) < 0x80:
        empty = _ASCII_SPACES.fullmatch(data, start) is not None
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ManifestError(
                f"the manifest is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                f"(line {line}) cannot be decoded; export it as UTF-8"
            ) from None
        empty = not text or text.isspace()
    if empty:
        raise ManifestError("the manifest is empty: a header row is required")


def _blank(cells: list[str]) -> bool:
    return all(not cell.strip() for cell in cells)


def _quoted_fields(data: bytes, start: int, body: np.ndarray, crlf: bool) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (in body) of the opening and closing quote of every quoted field; see the module docstring.

    Quotes pair off in order (an opening one, its closing one; "" inside a field closes and opens again, side
    by side) except where a quote is text inside an unquoted field, which shifts the pairing by one. Where
    each of the two pairings goes wrong is found at once; the walk goes from one text quote to the next.
    """
    quotes = _offsets(body, _QUOTE)
    count = len(quotes)
    if not count:
        return quotes, quotes
    doubled = np.append(quotes[1:] == quotes[:-1] + 1, False)  # the next quote follows at once
    following = body[np.minimum(quotes + 1, len(body) - 1)]
    ends_field = (quotes + 1 == len(body)) | (following == _COMMA) | (following == _CR) | (following == _LF)
    ends_field |= doubled
    opens_field = _field_starts(body, quotes, crlf)
    opens_field[1:] |= doubled[:-1]
    wrong: dict[int, np.ndarray] = {}

    def first_wrong(at: int) -> int:
        """Where the pairing that opens at quotes[at] first fails: an opening quote that opens no field, or a
        closing one that ends none."""
        parity = at % 2
        if parity not in wrong:  # the pairing not taken is wrong nearly everywhere: worked out only if needed
            failing = ~ends_field
            failing[parity::2] = ~opens_field[parity::2]
            wrong[parity] = np.flatnonzero(failing)
        failures = wrong[parity]
        found = np.searchsorted(failures, at)
        return int(failures[found]) if found < len(failures) else count

    segments = []
    at = 0
    while at < count:
        stop = first_wrong(at)
        segments.append((at, stop))
        if stop == count:
            if (count - at) % 2:
                opening = count - 1
                while opening - 2 >= at and doubled[opening - 1]:
                    opening -= 2  # back over the "" inside the field
                _not_csv(data, start, quotes[opening], "the quoted field opened there never closes")
            break
        if (stop - at) % 2:
            _not_csv(data, start, quotes[stop], "',' expected after '\"'")
        at = stop + 1  # a quote inside an unquoted field is text, and so are quotes right after it
        while at < count and doubled[at - 1]:
            at += 1
    none = np.empty(0, dtype=quotes.dtype)
    opens = np.concatenate([none, *(quotes[a:b:2] for a, b in segments)])
    closes = np.concatenate([none, *(quotes[a + 1 : b : 2] for a, b in segments)])
    return opens, closes


def _not_csv(data: bytes, start: int, at: int, problem: str) -> None:
    line = data.count(b"\n", start, start + int(at)) + 1
    raise ManifestError(f"the manifest is not valid CSV near line {line}: {problem}")


def _field_starts(body: np.ndarray, at: np.ndarray, crlf: bool) -> np.ndarray:
    """Whether each offset starts a field, given that the byte before it is outside quotes."""
    before = body[at - 1]  # at 0 this is the last byte, but offset 0 starts a field anyway
    line_end = before == _LF
    if crlf:  # an LF without CR is no line end in a CRLF file (whose first LF is past offset 0)
        line_end &= body[at - 2] == _CR
    return (at == 0) | (before == _COMMA) | line_end


def _stray_line_breaks(
    data: bytes, start: int, body: np.ndarray, crlf: bool, opens: np.ndarray, closes: np.ndarray
) -> np.ndarray:
    """Offsets (in body) of the line breaks outside quotes that end no line; see the module docstring."""
    candidates = [np.empty(0, dtype=np.int64)]
    if data.find(b"\r", start) >= 0:
        at = _offsets(body, _CR)
        candidates.append(at[(at + 1 == len(body)) | (body[np.minimum(at + 1, len(body) - 1)] != _LF)])
    if crlf:
        at = _offsets(body, _LF)
        candidates.append(at[(at == 0) | (body[np.maximum(at - 1, 0)] != _CR)])
    breaks = np.sort(np.concatenate(candidates))
    if len(breaks) and len(opens):
        field = np.searchsorted(opens, breaks) - 1  # the last quoted field opened before each break
        breaks = breaks[(field < 0) | (breaks > closes[np.maximum(field, 0)])]
    return breaks


def _offsets(body: np.ndarray, byte: int) -> np.ndarray:
    """Where `byte` is in body, in order; a slice at a time, as a temporary the size of the file costs more in
    page faults than the comparison itself."""
    step = 1 << 22
    kind = np.int32 if len(body) < 1 << 31 else np.int64  # half the memory for a file with millions of quotes
    found = [np.empty(0, dtype=kind)]
    for at in range(0, len(body), step):
        found.append(np.flatnonzero(body[at : at + step] == byte).astype(kind))
        found[-1] += at
    return np.concatenate(found)


def _escape(data: bytes, start: int, breaks: np.ndarray) -> pa.Buffer:
    """The manifest with every NUL and every stray line break escaped (see _ESCAPES)."""
    text = memoryview(data)
    nul = b"\x00" in data

    def piece(begin: int, end: int) -> bytes | memoryview:
        return data[begin:end].replace(b"\x00", b"\x000") if nul else text[begin:end]

    pieces = []
    for at in (breaks + start).tolist():
        pieces += (piece(start, at), _ESCAPES[data[at]])
        start = at + 1
    pieces.append(piece(start, len(data)))
    return pa.py_buffer(b"".join(pieces))


def _parse(source: pa.Buffer, width: int) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Every record of width fields as a row of string columns; the others as (record index, raw text).

    Single-threaded, because only then does Arrow number the records it sets aside.
    """
    names = [f"f{i}" for i in range(width)]
    for block in sorted({_BLOCK, max(_BLOCK, source.size)}):
        invalid: list[tuple[int, str]] = []

        def set_aside(row: pacsv.InvalidRow, invalid: list[tuple[int, str]] = invalid) -> str:
            invalid.append((row.number - 1, row.text))
            return "skip"

        try:
            records = pacsv.read_csv(
                source,
                read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=block),
                parse_options=pacsv.ParseOptions(
                    newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=set_aside
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()),
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            failure = exc  # a record longer than the block: try once more with one block for the file
            continue
        return records, invalid
    raise ManifestError(f"the manifest is not valid CSV: {failure}")


def _table(
    header: list[str], records: pa.Table, invalid: list[tuple[int, str]], escaped: bool
) -> ManifestTable:
    """Put set-aside records back in place, drop blank ones and those up to the header; number the rest."""
    columns = [normalise_column(h) or f"column_{i + 1}" for i, h in enumerate(header)]
    duplicates = sorted(name for name, n in Counter(columns).items() if n > 1)
    if duplicates:
        raise ManifestError(f"the manifest header names column(s) {duplicates} more than once")
    aside = [next(csv.reader([text])) for _, text in invalid]
    kept = records.num_rows
    # where[record]: the record's row in `everything`, the records parsed followed by those set aside.
    where = np.full(kept + len(aside), -1, dtype=np.int64)
    where[[record for record, _ in invalid]] = np.arange(kept, kept + len(aside))
    where[where < 0] = np.arange(kept)
    blank = np.append(_blank_rows(records), [_blank(cells) for cells in aside]).astype(bool)[where]
    header_record = int(np.argmax(~blank))  # there is one: read_header found it
    if escaped and any(b in cell for cell in _record(records, aside, where[header_record]) for b in _BREAKS):
        raise ManifestError(
            "the manifest's header row has a line break outside quotes; lines end with LF or CRLF"
        )
    data_records = header_record + 1 + np.flatnonzero(~blank[header_record + 1 :])
    rows = where[data_records]
    if aside:
        padding = [[cells[i] if i < len(cells) else "" for cells in aside] for i in range(len(header))]
        everything = pa.concat_tables([records, pa.table(padding, names=records.column_names)])
    else:
        everything = records
    cells = take_rows(everything, rows).rename_columns(columns)
    malformed = {index + 1: aside[rows[index] - kept] for index in np.flatnonzero(rows >= kept).tolist()}
    if not escaped:
        return ManifestTable(header=header, columns=columns, cells=cells, malformed=malformed, line_breaks={})
    return _unescaped(header, columns, cells, malformed)


def take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """The given rows (ascending indexes) of the table as slices of it, without copying: a manifest's rows
    come in long runs, which Arrow's take would copy slowly (about 0.4 s for a million rows)."""
    if not len(rows):
        return table.slice(0, 0)
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = zip(np.append(0, cut).tolist(), np.append(cut, len(rows)).tolist(), strict=True)
    return pa.concat_tables([table.slice(int(rows[first]), end - first) for first, end in runs])


def _blank_rows(records: pa.Table) -> np.ndarray:
    """Whether each record's cells are all empty or whitespace."""
    blank = np.asarray(pc.equal(pc.utf8_trim_whitespace(records.column(0)), ""))
    maybe = np.flatnonzero(blank)  # a first cell with text settles it for nearly every row
    if len(maybe):
        for column in records.take(pa.array(maybe)).columns[1:]:
            blank[maybe] &= np.asarray(pc.equal(pc.utf8_trim_whitespace(column), ""))
    return blank


def _record(records: pa.Table, aside: list[list[str]], at: int) -> list[str]:
    if at >= records.num_rows:
        return aside[at - records.num_rows]
    return [column[at].as_py() for column in records.columns]


def _unescaped(
    header: list[str], columns: list[str], cells: pa.Table, malformed: dict[int, list[str]]
) -> ManifestTable:
    """The table with _escape undone, and each row's first field that held a stray line break."""
    line_breaks: dict[int, int] = {}
    for number, row in malformed.items():  # first: their fields past the header's width count too
        broken = [i for i, cell in enumerate(row) if any(b in cell for b in _BREAKS)]
        if broken:
            line_breaks[number] = broken[0]
    unescaped = []
    for i, column in enumerate(cells.columns):
        column = column.combine_chunks()
        escaped = pc.match_substring(column, "\x00")
        at = np.flatnonzero(np.asarray(escaped))
        if len(at):  # the few cells with an escape in them
            values = column.take(pa.array(at)).to_pylist()
            for index, value in zip(at.tolist(), values, strict=True):
                if any(b in value for b in _BREAKS):
                    line_breaks.setdefault(index + 1, i)
            column = pc.replace_with_mask(column, escaped, pa.array(map(_unescape, values)))
        unescaped.append(column)
    return ManifestTable(
        header=header,
        columns=columns,
        cells=pa.table(unescaped, names=columns),
        malformed={number: [_unescape(cell) for cell in row] for number, row in malformed.items()},
        line_breaks=dict(sorted(line_breaks.items())),
    )


def _unescape(cell: str) -> str:
    for escape, text in _UNESCAPES:
        cell = cell.replace(escape, text)
    return cell


def quarantine_csv(table: ManifestTable, quarantined: list[tuple[int, str, str]]) -> bytes:
    """Refused rows: their cells padded or cut to the header's width, then manifest_row, reason_code, reason
    and extra_fields (the cells past the header's width, as one CSV line); formula-safe."""
    width = len(table.header)
    rows = [row for row, _, _ in quarantined]
    return write_csv(
        [*table.header, "manifest_row", "reason_code", "reason", "extra_fields"],
        (
            [*cells, row, code, sentence, _csv_line(table.malformed.get(row, [])[width:])]
            for cells, (row, code, sentence) in zip(table.cells_of(rows), quarantined, strict=True)
        ),
    )


def retry_csv(table: ManifestTable, rows: Iterable[int]) -> bytes:
    """A retry manifest: the given rows, in manifest order, with the manifest's own header and original cells
    (formula-safe)."""
    wanted = sorted(set(rows))
    return write_csv(
        table.header,
        (table.malformed.get(row, cells) for row, cells in zip(wanted, table.cells_of(wanted), strict=True)),
    )


def _csv_line(cells: list[str]) -> str:
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(cells)
    return line.getvalue()
