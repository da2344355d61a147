"""Names, descriptions and attributes checked as the IoT model constrains them (aws-iot-facts.md 4.7)."""

from __future__ import annotations

import re
from typing import Any

from iot_emulator.errors import invalid_request

RESOURCE_NAME = re.compile(r"[a-zA-Z0-9:_-]+")
POLICY_NAME = re.compile(r"[\w+=,.@-]+")
ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]+")
ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]*")
DESCRIPTION = re.compile(r"[!-~ ]*")  # Java's \p{Graph} is printable ASCII
COGNITO_IDENTITY = re.compile(r"[a-z]{2}(-[a-z]+)+-\d:[0-9a-f-]{36}")


def check_name(
    value: Any, member: str, pattern: re.Pattern[str] = RESOURCE_NAME, max_length: int = 128
) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_length or not pattern.fullmatch(value):
        raise invalid_request(
            f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {pattern.pattern} and length 1 to {max_length}"
        )
    return value


def check_description(value: Any, member: str) -> None:
    if value is not None and (
        not isinstance(value, str) or len(value) > 2028 or not DESCRIPTION.fullmatch(value)
    ):
        raise invalid_request(f"{member} must be at most 2028 printable characters")


def checked_attributes(attributes: Any) -> dict[str, str]:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise invalid_request("attributes must be a map of attribute names to values")
    for name, value in attributes.items():
        check_name(name, "attributePayload.attributes.key", ATTRIBUTE_NAME)
        if not isinstance(value, str) or len(value) > 800 or not ATTRIBUTE_VALUE.fullmatch(value):
            raise invalid_request(
                f"1 validation error detected: Value '{value}' at 'attributePayload.attributes.{name}' "
                "failed to satisfy constraint: Member must satisfy regular expression pattern: "
                f"{ATTRIBUTE_VALUE.pattern}"
            )
    return dict(attributes)


def merged_attributes(current: dict[str, str], payload: dict[str, Any] | None) -> dict[str, str]:
    """AttributePayload semantics: replace unless ``merge``; when merging, an empty value removes."""
    if payload is None:
        return dict(current)
    incoming = checked_attributes(payload.get("attributes"))
    if not payload.get("merge"):
        return {k: v for k, v in incoming.items() if v != ""}
    merged = dict(current)
    for name, value in incoming.items():
        if value == "":
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged
