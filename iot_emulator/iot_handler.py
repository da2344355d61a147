"""The IoT front door over HTTP: body limits, route, faults, input, the operation under its lock, output."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from iot_emulator import wire
from iot_emulator.errors import IotError
from iot_emulator.http_io import Headers, caller_endpoint, error_response, read_body, respond
from iot_emulator.limits import BODY_TOO_LARGE, BodyTooLarge
from iot_emulator.s3_store import request_endpoint
from iot_emulator.state import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from iot_emulator.faults import Faults
    from iot_emulator.service import IotService

log = logging.getLogger(__name__)

READ_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


class IotTarget(Protocol):
    """What an IoT request needs from the server."""

    faults: Faults
    public_url: str | None

    def backend(self, account_id: str, region: str) -> IotService: ...

    def save_soon(self) -> None: ...


def iot_app(target: IotTarget, environ: dict[str, Any], start_response: Any, region: str) -> list[bytes]:
    """Answer one IoT request of ``region``'s service; every error in AWS's error encoding."""
    request_id = str(uuid.uuid4())
    try:
        body = read_body(environ)  # the front door refuses an oversized body before routing it
    except BodyTooLarge as exc:
        return error_response(start_response, IotError(BODY_TOO_LARGE, str(exc), status=413), request_id)
    method = environ.get("REQUEST_METHOD", "GET")
    raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", ""))
    raw_path = raw_path.split("?", 1)[0]
    found = wire.match_route(method, raw_path)
    if found is None:
        error = IotError(
            "UnknownOperationException", f"No IoT operation matches {method} {raw_path}.", status=404
        )
        return error_response(start_response, error, request_id)
    route, labels = found
    service = target.backend(DEFAULT_ACCOUNT, region)
    operation = getattr(service, wire.snake_case(route.name), None)  # a modeled operation, or not ours
    if operation is None:
        error = IotError(
            "NotImplemented", f"Operation {route.name} is not implemented by the emulator.", status=501
        )
        return error_response(start_response, error, request_id)
    try:
        fault = target.faults.request_fault(route.name)
        if fault is not None:
            raise fault
        params = wire.parse_input(route, labels, environ.get("QUERY_STRING", ""), Headers(environ), body)
        token = request_endpoint.set(target.public_url or caller_endpoint(environ))
        try:
            with service.lock:
                result = operation(**params)
        finally:
            request_endpoint.reset(token)
        status, headers, payload = wire.serialise_output(route, result)
    except IotError as error:
        return error_response(start_response, error, request_id)
    except Exception:
        # The traceback names the operation only: request bodies can hold private keys.
        log.exception("IoT operation %s failed (request %s)", route.name, request_id)
        error = IotError("InternalFailureException", "An internal error occurred.")
        return error_response(start_response, error, request_id)
    if method not in READ_METHODS:
        target.save_soon()
    headers["x-amzn-RequestId"] = request_id
    return respond(start_response, status, payload, headers)
