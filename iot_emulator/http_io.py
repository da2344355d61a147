"""WSGI plumbing shared by the IoT and admin routes: bounded body reads and AWS-shaped JSON responses."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from iot_emulator.errors import IotError
from iot_emulator.limits import MAX_BODY_BYTES, BodyTooLarge

_READ_SIZE = 64 * 1024


def read_body(environ: dict[str, Any], limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most ``limit`` bytes; BodyTooLarge beyond.

    An oversized body announced by Content-Length is refused unread: werkzeug drains what the client still
    sends after the answer, so the client reads the 413 instead of a connection reset.
    """
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise BodyTooLarge(length, limit)
    if length > 0:
        return stream.read(length)
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return b""
    chunks: list[bytes] = []
    total = 0
    while True:  # a chunked body has no announced length: read one byte past the limit to notice it
        piece = stream.read(min(_READ_SIZE, limit + 1 - total))
        if not piece:
            return b"".join(chunks)
        chunks.append(piece)
        total += len(piece)
        if total > limit:
            raise BodyTooLarge(None, limit)


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:  # a status the standard library does not name
        return f"{status} Status"


def respond(
    start_response: Any, status: int, body: bytes, headers: dict[str, str] | None = None
) -> list[bytes]:
    out = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if headers:
        out.extend(headers.items())
    start_response(status_line(status), out)
    return [body]


def json_response(
    start_response: Any, status: int, doc: Any, headers: dict[str, str] | None = None
) -> list[bytes]:
    return respond(start_response, status, json.dumps(doc).encode(), headers)


def error_response(start_response: Any, error: IotError, request_id: str) -> list[bytes]:
    """AWS's error encoding: modeled status, ``x-amzn-ErrorType: <Name>:``, JSON message + extra members."""
    headers = {"x-amzn-ErrorType": f"{error.code}:", "x-amzn-RequestId": request_id}
    return json_response(start_response, error.status, error.body(), headers)


def caller_endpoint(environ: dict[str, Any]) -> str | None:
    """The base URL the caller used (presigned links must work for that caller)."""
    host = environ.get("HTTP_HOST")
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}" if host else None


class Headers:
    """Case-insensitive header lookup straight on the WSGI environ."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        return self._environ.get("HTTP_" + name.upper().replace("-", "_"))
