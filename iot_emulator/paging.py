"""Paging as IoT's list operations page: base64 offset tokens, the model's page size bounds."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from iot_emulator.errors import invalid_request

MAX_PAGE = 250
REGISTRY_PAGE_SIZE = 50
MARKER_PAGE_SIZE = 25


def paginate(
    items: list[Any], token: str | None, limit: int | None, default: int
) -> tuple[list[Any], str | None]:
    """One page of ``items`` and the next token (base64 of the next offset), as IoT's list calls page."""
    if limit is None:
        limit = default
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise invalid_request(f"The page size must be between 1 and {MAX_PAGE}")
    start = 0
    if token:
        try:
            start = int(base64.b64decode(token, validate=True).decode("ascii"))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise invalid_request("The pagination token is not valid") from None
        if start < 0:
            raise invalid_request("The pagination token is not valid")
    end = start + limit
    next_token = base64.b64encode(str(end).encode("ascii")).decode("ascii") if end < len(items) else None
    return items[start:end], next_token


def page_result(key: str, page: list[Any], token_key: str, token: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {key: page}
    if token:
        result[token_key] = token
    return result
