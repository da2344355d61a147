"""Bulk-registration reports: download the RESULTS/ERRORS links and parse their JSON lines."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from include.errors import ReconcileError

REPORT_BLOCK = 1 << 20
ERROR_CODE = re.compile(r"Error Code: (?P<code>[A-Za-z0-9_.]+)")
JAVA_PREFIX = re.compile(r"^(?:[a-z0-9_]+\.)+(?P<exception>[A-Za-z0-9_]+): ")
SERVICE_SUFFIX = re.compile(r"\s*\(Service: [^)]*\)\s*$")


@dataclass(frozen=True)
class ReportLine:
    """One line of a RESULTS or ERRORS report."""

    line_number: int
    offset: int | None
    error_code: str | None
    error_message: str | None
    thing_arn: str | None
    certificate_arn: str | None
    resource_arns: dict[str, str]

    @property
    def certificate_id(self) -> str | None:
        return self.certificate_arn.rsplit("/", 1)[-1] if self.certificate_arn else None

    @property
    def succeeded(self) -> bool:
        return self.error_code is None and self.error_message is None


def download_report_lines(url: str, *, timeout: float = 60.0) -> Iterator[bytes]:
    """Stream the lines of a presigned report link (a plain HTTP GET, no credentials)."""
    if not url.startswith(("http://", "https://")):
        raise ReconcileError(f"report link {url[:80]!r} is not an http(s) URL")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
        # Read in large blocks and split: iterating the response line by line costs microseconds per line.
        rest = b""
        while block := response.read(REPORT_BLOCK):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            yield from (line.rstrip(b"\r") for line in lines if line.strip())
        if rest.strip():
            yield rest.rstrip(b"\r")


def parse_error_message(message: str) -> tuple[str, str]:
    """(error code, human message) from AWS's Java-style errorMessage.

    "com.amazonaws.services.iot.model.ResourceRegistrationFailureException: Register thing ... not found.
    (Service: AWSIot; Status Code: 400; Error Code: ResourceRegistrationFailureException; Request ID: ...)"
    -> ("ResourceRegistrationFailureException", "Register thing ... not found.")
    """
    code_match = ERROR_CODE.search(message)
    prefix = JAVA_PREFIX.match(message)
    code = code_match["code"] if code_match else (prefix["exception"] if prefix else "UnknownError")
    text = message[prefix.end() :] if prefix else message
    text = SERVICE_SUFFIX.sub("", text).strip()
    return code, text or message


def parse_report_line(line: bytes | str) -> ReportLine:
    """Parse one report line; unknown shapes raise ReconcileError naming the line."""
    try:
        record: dict[str, Any] = orjson.loads(line)
        number = int(record["lineNumber"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        shown = line[:120] if isinstance(line, str) else line[:120].decode("utf-8", "replace")
        raise ReconcileError(f"report line is not a bulk-registration report record: {shown!r}") from None
    offset = record.get("offset")
    message = record.get("errorMessage")
    response = record.get("response") or {}
    arns = response.get("ResourceArns") or response.get("resourceArns") or {}
    thing_arn = next((a for a in arns.values() if ":thing/" in a), None)
    certificate_arn = next((a for a in arns.values() if ":cert/" in a), None)
    code, text = parse_error_message(message) if message else (None, None)
    return ReportLine(
        line_number=number,
        offset=int(offset) if offset is not None else None,
        error_code=code,
        error_message=text,
        thing_arn=thing_arn,
        certificate_arn=certificate_arn,
        resource_arns=dict(arns),
    )
