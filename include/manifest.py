"""Manifest contract v1: read a factory CSV manifest and sort its rows into accepted and quarantined.

Rows are numbered 1, 2, ... over the data rows (header and blank lines not counted); that number is the
row's identity in every later file (quarantine, ledger, inventory, failed.csv).
"""

from __future__ import annotations

import csv
import gc
import io
import itertools
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd

from include.catalog import Catalog
from include.certificate_authority import load_device_csr
from include.csv_safety import FORMULA_TRIGGERS, write_csv
from include.errors import CsrError, ManifestError

REQUIRED_COLUMNS = ("serial_number", "model")
MAX_FIELD = 1024  # characters in any cell but csr
MAX_CSR = 16384
MAX_THING_NAME = 128
SERIAL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
MAX_SERIAL = 128
MAC_PATTERN = r"(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{12}"
THING_NAME = re.compile(r"[a-zA-Z0-9:_-]+")
ATTRIBUTE_VALUE_PATTERN = r"[a-zA-Z0-9_.,@/:#=\[\]-]*"
MAX_ATTRIBUTE_VALUE = 800

# Every reason a row can be refused for, with the sentence's general form (the row's sentence is specific).
REASONS = {
    "malformed_row": "the row's number of fields differs from the header's",
    "field_too_long": "a field is longer than the manifest contract allows",
    "missing_field": "a required field is empty",
    "unknown_model": "the model is not in the product catalog",
    "invalid_serial": "the serial number has characters or a length the contract refuses",
    "invalid_mac": "the MAC address is not six hex octets",
    "invalid_date": "manufactured_at is not an ISO 8601 date or time",
    "csr_required": "the product needs a device CSR and the csr field is empty",
    "csr_not_allowed": "the product's keys are made by the pipeline, yet the row carries a CSR",
    "csr_unparseable": "the csr field is not a PEM certificate signing request",
    "csr_signature_invalid": "the CSR's signature does not verify",
    "csr_key_unsupported": "the CSR's key type is one AWS IoT refuses",
    "thing_name_invalid": "the thing name has characters AWS IoT refuses",
    "thing_name_too_long": "the thing name is longer than 128 characters",
    "too_many_attributes": "the row has more thing attributes than AWS IoT allows",
    "invalid_attribute_value": "an attribute value has characters or a length AWS IoT refuses",
    "duplicate_serial": "the device appears more than once in the manifest",
    "over_max_devices": "the run's max_devices limit was reached before this row",
}


@dataclass
class ManifestTable:
    """The manifest as read: original header, normalised column names, data rows with their numbers."""

    header: list[str]
    columns: list[str]
    rows: list[tuple[int, list[str]]]

    def original(self, numbers: Iterable[int]) -> list[list[str]]:
        wanted = set(numbers)
        return [cells for number, cells in self.rows if number in wanted]


@dataclass
class Validation:
    """The outcome of validating a manifest."""

    rows: int
    accepted: list[dict]
    quarantined: list[tuple[int, str, str]]  # (row, reason_code, sentence)
    ignored_columns: list[str]
    reasons: dict[str, int] = field(default_factory=dict)


