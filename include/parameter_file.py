"""Parameter-file lines: one compact JSON object of string values per device (orjson)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from include.catalog import Product


def parameters_for(product: Product, device: Mapping, certificate_pem: str) -> dict[str, str]:
    """The template parameters of one device; every value is a string (RegisterThing's parameter type)."""
    return _parameters(device, certificate_pem, [(a.name, a.parameter) for a in product.attributes])


def _parameters(
    device: Mapping, certificate_pem: str, attributes: Sequence[tuple[str, str]]
) -> dict[str, str]:
    values = {"ThingName": device["thing_name"], "CertificatePem": certificate_pem}
    given = device.get("attributes") or {}
    for name, parameter in attributes:
        values[parameter] = str(given.get(name, ""))
    return values


def encode_parameters(device: Mapping, certificate_pem: str, attributes: Sequence[tuple[str, str]]) -> bytes:
    """The line of one device given its product's (attribute name, parameter) pairs (no Product needed)."""
    return encode_line(_parameters(device, certificate_pem, attributes))


def encode_line(parameters: Mapping[str, str]) -> bytes:
    """One line of the JSON-lines input file, newline included."""
    return orjson.dumps(parameters) + b"\n"


def decode_line(line: bytes | str) -> dict[str, str]:
    return orjson.loads(line)
