"""One reading of AWS errors for the API: not found is 404, refusals 400, throttling and 5xx 503."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from include.aws_errors import NOT_FOUND_CODES, error_code
from include.cdf.errors import BadRequest, NotFound, Unavailable, UpstreamError

RETRYABLE_CODES = frozenset(
    {"ThrottlingException", "Throttling", "ServiceUnavailableException", "InternalFailureException"}
)


def aws_message(exc: BaseException) -> str:
    """AWS's own message of a ClientError (it names the resource, never key material we sent)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message") or "")


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


@contextlib.contextmanager
def aws_errors(what: str, *, not_found: str | None = None) -> Iterator[None]:
    """Turn a botocore error raised inside into the CdfError the client should see.

    `what` names the AWS call in the sentence; `not_found` replaces AWS's sentence for a missing resource.
    Errors without an AWS code (connection refused, timeouts) are 503 too: the client may retry.
    """
    try:
        yield
    except Exception as exc:
        code = error_code(exc)
        if code is None:
            if type(exc).__module__.startswith(("botocore", "urllib3")):
                raise Unavailable(f"{what}: AWS could not be reached ({type(exc).__name__})") from None
            raise
        message = aws_message(exc)
        if code in NOT_FOUND_CODES:
            raise NotFound(not_found or f"{what}: {message or code}") from None
        if code in RETRYABLE_CODES or _status(exc) >= 500:
            raise Unavailable(f"{what}: AWS answered {code}; try again later") from None
        if 400 <= _status(exc) < 500:
            raise BadRequest(f"{what}: {code}: {message}".rstrip(": ")) from None
        raise UpstreamError(f"{what}: AWS answered {code}") from None
