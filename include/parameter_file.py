"""Parameter-file lines: one compact JSON object of string values per device (orjson)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson


def encode_parameters(device: Mapping, certificate_pem: str, attributes: Sequence[tuple[str, str]]) -> bytes:
    """One device's line of the JSON-lines input file, newline included.

    `attributes` are its product's (attribute name, template parameter) pairs; every value is a string
    (RegisterThing's parameter type), an attribute the device lacks is "".
    """
    values = {"ThingName": device["thing_name"], "CertificatePem": certificate_pem}
    given = device.get("attributes") or {}
    for name, parameter in attributes:
        values[parameter] = str(given.get(name, ""))
    return orjson.dumps(values) + b"\n"
