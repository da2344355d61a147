"""Parameter-file lines: one compact JSON object of string values per device (orjson)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson


def parameter_names(
    attributes: Sequence[tuple[str, str]], certificate: str = "CertificatePem"
) -> tuple[str, ...]:
    """The keys of a product's lines, in order: ThingName, its certificate parameter (CertificatePem, CSR
    or CertificateId), then its attribute parameters.

    `attributes` are the product's (manifest column, template parameter) pairs.
    """
    return ("ThingName", certificate, *(parameter for _, parameter in attributes))


def encode_line(names: Sequence[str], values: Iterable[str]) -> bytes:
    """One device's line of the JSON-lines input file, newline included; a value per name, all strings
    (RegisterThing's parameter type)."""
    # No strict zip: its keyword costs per line, and callers build values from the same attributes.
    return orjson.dumps(dict(zip(names, values, strict=False))) + b"\n"


def encode_parameters(
    device: Mapping[str, Any], certificate_pem: str, attributes: Sequence[tuple[str, str]]
) -> bytes:
    """The line of a device given as a mapping: "thing_name" and its manifest columns.

    A column the device lacks, or an empty one, is "".
    """
    values = [device["thing_name"], certificate_pem]
    values += ("" if device.get(column) is None else str(device[column]) for column, _ in attributes)
    return encode_line(parameter_names(attributes), values)
