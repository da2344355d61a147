"""CSV output spreadsheets cannot execute: cells starting with =, +, -, @, tab or CR get a leading quote."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NEUTRALISER = "'"


def neutralise(value: object) -> str:
    """The cell text as written: None -> '', formula-like text prefixed with a single quote."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_TRIGGERS):
        return NEUTRALISER + text
    return text


def restore(value: str) -> str:
    """Undo `neutralise` when reading a CSV the pipeline (or a careful spreadsheet user) wrote."""
    if len(value) > 1 and value[0] == NEUTRALISER and value[1] in "=+-@\t\r":
        return value[1:]
    return value


def write_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    """UTF-8 CSV (CRLF line ends, minimal quoting) with every cell neutralised."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise(cell) for cell in header])
    for row in rows:
        writer.writerow([neutralise(cell) for cell in row])
    return buffer.getvalue().encode("utf-8")
