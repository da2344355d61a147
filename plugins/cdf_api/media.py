"""CDF's media type in and out, its 10 MB body limit, and its `{"error": ...}` bodies."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from include.cdf.errors import BadRequest, CdfError

MEDIA_TYPE = "application/vnd.aws-cdf-v1.0+json"
MAX_BODY = 10 * 1024 * 1024  # CDF's body parser limit


class HttpError(CdfError):
    """A refusal of the HTTP layer itself (401, 403, 413, 415, 404/405 of unknown routes)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _types(header: str) -> list[tuple[str, float]]:
    found = []
    for item in header.split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        found.append((kind.lower(), quality))
    return found


def accepts_cdf(header: str | None) -> bool:
    """The Accept header names CDF's media type (as CDF, no wildcard stands in for it)."""
    return bool(header) and any(kind == MEDIA_TYPE and q > 0 for kind, q in _types(header or ""))


def is_cdf(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";")[0].strip().lower() == MEDIA_TYPE


def check_headers(request: Request) -> None:
    """415 for any other Accept or body Content-Type, 413 for an announced body over 10 MB."""
    if not accepts_cdf(request.headers.get("accept")):
        shown = (request.headers.get("accept") or "none")[:80]
        raise HttpError(415, f"Accept {shown!r} is not supported: send Accept: {MEDIA_TYPE}")
    length = request.headers.get("content-length")
    has_body = (length is not None and length.strip() not in ("", "0")) or "chunked" in request.headers.get(
        "transfer-encoding", ""
    )
    if (
        request.method in ("POST", "PATCH", "PUT")
        and has_body
        and not is_cdf(request.headers.get("content-type"))
    ):
        shown = (request.headers.get("content-type") or "none")[:80]
        raise HttpError(415, f"Content-Type {shown!r} is not supported: send Content-Type: {MEDIA_TYPE}")
    if length is not None and length.strip().isdigit() and int(length) > MAX_BODY:
        raise HttpError(413, f"the body has {int(length)} bytes; at most {MAX_BODY} are accepted")


async def json_body(request: Request) -> Any:
    """The request body as JSON, read at most to the limit (a chunked body is counted as it arrives)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HttpError(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        raise BadRequest("the request body is empty: expected a JSON object")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def cdf_response(status: int, body: Any = None) -> Response:
    """A response in CDF's media type (204 has no body and so no Content-Type)."""
    if body is None:
        return Response(status_code=status)
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type=MEDIA_TYPE)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = cdf_response(status, {"error": message})
    response.headers.update(headers or {})
    return response
