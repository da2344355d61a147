"""The one reading of an AWS error: botocore's ClientError carries the service's code in its response."""

from __future__ import annotations

# Codes of resources that do not exist (Describe/Get calls), across the services the pipeline calls.
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "NoSuchKey", "NotFound", "404"})


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (e.g. ``ThrottlingException``), else None."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code else None


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES
