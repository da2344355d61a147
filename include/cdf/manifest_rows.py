"""CDF `parameters` as manifest rows (README "The manifest contract") of a catalog product, and the CSV.

A key may be a manifest column (`serial_number`, `mac_address`, ...) or the product's template parameter
(`SerialNumber`, `MacAddress`, ...), in any letter case; `ThingName`, when given, must be the name the
product's pattern gives the device. So a CDF client that sends the template's parameters and one that sends
the manifest's columns both work, and the pipeline's own validation decides each row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from include.catalog import Catalog, Product
from include.cdf.errors import BadRequest
from include.manifest import OPTIONAL_COLUMNS, read_manifest, validate_manifest

ROW_LIMIT_KEYS = 100  # more keys than any product has parameters is a mistake, not a device


def product_keys(product: Product) -> dict[str, str]:
    """lower-case key -> manifest column, for every key a CDF client may use for this product."""
    keys = {column: column for column in (*OPTIONAL_COLUMNS, "serial_number", "model")}
    for attribute in product.attributes:
        keys[attribute.column] = attribute.column
        keys[attribute.parameter.lower()] = attribute.column
    keys["csr"] = "csr"
    keys["thingname"] = "ThingName"  # checked against the pattern, not a manifest column
    return keys


def entry_row(product: Product, entry: Mapping[str, Any], where: str) -> dict[str, str]:
    """One parameters object as a manifest row of this product (`ThingName` kept aside to be checked)."""
    if not isinstance(entry, Mapping):
        raise BadRequest(f"{where}: must be an object of parameter names to string values")
    if len(entry) > ROW_LIMIT_KEYS:
        raise BadRequest(
            f"{where}: has {len(entry)} parameters; product {product.model} takes at most {ROW_LIMIT_KEYS}"
        )
    keys = product_keys(product)
    row: dict[str, str] = {}
    for key, value in entry.items():
        if not isinstance(value, str):
            raise BadRequest(f"{where}.{key}: must be a string")
        column = keys.get(str(key).strip().lower())
        if column is None:
            takes = sorted({a.parameter for a in product.attributes} | {"ThingName", "csr"})
            raise BadRequest(
                f"{where}.{key}: product {product.model}'s template has no such parameter (it takes "
                f"{', '.join(takes)}, or the manifest columns)"
            )
        if column in row and row[column] != value:
            raise BadRequest(f"{where}.{key}: gives {column} a second, different value")
        row[column] = value
    if row.get("model", product.model) != product.model:
        raise BadRequest(f"{where}.model {row['model']!r}: the template is product {product.model}")
    row["model"] = product.model
    return row


def manifest_csv(rows: Sequence[Mapping[str, str]]) -> bytes:
    """Rows as a manifest v1 CSV: serial_number, model, then every other column any row has."""
    extra = sorted({c for row in rows for c in row} - {"serial_number", "model", "ThingName"})
    columns = ["serial_number", "model", *extra]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(column, "") for column in columns])
    return out.getvalue().encode("utf-8")


def check_thing_names(
    catalog: Catalog, rows: Sequence[Mapping[str, str]], data: bytes, where: str, *, indexed: bool = True
) -> Any:
    """Validate the manifest as the pipeline will; a given ThingName must be the product's own name for it.

    Returns the validation (accepted rows with their thing names; refused rows stay the pipeline's to report).
    """
    validation = validate_manifest(read_manifest(data), catalog)
    names = dict(
        zip(
            validation.accepted.column("row").to_pylist(),
            validation.accepted.column("thing_name").to_pylist(),
            strict=True,
        )
    )
    for number, row in enumerate(rows, start=1):
        given, made = row.get("ThingName"), names.get(number)
        if given is not None and made is not None and given != made:
            product = catalog.products[row["model"]]
            field = f"{where}[{number - 1}]" if indexed else where
            raise BadRequest(
                f"{field}.ThingName {given!r}: product {product.model} names this device {made!r} "
                f"(pattern {product.thing_name}); leave ThingName out or give that name"
            )
    return validation


def single_row(catalog: Catalog, product: Product, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The one device of a POST /things for a catalog product, validated by the manifest contract."""
    row = entry_row(product, parameters, "parameters")
    data = manifest_csv([row])
    validation = check_thing_names(catalog, [row], data, "parameters", indexed=False)
    if validation.quarantined:
        _, code, reason = validation.quarantined[0]
        raise BadRequest(f"parameters: {reason} ({code})")
    return {name: column[0] for name, column in validation.accepted.to_pydict().items()}
