"""Manifest contract v1: sort a manifest's rows into accepted and quarantined, column by column (Arrow)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.catalog import Catalog
from include.certificate_authority import load_device_csr
from include.csv_safety import restore
from include.errors import CatalogError, CsrError, ManifestError
from include.manifest_table import (
    ManifestTable,
    quarantine_csv,
    read_header,
    read_manifest,
    retry_csv,
    take_rows,
)

__all__ = [
    "REASONS",
    "ManifestTable",
    "Validation",
    "full_verdict",
    "quarantine_csv",
    "read_header",
    "read_manifest",
    "retry_csv",
    "validate_manifest",
]

REQUIRED_COLUMNS = ("serial_number", "model")
OPTIONAL_COLUMNS = (
    "mac_address",
    "hardware_revision",
    "firmware_version",
    "manufactured_at",
    "factory",
    "line",
    "csr",
)
MAX_FIELD = 1024  # characters in any cell but csr
MAX_CSR = 16384
MAX_THING_NAME = 128
SERIAL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
MAX_SERIAL = 128
MAC_PATTERN = r"(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{12}"
THING_NAME_PATTERN = r"[a-zA-Z0-9:_-]+"
ATTRIBUTE_VALUE_PATTERN = r"[a-zA-Z0-9_.,@/:#=\[\]-]*"
MAX_ATTRIBUTE_VALUE = 800
# The shape of a device CSR; its content (signature, key) is the credentials stage's to check.
CSR_BLOCK = (
    r"-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----[A-Za-z0-9+/=\s]+-----END (?:NEW )?CERTIFICATE REQUEST-----"
)
PEM_BEGIN = "-----BEGIN "
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
ATTRIBUTE_SAFE_COLUMNS = ("serial_number", "model", "mac_address", "manufactured_at")

# Every reason a row can be refused for, with the sentence's general form (the row's sentence is specific).
REASONS = {
    "line_break_in_field": (
        "a field outside quotes holds a line break ending no line (a lone CR; in a CRLF file, a lone LF)"
    ),
    "malformed_row": "the row's number of fields differs from the header's",
    "field_too_long": "a field is longer than the manifest contract allows",
    "missing_field": "a required field is empty",
    "unknown_model": "the model is not in the product catalog",
    "invalid_serial": "the serial number has characters or a length the contract refuses",
    "invalid_mac": "the MAC address is not six hex octets",
    "invalid_date": "manufactured_at is not an ISO 8601 date or time",
    "csr_required": "the product needs a device CSR and the csr field is empty",
    "csr_not_allowed": "the product's keys are made by the pipeline, yet the row carries a CSR",
    "csr_multiple_pem": "the csr field holds more than one PEM block",
    "csr_unparseable": "the csr field is not a PEM certificate signing request",
    "csr_signature_invalid": "the CSR's signature does not verify",
    "csr_key_unsupported": "the CSR's key type is one AWS IoT refuses",
    "thing_name_invalid": "the thing name has characters AWS IoT refuses",
    "thing_name_too_long": "the thing name is longer than 128 characters",
    "too_many_attributes": "the row has more thing attributes than AWS IoT allows",
    "invalid_attribute_value": "an attribute value has characters or a length AWS IoT refuses",
    "duplicate_serial": "the device appears more than once in the manifest",
    "duplicate_serial_case": "the serial number is an earlier row's of the same model but for letter case",
    "duplicate_mac": "the MAC address is an earlier row's, compared as six octets",
    "over_max_devices": "the run's max_devices limit was reached before this row",
}


@dataclass(frozen=True)
class Validation:
    """The outcome of validating a manifest.

    `accepted` has columns row (int64), model, serial_number, thing_name, csr (null when empty) and one string
    column per manifest column any product maps to an attribute (normalised; "" when empty or absent), in
    manifest row order. `quarantined` holds (row, reason_code, sentence), sorted by row.
    """

    rows: int
    accepted: pa.Table
    quarantined: list[tuple[int, str, str]]
    reasons: dict[str, int]
    ignored_columns: list[str]


def validate_manifest(
    table: ManifestTable,
    catalog: Catalog,
    *,
    product: str | None = None,
    max_devices: int | None = None,
) -> Validation:
    """Check every row against contract v1 and the catalog; the first failing check names the row's reason.

    A CSR is checked for its shape only; parsing it and checking its signature and key is credentials work
    (full_verdict gives the verdict with it).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns and not (c == "model" and product)]
    if missing:
        raise ManifestError(
            f"the manifest lacks required column(s) {missing}; its header is {table.header}"
            + (
                ""
                if product or "model" not in missing
                else " (or name every row's product in the run's conf: \"product\")"
            )
        )
    if product is not None and product not in catalog:
        raise ManifestError(f"product {product!r} is not in the catalog ({sorted(catalog.products)})")
    return _Validator(table, catalog, product).run(max_devices)


