"""Errors the CDF API answers with: an HTTP status and one sentence that names the field and the problem."""

from __future__ import annotations


class CdfError(Exception):
    """A request the service refuses or cannot serve; `status` is the HTTP status, str() the sentence."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)


class BadRequest(CdfError):
    status = 400


class NotFound(CdfError):
    status = 404


class Unavailable(CdfError):
    """AWS is throttling or failing after botocore's retries: the client may try again."""

    status = 503


class UpstreamError(CdfError):
    """AWS answered something this service did not expect (its code is in the sentence)."""

    status = 502
