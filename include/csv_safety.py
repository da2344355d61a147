"""CSV output spreadsheets cannot execute: cells starting with =, +, -, @, tab or CR get a leading quote."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NEUTRALISER = "'"
_NEUTRALISED = f"^{NEUTRALISER}[" + "".join(f"\\x{ord(c):02x}" for c in FORMULA_TRIGGERS) + "]"


def neutralise(value: object) -> str:
    """The cell text as written: None -> '', formula-like text prefixed with a single quote."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_TRIGGERS):
        return NEUTRALISER + text
    return text


def restore(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Undo `neutralise` on a column read from a CSV the pipeline (or a careful spreadsheet user) wrote."""
    if not pc.any(pc.starts_with(values, NEUTRALISER)).as_py():
        return values
    return pc.if_else(
        pc.match_substring_regex(values, _NEUTRALISED), pc.utf8_slice_codeunits(values, 1), values
    )


def write_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    """UTF-8 CSV (CRLF line ends, minimal quoting) with every cell neutralised."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise(cell) for cell in header])
    for row in rows:
        writer.writerow([neutralise(cell) for cell in row])
    return buffer.getvalue().encode("utf-8")
