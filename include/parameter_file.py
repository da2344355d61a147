"""Parameter-file lines: one compact JSON object of string values per device (orjson)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from include.catalog import Product


def parameters_for(product: Product, device: Mapping, certificate_pem: str) -> dict[str, str]:
    """The template parameters of one device; every value is a string (RegisterThing's parameter type)."""
    values = {"ThingName": device["thing_name"], "CertificatePem": certificate_pem}
    attributes = device.get("attributes") or {}
    for attribute in product.attributes:
        values[attribute.parameter] = str(attributes.get(attribute.name, ""))
    return values


def encode_line(parameters: Mapping[str, str]) -> bytes:
    """One line of the JSON-lines input file, newline included."""
    return orjson.dumps(parameters) + b"\n"


def decode_line(line: bytes | str) -> dict[str, str]:
    return orjson.loads(line)