def full_verdict(
    table: ManifestTable,
    catalog: Catalog,
    *,
    product: str | None = None,
    max_devices: int | None = None,
) -> Validation:
    """The pipeline's final verdict on every row: validate_manifest, then every accepted CSR checked by
    include.certificate_authority.load_device_csr, as the credentials stage does; a CsrError quarantines
    its row with the error's code."""
    result = validate_manifest(table, catalog, product=product, max_devices=max_devices)
    accepted = result.accepted
    with_csr = accepted.filter(pc.is_valid(accepted["csr"]))
    refused: list[tuple[int, str, str]] = []
    for row, pem in zip(with_csr["row"].to_pylist(), with_csr["csr"].to_pylist(), strict=True):
        try:
            load_device_csr(pem)
        except CsrError as exc:
            refused.append((row, exc.code, str(exc)))
    if not refused:
        return result
    quarantined = sorted(result.quarantined + refused)
    return Validation(
        rows=result.rows,
        accepted=accepted.filter(pc.invert(pc.is_in(accepted["row"], pa.array([r for r, _, _ in refused])))),
        quarantined=quarantined,
        reasons=dict(Counter(code for _, code, _ in quarantined)),
        ignored_columns=result.ignored_columns,
    )


class _Validator:
    """One validation: the manifest's cleaned columns and the reason each refused row has so far."""

    def __init__(self, table: ManifestTable, catalog: Catalog, product: str | None) -> None:
        self.table = table
        self.catalog = catalog
        self.products = list(catalog.products.values())
        size = table.rows
        # One chunk per column: Arrow's replace_with_mask and friends take arrays, not chunked ones.
        self.values = {
            name: restore(pc.utf8_trim_whitespace(table.cells[name])).combine_chunks()
            for name in table.columns
        }
        empty = pa.repeat("", size)
        for name in (*OPTIONAL_COLUMNS, *catalog.mapped_columns):
            self.values.setdefault(name, empty)
        if product is not None:
            self.values["model"] = pa.repeat(product, size)
        self.mac_as_written = self.values["mac_address"]
        self.refused = np.zeros(size, dtype=bool)
        self.reasons: dict[int, tuple[str, str]] = {}

    def value(self, column: str, index: int) -> str:
        return self.values[column][index].as_py()

    def refuse(self, failed: np.ndarray, code: str, sentence: Callable[[int], str]) -> None:
        """Give `code` to the rows (indexes, row - 1) that fail a check and have no reason yet."""
        new = np.flatnonzero(failed & ~self.refused)
        self.refused[new] = True
        for index in new.tolist():
            self.reasons[index + 1] = (code, sentence(index))

    def run(self, max_devices: int | None) -> Validation:
        self.check_reading()
        self.check_fields()
        product_index = self.check_model()
        self.check_serial_mac_date()
        self.check_csr(product_index)
        thing_names = self.check_thing_names(product_index)
        self.check_attributes(product_index)
        self.check_repeats(thing_names)
        if max_devices is not None:
            self.refuse(
                self.mask(np.flatnonzero(~self.refused)[max_devices:]),
                "over_max_devices",
                lambda i: f"the run was limited to max_devices={max_devices}; this row was not processed",
            )
        quarantined = sorted((row, code, sentence) for row, (code, sentence) in self.reasons.items())
        mapped = self.catalog.mapped_columns
        return Validation(
            rows=self.table.rows,
            accepted=self.accepted(thing_names),
            quarantined=quarantined,
            reasons=dict(Counter(code for _, code, _ in quarantined)),
            ignored_columns=sorted(
                c for c in self.table.columns if c not in (*REQUIRED_COLUMNS, "csr") and c not in mapped
            ),
        )

    def mask(self, indexes: Iterable[int]) -> np.ndarray:
        mask = np.zeros(self.table.rows, dtype=bool)
        mask[np.fromiter(indexes, dtype=np.int64)] = True
        return mask

    def check_reading(self) -> None:
        table, width = self.table, len(self.table.columns)

        def line_break(index: int) -> str:
            at = table.line_breaks[index + 1]
            if index + 1 in table.malformed:
                cell = table.malformed[index + 1][at]
            else:
                cell = table.cells.column(at)[index].as_py()
            name = table.columns[at] if at < width else f"#{at + 1}"
            return f"field {name} has a line break outside quotes, which would split the row: {_show(cell)}"

        self.refuse(self.mask(r - 1 for r in table.line_breaks), "line_break_in_field", line_break)
        self.refuse(
            self.mask(r - 1 for r in table.malformed),
            "malformed_row",
            lambda i: f"the row has {len(table.malformed[i + 1])} fields, the header has {width}",
        )

    def check_fields(self) -> None:
        too_long = {
            name: _np(pc.greater(pc.utf8_length(self.values[name]), MAX_FIELD))
            for name in self.table.columns
            if name != "csr"
        }
        if too_long:
            self.refuse(
                np.logical_or.reduce(list(too_long.values())),
                "field_too_long",
                lambda i: (
                    f"field {next(c for c, long in too_long.items() if long[i])} is longer than "
                    f"{MAX_FIELD} characters"
                ),
            )
        self.refuse(
            _np(pc.greater(pc.utf8_length(self.values["csr"]), MAX_CSR)),
            "field_too_long",
            lambda i: f"field csr is longer than {MAX_CSR} characters",
        )
        for column in REQUIRED_COLUMNS:
            self.refuse(
                self.empty(column), "missing_field", lambda i, c=column: f"required field {c} is empty"
            )

    def empty(self, column: str) -> np.ndarray:
        return _np(pc.equal(self.values[column], ""))

    def check_model(self) -> np.ndarray:
        """Each row's index in the catalog's products, -1 for an unknown model."""
        known = pa.array([p.model for p in self.products])
        product_index = _np(pc.fill_null(pc.index_in(self.values["model"], value_set=known), -1))
        self.refuse(
            product_index < 0,
            "unknown_model",
            lambda i: f"model {_show(self.value('model', i))} is not in the product catalog",
        )
        return product_index

    def check_serial_mac_date(self) -> None:
        serial = self.values["serial_number"]
        self.refuse(
            ~_matches(serial, SERIAL_PATTERN) | _np(pc.greater(pc.utf8_length(serial), MAX_SERIAL)),
            "invalid_serial",
            lambda i: (
                f"serial number {_show(self.value('serial_number', i))} must be 1-{MAX_SERIAL} letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            ),
        )
        mac = self.values["mac_address"]
        self.refuse(
            ~self.empty("mac_address") & ~_matches(mac, MAC_PATTERN),
            "invalid_mac",
            lambda i: (
                f"mac_address {_show(self.value('mac_address', i))} is not six hex octets like "
                "00:1a:2b:3c:4d:5e"
            ),
        )
        self.mac_as_written = mac  # for duplicate_mac's sentence
        self.values["mac_address"] = _normalised_macs(mac)
        when = self.values["manufactured_at"]
        utc = _utc_times(when)
        self.refuse(
            ~self.empty("manufactured_at") & _np(pc.is_null(utc)),
            "invalid_date",
            lambda i: (
                f"manufactured_at {_show(self.value('manufactured_at', i))} is not an ISO 8601 date or time"
            ),
        )
        self.values["manufactured_at"] = pc.fill_null(utc, "")

    def check_csr(self, product_index: np.ndarray) -> None:
        # One flag per product, then False for index -1 (unknown model): the last entry.
        device = np.append([p.certificate_mode == "device_csr" for p in self.products], False)[product_index]
        own = np.append([p.pipeline_makes_key for p in self.products], False)[product_index]
        csr = self.values["csr"]
        if pc.any(pc.match_substring(csr, "\\n")).as_py():  # a one-line PEM with \n escapes
            csr = self.values["csr"] = pc.replace_substring(csr, "\\n", "\n")
        given = ~self.empty("csr")
        model = self.values["model"]
        self.refuse(
            device & ~given,
            "csr_required",
            lambda i: f"product {model[i].as_py()} needs a device CSR and the csr field is empty",
        )
        self.refuse(
            own & given,
            "csr_not_allowed",
            lambda i: f"product {model[i].as_py()} gets its keys from the pipeline; remove the row's CSR",
        )

        def blocks(index: int) -> str:
            labels = re.findall(r"-----BEGIN ([^\n]*?)-----", csr[index].as_py())
            return (
                f"the csr field holds {len(labels)} PEM blocks ({_show(', '.join(labels))}); a device sends "
                "exactly one CERTIFICATE REQUEST"
            )

        self.refuse(given & (_np(pc.count_substring(csr, PEM_BEGIN)) > 1), "csr_multiple_pem", blocks)
        self.refuse(
            given & ~_matches(csr, CSR_BLOCK, anchored=False),
            "csr_unparseable",
            lambda i: (
                f"the csr field {_show(csr[i].as_py())} holds no PEM block -----BEGIN CERTIFICATE "
                "REQUEST----- ... -----END CERTIFICATE REQUEST-----"
            ),
        )

    def check_thing_names(self, product_index: np.ndarray) -> pa.Array:
        """Each row's thing name from its product's pattern ("" for an unknown model)."""
        names = pa.repeat("", self.table.rows)
        patterns: dict[str, list[int]] = {}
        for k, p in enumerate(self.products):
            patterns.setdefault(p.thing_name, []).append(k)
        for pattern, indexes in patterns.items():
            rows = pa.array(np.isin(product_index, indexes))
            names = pc.if_else(rows, self.formatted(pattern, indexes), names)
        lengths = _np(pc.utf8_length(names))
        self.refuse(
            lengths > MAX_THING_NAME,
            "thing_name_too_long",
            lambda i: (
                f"thing name {names[i].as_py()[:40]}... has {lengths[i]} characters, at most "
                f"{MAX_THING_NAME} allowed"
            ),
        )
        self.refuse(
            ~_matches(names, THING_NAME_PATTERN),
            "thing_name_invalid",
            lambda i: f"thing name {_show(names[i].as_py())} may only hold letters, digits, ':', '_' and '-'",
        )
        return names

    def formatted(self, pattern: str, indexes: list[int]) -> pa.Array:
        """The pattern filled in from each row's normalised values, columns not in the manifest being ""."""
        parts: list[pa.Array | str] = []
        for literal, field, spec, conversion in string.Formatter().parse(pattern):
            if spec or conversion:
                models = [self.products[k].model for k in indexes]
                raise CatalogError(
                    f"thing_name pattern {pattern!r} of {models} must use plain {{column}} fields"
                )
            if literal:
                parts.append(literal)
            if field is not None:
                parts.append(self.values.get(field) or pa.repeat("", self.table.rows))
        return pc.binary_join_element_wise(*parts, "")

    def check_attributes(self, product_index: np.ndarray) -> None:
        """Refuse rows whose thing AWS IoT would refuse for its attributes (count, values)."""
        given = {column: ~self.empty(column) for column in self.catalog.mapped_columns}
        everywhere = np.ones(self.table.rows, dtype=bool)
        # Columns whose values still in the running are attribute values by their own rules already (a valid
        # serial number, a catalog model, a normalised MAC or time) need no second look.
        valid = {
            column: everywhere
            if column in ATTRIBUTE_SAFE_COLUMNS
            else _matches(self.values[column], ATTRIBUTE_VALUE_PATTERN)
            & (_np(pc.utf8_length(self.values[column])) <= MAX_ATTRIBUTE_VALUE)
            for column in self.catalog.mapped_columns
        }
        for k, p in enumerate(self.products):
            rows = product_index == k
            if not p.attributes or not rows.any():
                continue
            count = np.sum([given[a.column] for a in p.attributes], axis=0)
            self.refuse(
                rows & (count > p.max_attributes),
                "too_many_attributes",
                lambda i, c=count, p=p: (
                    f"the row gives {c[i]} attributes; a {p.model} thing may have at most {p.max_attributes}"
                ),
            )
            for a in p.attributes:
                self.refuse(
                    rows & ~valid[a.column],
                    "invalid_attribute_value",
                    lambda i, a=a: (
                        f"{a.column} {_show(self.value(a.column, i))} cannot be the value of attribute "
                        f"{a.name}: AWS IoT allows up to {MAX_ATTRIBUTE_VALUE} letters, digits and "
                        "_.,@/:#=[]-"
                    ),
                )

    def check_repeats(self, thing_names: pa.Array) -> None:
        """One device, one row: the first wins, later ones are refused naming it."""
        serial, model = self.values["serial_number"], self.values["model"]
        first = _repeats(thing_names, ~self.refused)
        self.refuse(
            self.mask(first),
            "duplicate_serial",
            lambda i: (
                f"serial number {serial[i].as_py()} of {model[i].as_py()} already appears in row "
                f"{first[i] + 1}"
            ),
        )
        first_case = _repeats(pc.ascii_lower(serial), ~self.refused, within=model)  # serial numbers are ASCII
        self.refuse(
            self.mask(first_case),
            "duplicate_serial_case",
            lambda i: (
                f"serial number {_show(serial[i].as_py())} of {model[i].as_py()} is row "
                f"{first_case[i] + 1}'s {_show(serial[first_case[i]].as_py())} but for letter case"
            ),
        )
        written = self.mac_as_written
        first_mac = _repeats(self.values["mac_address"], ~self.refused & ~self.empty("mac_address"))
        self.refuse(
            self.mask(first_mac),
            "duplicate_mac",
            lambda i: (
                f"mac_address {_show(written[i].as_py())} is the device of row {first_mac[i] + 1} "
                f"({_show(written[first_mac[i]].as_py())})"
            ),
        )

    def accepted(self, thing_names: pa.Array) -> pa.Table:
        columns = {
            "model": self.values["model"],
            "serial_number": self.values["serial_number"],
            "thing_name": thing_names,
            "csr": _null_where_empty(self.values["csr"]),
        }
        for column in sorted(self.catalog.mapped_columns - {"row", *columns}):  # a same-named one is that one
            columns[column] = self.values[column]
        table = pa.table({"row": pa.array(np.arange(1, self.table.rows + 1), pa.int64()), **columns})
        return take_rows(table, np.flatnonzero(~self.refused))


def _np(values: pa.Array) -> np.ndarray:
    return np.asarray(values)


def _null_where_empty(values: pa.Array) -> pa.Array:
    """The strings with "" made null, sharing their buffers: CSRs are most of a manifest's bytes."""
    given = np.append(np.zeros(values.offset, dtype=bool), _np(pc.not_equal(values, "")))
    validity = pa.py_buffer(np.packbits(given, bitorder="little"))
    _, offsets, data = values.buffers()
    return pa.Array.from_buffers(pa.string(), len(values), [validity, offsets, data], offset=values.offset)


def _matches(values: pa.Array, pattern: str, *, anchored: bool = True) -> np.ndarray:
    return _np(pc.match_substring_regex(values, f"^(?:{pattern})$" if anchored else pattern))


def _normalised_macs(mac: pa.Array) -> pa.Array:
    """MAC addresses lower case with colons: 00-1A-2B-3C-4D-5E and 001a2b3c4d5e give 00:1a:2b:3c:4d:5e."""
    mac = pc.ascii_lower(pc.replace_substring(mac, "-", ":"))
    bare = pc.equal(pc.utf8_length(mac), 12)
    if not pc.any(bare).as_py():
        return mac
    colons = pc.replace_substring_regex(mac.filter(bare), "^(..)(..)(..)(..)(..)(..)$", r"\1:\2:\3:\4:\5:\6")
    return pc.replace_with_mask(mac, bare, colons)


def _utc_times(when: pa.Array) -> pa.Array:
    """Each ISO 8601 date or time as TIME_FORMAT in UTC; null where the text is not one (or is empty)."""
    # A batch's devices share few distinct times (a line stamps many per minute): each text is parsed once.
    encoded = pc.dictionary_encode(when)
    parsed = pd.to_datetime(encoded.dictionary.to_pandas(), format="ISO8601", utc=True, errors="coerce")
    # Whole seconds, as a timestamp of unit s: strftime's %S shows the fraction of finer units.
    seconds = pc.floor_temporal(pa.array(parsed), unit="second").cast(pa.timestamp("s", tz="UTC"))
    return pc.strftime(seconds, format=TIME_FORMAT).take(encoded.indices)


def _repeats(values: pa.Array, candidates: np.ndarray, *, within: pa.Array | None = None) -> dict[int, int]:
    """For each candidate row whose value (in its `within` group, if given) an earlier candidate row has, that
    earlier row (0-based indexes)."""
    # One hash pass over the whole column, no copy, finds the rows whose value is not unique; the few of them
    # that are candidates are sorted out here.
    shared = pd.Series(pd.arrays.ArrowExtensionArray(values)).duplicated(keep=False).to_numpy()
    involved = np.flatnonzero(shared & candidates)
    picked = pa.array(involved)
    keys: list[object] = values.take(picked).to_pylist()
    if within is not None:
        keys = list(zip(within.take(picked).to_pylist(), keys, strict=True))
    first: dict[object, int] = {}
    earlier: dict[int, int] = {}
    for index, key in zip(involved.tolist(), keys, strict=True):
        if first.setdefault(key, index) != index:
            earlier[index] = first[key]
    return earlier


def _show(value: str, limit: int = 60) -> str:
    """A value quoted for a sentence, shortened so a hostile field cannot flood a report."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
