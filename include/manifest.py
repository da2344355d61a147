"""Manifest contract v1: read a factory CSV manifest and sort its rows into accepted and quarantined.

Rows are numbered 1, 2, ... over the data rows (header and blank lines not counted); that number is the
row's identity in every later file (quarantine, ledger, inventory, failed.csv).
"""

from __future__ import annotations

import csv
import gc
import io
import itertools
import operator
import re
import string
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
# The checks as one compiled fullmatch each; a length bound in the pattern is the length check.
_SERIAL = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_SERIAL - 1}}}")
_MAC_OR_EMPTY = re.compile(f"(?:{MAC_PATTERN})?")
_ATTRIBUTE_VALUE = re.compile(rf"{ATTRIBUTE_VALUE_PATTERN[:-1]}{{0,{MAX_ATTRIBUTE_VALUE}}}")
_COLON_PAIRS = re.compile(r"(..)(?!$)")

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
    """Check every row against contract v1 and the catalog; the first failing check names the row's reason.

    The checks run column by column over plain lists (one compiled regex or string method per column, each
    distinct value tested once); a row keeps the reason of the first check it fails.
    """
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
    good = [row for row in table.rows if len(row[1]) == width]
    if len(good) != len(table.rows):
        for number, cells in table.rows:
            if len(cells) != width:
                reason[number] = ("malformed_row", f"the row has {len(cells)} fields, the header has {width}")
    numbers = [number for number, _ in good]
    count = len(numbers)
    # Column name -> cleaned values, in the header's order (then the optional columns the header lacks).
    raw = list(zip(*(cells for _, cells in good), strict=True)) if good else [()] * width
    frame: dict[str, list[str]] = {c: _clean_column(v) for c, v in zip(table.columns, raw, strict=True)}
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
            frame[column] = [""] * count
    if product is not None:
        frame["model"] = [product] * count

    def refuse(positions: Iterable[int], code: str, sentence) -> None:
        """Give `code` to rows (by position) that have no reason yet; sentence(position) or a fixed string."""
        for i in positions:
            number = numbers[i]
            if number not in reason:
                reason[number] = (code, sentence(i) if callable(sentence) else sentence)

    too_long: dict[int, str] = {}  # position -> first column (in frame order) over the limit
    for column, values in frame.items():
        if column != "csr":
            for i in _longer(values, MAX_FIELD):
                too_long.setdefault(i, column)
    refuse(
        sorted(too_long),
        "field_too_long",
        lambda i: f"field {too_long[i]} is longer than {MAX_FIELD} characters",
    )
    refuse(_longer(frame["csr"], MAX_CSR), "field_too_long", f"field csr is longer than {MAX_CSR} characters")
    for column in REQUIRED_COLUMNS:
        values = frame[column]
        if "" in values:
            refuse(
                [i for i, v in enumerate(values) if not v],
                "missing_field",
                f"required field {column} is empty",
            )
    models = frame["model"]
    groups = _groups(models, catalog)  # model -> positions of its rows, for models in the catalog
    if sum(map(len, groups.values())) != count:
        refuse(
            [i for i, m in enumerate(models) if m not in catalog.products],
            "unknown_model",
            lambda i: f"model {models[i]!r} is not in the product catalog",
        )
    serials = frame["serial_number"]
    refuse(
        _failing(serials, _SERIAL.fullmatch),
        "invalid_serial",
        lambda i: (
            f"serial number {_show(serials[i])} must be 1-{MAX_SERIAL} letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        ),
    )
    mac = frame["mac_address"]
    refuse(
        _failing(mac, _MAC_OR_EMPTY.fullmatch),
        "invalid_mac",
        lambda i: f"mac_address {_show(mac[i])} is not six hex octets like 00:1a:2b:3c:4d:5e",
    )
    frame["mac_address"] = _normalised_macs(mac)
    when = frame["manufactured_at"]
    formatted = _iso_dates(when)
    refuse(
        _positions(when, {v for v, iso in formatted.items() if v and not iso}),
        "invalid_date",
        lambda i: f"manufactured_at {_show(when[i])} is not an ISO 8601 date or time",
    )
    frame["manufactured_at"] = list(map(formatted.__getitem__, when))
    csr = frame["csr"]
    if any("\\n" in pem for pem in set(csr)):
        csr = [pem.replace("\\n", "\n") for pem in csr]
    frame["csr"] = csr
    device_csr = sorted(
        i for m, rows in groups.items() if catalog.products[m].certificate_mode == "device_csr" for i in rows
    )
    own_key = sorted(
        i for m, rows in groups.items() if catalog.products[m].certificate_mode == "own_ca_key" for i in rows
    )
    refuse(
        [i for i in device_csr if not csr[i]],
        "csr_required",
        lambda i: f"product {models[i]} needs a device CSR and the csr field is empty",
    )
    refuse(
        [i for i in own_key if csr[i]],
        "csr_not_allowed",
        lambda i: f"product {models[i]} gets its keys from the pipeline; remove the row's CSR",
    )
    thing_names = _thing_names(frame, catalog, groups, count)
    refuse(
        _longer(thing_names, MAX_THING_NAME),
        "thing_name_too_long",
        lambda i: (
            f"thing name {thing_names[i][:40]}... has {len(thing_names[i])} characters, at most 128 allowed"
        ),
    )
    refuse(
        _failing(thing_names, THING_NAME.fullmatch),
        "thing_name_invalid",
        lambda i: f"thing name {_show(thing_names[i])} may only hold letters, digits, ':', '_' and '-'",
    )
    attributes = _attributes(frame, catalog, groups, refuse)
    ignored = sorted(
        c
        for c in table.columns
        if c not in REQUIRED_COLUMNS and c != "csr" and c not in catalog.mapped_columns
    )
    # Duplicates among rows still in the running: the first occurrence wins.
    live = [i for i, number in enumerate(numbers) if number not in reason]
    live_names = list(map(thing_names.__getitem__, live))
    if len(set(live_names)) != len(live_names):
        first_row: dict[str, int] = {}
        for i, name in zip(live, live_names, strict=True):
            number = numbers[i]
            earlier = first_row.setdefault(name, number)
            if earlier != number:
                reason[number] = (
                    "duplicate_serial",
                    f"serial number {serials[i]} of {models[i]} already appears in row {earlier}",
                )
    for i in device_csr:
        number = numbers[i]
        if number not in reason:
            try:
                load_device_csr(csr[i])
            except CsrError as exc:
                reason[number] = (exc.code, str(exc))
    accepted = [
        {
            "row": int(number),
            "model": models[i],
            "serial_number": serials[i],
            "thing_name": thing_names[i],
            "attributes": attributes[i],
            "csr": csr[i] or None,
        }
        for i, number in enumerate(numbers)
        if number not in reason
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


def _clean_column(values: Iterable[str]) -> list[str]:
    """_clean over a column: strip every cell; the formula-quote check only if some cell holds a quote."""
    stripped = list(map(str.strip, values))
    if "'" in "".join(stripped):
        return list(map(_clean, stripped))
    return stripped


def _clean(cell: str) -> str:
    """Trim, and undo the quote a spreadsheet-safe writer puts before =, +, -, @ (our own CSVs included)."""
    cell = cell.strip()
    return cell[1:] if cell[:1] == "'" and cell[1:2] in FORMULA_TRIGGERS else cell


def _longer(values: list[str], limit: int) -> list[int]:
    """Positions of values longer than limit."""
    if not values or max(map(len, values)) <= limit:
        return []
    return [i for i, v in enumerate(values) if len(v) > limit]


def _failing(values: list[str], check) -> list[int]:
    """Positions (ascending) of values for which check(value) is falsy.

    A column that repeats its values (model, revision, factory, ...) has each distinct value checked once."""
    sample = values[:1024]
    distinct = set(values) if 2 * len(set(sample)) < len(sample) else values
    return _positions(values, set(itertools.filterfalse(check, distinct)))


def _positions(values: list, wanted: set) -> list[int]:
    """Positions (ascending) of the values in wanted; few wanted values: found by list.index."""
    if not wanted:
        return []
    if len(wanted) > 8:
        return [i for i, v in enumerate(values) if v in wanted]
    found = []
    for value in wanted:
        i = -1
        try:
            while True:
                i = values.index(value, i + 1)
                found.append(i)
        except ValueError:
            pass
    return sorted(found)


def _groups(models: list[str], catalog: Catalog) -> dict[str, list[int]]:
    """Positions of the rows of each catalog product present in the manifest (catalog order)."""
    present = set(models)
    return {
        model: [i for i, m in enumerate(models) if m == model]
        for model in catalog.products
        if model in present
    }


def _normalised_macs(mac: list[str]) -> list[str]:
    """'-' becomes ':' and hex is lower-case; a bare 12-character value gets a ':' after every pair."""
    joined = "\n".join(mac)
    if joined.count("\n") != len(mac) - 1:  # a value holds a line break: value by value
        return [_normalised_mac(value) for value in mac]
    # Line breaks separate the values and neither replace nor lower touches them: one pass for all.
    normal = joined.replace("-", ":").lower().split("\n") if mac else []
    lengths = list(map(len, mac))
    for i in _positions(lengths, {12}):
        normal[i] = _normalised_mac(mac[i])
    return normal


def _normalised_mac(value: str) -> str:
    return _COLON_PAIRS.sub(r"\1:", value.lower()) if len(value) == 12 else value.replace("-", ":").lower()


def _iso_dates(when: list[str]) -> dict[str, str]:
    """Each distinct value -> its UTC time as YYYY-MM-DDTHH:MM:SSZ ('' for '' and for non-ISO 8601 text)."""
    distinct = [v for v in set(when) if v]
    formatted = {"": ""}
    if distinct:
        parsed = pd.to_datetime(
            pd.Series(distinct, dtype=object), format="ISO8601", utc=True, errors="coerce"
        )
        formatted.update(
            zip(distinct, parsed.dt.strftime("%Y-%m-%dT%H:%M:%SZ").fillna("").tolist(), strict=True)
        )
    return formatted


def _thing_names(
    frame: dict[str, list[str]], catalog: Catalog, groups: dict[str, list[int]], count: int
) -> list[str]:
    """Each row's thing name from its product's pattern ('' for unknown models)."""
    names = [""] * count
    for model, rows in groups.items():
        product = catalog.products[model]
        fields = product.name_fields
        columns = [_take(frame[f], rows) if f in frame else [""] * len(rows) for f in fields]
        pattern = product.thing_name
        made = _concatenated(pattern, model, dict(zip(fields, columns, strict=True)), len(rows))
        if made is None:
            made = [
                pattern.format_map(dict(zip(fields, cells, strict=True)))
                for cells in zip(*columns, strict=True)
            ]
        for i, name in zip(rows, made, strict=True):
            names[i] = name
    return names


def _concatenated(pattern: str, model: str, columns: dict[str, list[str]], count: int) -> list[str] | None:
    """pattern.format_map per row as plain concatenation ({model} is the group's model), or None if a field
    has a conversion or format spec (then format_map does it)."""
    pieces: list[str | list[str]] = []
    for literal, name, spec, conversion in string.Formatter().parse(pattern):
        pieces.append(literal)
        if name is not None:
            if spec or conversion is not None:
                return None
            pieces.append(model if name == "model" else columns[name])
    made = [""] * count
    text = ""
    for piece in pieces:
        if isinstance(piece, str):
            text += piece
            continue
        if text:
            made = list(map(operator.add, made, itertools.repeat(text, count)))
            text = ""
        made = list(map(operator.add, made, piece))
    if text:
        made = list(map(operator.add, made, itertools.repeat(text, count)))
    return made


def _attributes(
    frame: dict[str, list[str]], catalog: Catalog, groups: dict[str, list[int]], refuse
) -> dict[int, dict[str, str]]:
    """Thing attributes per row (by position) from the product's column mapping; refuses what AWS refuses."""
    result: dict[int, dict[str, str]] = {}
    for model, rows in groups.items():
        product = catalog.products[model]
        values = {
            a.name: _take(frame[a.column], rows) if a.column in frame else [""] * len(rows)
            for a in product.attributes
        }
        if len(values) > product.max_attributes:
            given = [len(cells) - cells.count("") for cells in zip(*values.values(), strict=True)]
            refuse(
                [i for i, n in zip(rows, given, strict=True) if n > product.max_attributes],
                "too_many_attributes",
                lambda i, p=product, g=dict(zip(rows, given, strict=True)): (
                    f"the row gives {g[i]} attributes; a {p.model} thing may have at most {p.max_attributes}"
                ),
            )
        for attribute in product.attributes:
            refuse(
                _take(rows, _failing(values[attribute.name], _ATTRIBUTE_VALUE.fullmatch)),
                "invalid_attribute_value",
                lambda i, a=attribute: (
                    f"{a.column} {_show(frame[a.column][i])} cannot be the value of attribute "
                    f"{a.name}: AWS IoT allows up to {MAX_ATTRIBUTE_VALUE} letters, digits and _.,@/:#=[]-"
                ),
            )
        names = list(values)
        cells = zip(*values.values(), strict=True)
        result.update(zip(rows, map(dict, map(zip, itertools.repeat(names), cells)), strict=True))
    return result


def _take(values: list, positions: list[int]) -> list:
    return list(map(values.__getitem__, positions))


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