def normalise_column(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def read_manifest(data: bytes) -> ManifestTable:
    """Decode (UTF-8, BOM tolerated) and split into rows; any whole-file problem raises ManifestError."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"the manifest is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}) "
            "cannot be decoded; export it as UTF-8"
        ) from None
    if not text.strip():
        raise ManifestError("the manifest is empty: a header row is required")
    csv.field_size_limit(sys.maxsize)  # long fields are refused per row (field_too_long), not for the file
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        with _gc_paused():
            # A first cell with text settles that the row is not blank (nearly every row): no per-cell scan.
            lines = [cells for cells in reader if cells and (cells[0].strip() or not _blank(cells))]
            rows = list(zip(itertools.count(1), itertools.islice(lines, 1, None)))
    except csv.Error as exc:
        raise ManifestError(f"the manifest is not valid CSV near line {reader.line_num}: {exc}") from None
    if not lines:
        raise ManifestError("the manifest has no header row: every line is blank")
    header = lines[0]
    columns = [normalise_column(h) or f"column_{i + 1}" for i, h in enumerate(header)]
    duplicates = sorted(name for name, n in Counter(columns).items() if n > 1)
    if duplicates:
        raise ManifestError(f"the manifest header names column(s) {duplicates} more than once")
    return ManifestTable(header=header, columns=columns, rows=rows)


def read_header(data: bytes) -> list[str]:
    """Only the header row (the first non-blank one) of a manifest read_manifest accepted: no full parse."""
    csv.field_size_limit(sys.maxsize)
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    for cells in csv.reader(text, strict=True):
        if not _blank(cells):
            return cells
    raise ManifestError("the manifest has no header row: every line is blank")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a manifest's many lists and tuples are built (none of them cyclic):
    the collector would otherwise walk every row list again and again (about 1 µs a row on 100,000 rows)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _blank(cells: list[str]) -> bool:
    return not cells or all(not c.strip() for c in cells)


def validate_manifest(
    table: ManifestTable,
    catalog: Catalog,
    *,
    product: str | None = None,
    max_devices: int | None = None,
) -> Validation:
    """Check every row against contract v1 and the catalog; the first failing check names the row's reason."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns and not (c == "model" and product)]
    if missing:
        raise ManifestError(
            f"the manifest lacks required column(s) {missing}; its header is {table.header}"
            + ("" if product or "model" not in missing else " (or choose a product for the run)")
        )
    if product is not None and product not in catalog:
        raise ManifestError(f"product {product!r} is not in the catalog ({sorted(catalog.products)})")
    with _gc_paused():
        return _validate(table, catalog, product, max_devices)


def _validate(
    table: ManifestTable, catalog: Catalog, product: str | None, max_devices: int | None
) -> Validation:
    width = len(table.columns)
    reason: dict[int, tuple[str, str]] = {}
    good = []
    for number, cells in table.rows:
        if len(cells) != width:
            reason[number] = ("malformed_row", f"the row has {len(cells)} fields, the header has {width}")
        else:
            good.append((number, cells))
    frame = pd.DataFrame(
        [[_clean(cell) for cell in cells] for _, cells in good],
        columns=table.columns,
        dtype=object,
        index=[n for n, _ in good],
    )
    for column in (
        "mac_address",
        "hardware_revision",
        "firmware_version",
        "manufactured_at",
        "factory",
        "line",
        "csr",
    ):
        if column not in frame:
            frame[column] = ""
    if product is not None:
        frame["model"] = product

    def refuse(mask: pd.Series, code: str, sentence) -> None:
        """Give `code` to rows in mask that have no reason yet; sentence(row_number) or a fixed string."""
        for number in frame.index[mask.to_numpy()]:
            if number not in reason:
                reason[number] = (code, sentence(number) if callable(sentence) else sentence)

    def pending() -> pd.Series:
        return ~frame.index.isin(list(reason))

    lengths_other = [frame[c].str.len() > MAX_FIELD for c in frame.columns if c != "csr"]
    if lengths_other:
        too_long = pd.concat(lengths_other, axis=1).any(axis=1)
        refuse(
            too_long,
            "field_too_long",
            lambda n: (
                "field "
                + next(c for c in frame.columns if c != "csr" and len(frame.at[n, c]) > MAX_FIELD)
                + f" is longer than {MAX_FIELD} characters"
            ),
        )
    refuse(
        frame["csr"].str.len() > MAX_CSR, "field_too_long", f"field csr is longer than {MAX_CSR} characters"
    )
    for column in REQUIRED_COLUMNS:
        refuse(frame[column] == "", "missing_field", f"required field {column} is empty")
    known = frame["model"].isin(list(catalog.products))
    refuse(~known, "unknown_model", lambda n: f"model {frame.at[n, 'model']!r} is not in the product catalog")
    serial = frame["serial_number"]
    refuse(
        ~serial.str.fullmatch(SERIAL_PATTERN) | (serial.str.len() > MAX_SERIAL),
        "invalid_serial",
        lambda n: (
            f"serial number {_show(frame.at[n, 'serial_number'])} must be 1-{MAX_SERIAL} letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        ),
    )
    mac = frame["mac_address"]
    refuse(
        (mac != "") & ~mac.str.fullmatch(MAC_PATTERN),
        "invalid_mac",
        lambda n: (
            f"mac_address {_show(frame.at[n, 'mac_address'])} is not six hex octets like 00:1a:2b:3c:4d:5e"
        ),
    )
    bare = mac.str.len() == 12
    frame["mac_address"] = mac.str.replace("-", ":").str.lower()
    if bare.any():
        frame.loc[bare, "mac_address"] = _colons(mac[bare])
    when = frame["manufactured_at"]
    parsed = pd.to_datetime(when.where(when != ""), format="ISO8601", utc=True, errors="coerce")
    refuse(
        (when != "") & parsed.isna(),
        "invalid_date",
        lambda n: f"manufactured_at {_show(frame.at[n, 'manufactured_at'])} is not an ISO 8601 date or time",
    )
    frame["manufactured_at"] = parsed.dt.strftime("%Y-%m-%dT%H:%M:%SZ").fillna("")
    modes = frame["model"].map(lambda m: catalog.products[m].certificate_mode if m in catalog else "")
    csr = frame["csr"]
    escaped = csr.str.contains("\\n", regex=False)
    if escaped.any():
        csr = csr.where(~escaped, csr[escaped].str.replace("\\n", "\n", regex=False))
    frame["csr"] = csr
    refuse(
        (modes == "device_csr") & (csr == ""),
        "csr_required",
        lambda n: f"product {frame.at[n, 'model']} needs a device CSR and the csr field is empty",
    )
    refuse(
        (modes == "own_ca_key") & (csr != ""),
        "csr_not_allowed",
        lambda n: f"product {frame.at[n, 'model']} gets its keys from the pipeline; remove the row's CSR",
    )
    thing_names = _thing_names(frame, catalog)
    refuse(
        (thing_names.str.len() > MAX_THING_NAME),
        "thing_name_too_long",
        lambda n: (
            f"thing name {thing_names[n][:40]}... has {len(thing_names[n])} characters, at most 128 allowed"
        ),
    )
    refuse(
        ~thing_names.str.fullmatch(THING_NAME.pattern),
        "thing_name_invalid",
        lambda n: f"thing name {_show(thing_names[n])} may only hold letters, digits, ':', '_' and '-'",
    )
    attributes = _attributes(frame, catalog, refuse)
    ignored = sorted(
        c
        for c in table.columns
        if c not in REQUIRED_COLUMNS and c != "csr" and c not in catalog.mapped_columns
    )
    # Duplicates among rows still in the running: the first occurrence wins.
    live = pending()
    first_row: dict[str, int] = {}
    for number, name in thing_names[live].items():
        earlier = first_row.setdefault(name, number)
        if earlier != number:
            reason[number] = (
                "duplicate_serial",
                f"serial number {frame.at[number, 'serial_number']} of {frame.at[number, 'model']} "
                f"already appears in row {earlier}",
            )
    needs_csr = pending() & (modes == "device_csr").to_numpy()
    for number, pem in zip(frame.index[needs_csr], frame["csr"][needs_csr], strict=True):
        try:
            load_device_csr(pem)
        except CsrError as exc:
            reason[number] = (exc.code, str(exc))
    keep = pending()
    accepted = [
        {
            "row": int(number),
            "model": model,
            "serial_number": serial_number,
            "thing_name": thing_name,
            "attributes": attributes[number],
            "csr": pem or None,
        }
        for number, model, serial_number, thing_name, pem in zip(
            frame.index[keep].tolist(),
            frame["model"][keep].tolist(),
            frame["serial_number"][keep].tolist(),
            thing_names[keep].tolist(),
            frame["csr"][keep].tolist(),
            strict=True,
        )
    ]
    if max_devices is not None and len(accepted) > max_devices:
        for record in accepted[max_devices:]:
            reason[record["row"]] = (
                "over_max_devices",
                f"the run was limited to max_devices={max_devices}; this row was not processed",
            )
        accepted = accepted[:max_devices]
    quarantined = sorted((n, code, sentence) for n, (code, sentence) in reason.items())
    return Validation(
        rows=len(table.rows),
        accepted=accepted,
        quarantined=quarantined,
        ignored_columns=ignored,
        reasons=dict(Counter(code for _, code, _ in quarantined)),
    )


def _attributes(frame: pd.DataFrame, catalog: Catalog, refuse) -> dict[int, dict[str, str]]:
    """Thing attributes per row from the product's column mapping; refuses rows AWS IoT would refuse."""
    result: dict[int, dict[str, str]] = {}
    for model, product in catalog.products.items():
        rows = frame.index[(frame["model"] == model).to_numpy()]
        if len(rows) == 0:
            continue
        part = frame.loc[rows]
        values = pd.DataFrame({a.name: part.get(a.column, "") for a in product.attributes}, index=rows)
        count = (values != "").sum(axis=1) if len(product.attributes) else pd.Series(0, index=rows)
        over = pd.Series(False, index=frame.index)
        over[rows] = (count > product.max_attributes).to_numpy()
        refuse(
            over,
            "too_many_attributes",
            lambda n, c=count, p=product: (
                f"the row gives {c[n]} attributes; a {p.model} thing may have at most {p.max_attributes}"
            ),
        )
        for attribute in product.attributes:
            column = values[attribute.name]
            bad = pd.Series(False, index=frame.index)
            bad[rows] = (~column.str.fullmatch(ATTRIBUTE_VALUE_PATTERN) | (column.str.len() > 800)).to_numpy()
            refuse(
                bad,
                "invalid_attribute_value",
                lambda n, a=attribute: (
                    f"{a.column} {_show(frame.at[n, a.column])} cannot be the value of attribute "
                    f"{a.name}: AWS IoT allows up to {MAX_ATTRIBUTE_VALUE} letters, digits and _.,@/:#=[]-"
                ),
            )
        names = list(values.columns)
        if not names:  # a product that maps no column: its things carry no attributes
            result.update((number, {}) for number in rows.tolist())
            continue
        columns = [values[name].tolist() for name in names]
        result.update(
            zip(
                rows.tolist(),
                (dict(zip(names, cells, strict=True)) for cells in zip(*columns, strict=True)),
                strict=True,
            )
        )
    return result


def _clean(cell: str) -> str:
    """Trim, and undo the quote a spreadsheet-safe writer puts before =, +, -, @ (our own CSVs included)."""
    cell = cell.strip()
    return cell[1:] if cell[:1] == "'" and cell[1:2] in FORMULA_TRIGGERS else cell


def _thing_names(frame: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Each row's thing name from its product's pattern ('' for unknown models)."""
    names = pd.Series("", index=frame.index, dtype=object)
    for model, product in catalog.products.items():
        rows = (frame["model"] == model).to_numpy()
        if not rows.any():
            continue
        fields = product.name_fields
        columns = [frame[f][rows].tolist() if f in frame else [""] * int(rows.sum()) for f in fields]
        pattern = product.thing_name
        names[rows] = [
            pattern.format_map(dict(zip(fields, cells, strict=True))) for cells in zip(*columns, strict=True)
        ]
    return names


def _colons(mac: pd.Series) -> pd.Series:
    lower = mac.str.lower()
    return lower.str.replace(r"(..)(?!$)", r"\1:", regex=True)


def _show(value: str, limit: int = 60) -> str:
    """A value quoted for a sentence, shortened so a hostile field cannot flood a report."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def quarantine_csv(table: ManifestTable, quarantined: list[tuple[int, str, str]]) -> bytes:
    """Refused rows with their original values, then manifest_row, reason_code, reason (formula-safe)."""
    by_row = dict(table.rows)
    return write_csv(
        [*table.header, "manifest_row", "reason_code", "reason"],
        ([*by_row[n], n, code, sentence] for n, code, sentence in quarantined),
    )


def retry_csv(table: ManifestTable, rows: Iterable[int]) -> bytes:
    """A retry manifest: the given rows with the manifest's own header and original values (formula-safe)."""
    return write_csv(table.header, table.original(rows))
