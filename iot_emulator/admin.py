"""The emulator's own routes under ``/_emulator/`` (health, reset, save, faults) and who may use them."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import uuid
from typing import Any, Protocol

from iot_emulator.errors import IotError
from iot_emulator.faults import Faults
from iot_emulator.http_io import error_response, json_response, read_body
from iot_emulator.limits import BODY_TOO_LARGE, BodyTooLarge, JsonTooDeep, parse_json

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/_emulator/"
MOTO_API_PREFIX = "moto-api"  # moto's own admin app (reset, seed, recorder...), matched without leading "/"
ADMIN_TOKEN_HEADER = "X-Emulator-Admin-Token"  # noqa: S105 - a header name, not a secret
ADMIN_TOKEN_ENV = "IOT_EMULATOR_ADMIN_TOKEN"  # noqa: S105 - a variable name
OPEN_ADMIN_ROUTES = frozenset({"health"})  # docker's healthcheck and wait loops need no token


def is_admin_path(path: str) -> bool:
    """Routes that change or reveal the emulator itself: ours but health, and all of moto's."""
    if path.startswith(ADMIN_PREFIX):
        return path[len(ADMIN_PREFIX) :].rstrip("/") not in OPEN_ADMIN_ROUTES
    # moto's dispatcher sends every path starting with /moto-api to its admin app; be at least as broad.
    return path.lstrip("/").startswith(MOTO_API_PREFIX)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped form; anything unparsable is not loopback."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class AdminGuard:
    """Admin routes for loopback peers only, or for others that send the admin token when one is set.

    REMOTE_ADDR is the TCP peer (werkzeug applies no X-Forwarded-For), so a published port does not make
    reset or faults available to whoever reaches it.
    """

    def __init__(self, token: str | None = None) -> None:
        self._token = token.encode() if token else None

    def refusal(self, environ: dict[str, Any]) -> IotError | None:
        """None when the request may use an admin route, else the 403 to answer."""
        if is_loopback(environ.get("REMOTE_ADDR", "")):
            return None
        given = environ.get("HTTP_" + ADMIN_TOKEN_HEADER.upper().replace("-", "_"))
        if self._token is not None and given is not None and hmac.compare_digest(given.encode(), self._token):
            return None
        log.warning(
            "refused admin request %s %s from %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            environ.get("REMOTE_ADDR"),
        )
        return IotError(
            "AccessDeniedException",
            "Admin routes answer loopback clients only, or clients sending the "
            f"{ADMIN_TOKEN_HEADER} header the emulator was started with "
            f"(--admin-token or {ADMIN_TOKEN_ENV}).",
            status=403,
        )


class AdminTarget(Protocol):
    """What the admin routes act on (the EmulatorServer)."""

    endpoint_url: str
    faults: Faults

    def health(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def save_now(self) -> bool: ...


def admin_app(target: AdminTarget, environ: dict[str, Any], start_response: Any, route: str) -> list[bytes]:
    """Answer one ``/_emulator/<route>`` request; errors in AWS's JSON error shape."""
    request_id = str(uuid.uuid4())
    try:
        return _dispatch(target, environ, start_response, route.rstrip("/"))
    except IotError as error:
        return error_response(start_response, error, request_id)


def _dispatch(target: AdminTarget, environ: dict[str, Any], start_response: Any, route: str) -> list[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    if route == "health" and method == "GET":
        return json_response(start_response, 200, target.health())
    if route == "reset" and method == "POST":
        target.reset()
        return json_response(start_response, 200, {"status": "reset"})
    if route == "save" and method == "POST":
        saved = target.save_now()
        return json_response(start_response, 200, {"status": "saved" if saved else "in-memory"})
    if route == "faults":
        if method == "GET":
            return json_response(start_response, 200, target.faults.settings())
        if method == "DELETE":
            target.faults.reset()
            return json_response(start_response, 200, target.faults.settings())
        if method == "POST":
            settings = _fault_settings(environ)
            try:
                if settings.pop("reset", False):
                    target.faults.reset()
                target.faults.update(settings)
            except (ValueError, TypeError) as exc:
                raise IotError("InvalidRequestException", str(exc)) from None
            return json_response(start_response, 200, target.faults.settings())
    raise IotError("UnknownOperationException", f"no admin route {method} {ADMIN_PREFIX}{route}", status=404)


def _fault_settings(environ: dict[str, Any]) -> dict[str, Any]:
    """The POSTed JSON object, under the same size and depth limits as IoT requests."""
    try:
        body = read_body(environ)
    except BodyTooLarge as exc:
        raise IotError(BODY_TOO_LARGE, str(exc), status=413) from None
    try:
        settings = parse_json(body) if body else {}
    except JsonTooDeep as exc:
        raise IotError("InvalidRequestException", f"The request body {exc}.") from None
    except ValueError:
        raise IotError("InvalidRequestException", "The request body is not valid JSON.") from None
    if not isinstance(settings, dict):
        raise IotError("InvalidRequestException", "the body must be a JSON object of fault settings")
    return settings
