"""IoT wire layer: HTTP to operation and members (routed, validated from botocore's model), and back."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, unquote

import botocore.session
from botocore.model import OperationModel, Shape

from iot_emulator.errors import IotError
from iot_emulator.limits import JsonTooDeep, parse_json
from iot_emulator.validation import validate, validation_error

_LABEL = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class Route:
    """One modeled operation: its HTTP method and compiled requestUri."""

    name: str
    method: str
    uri: str
    regex: re.Pattern[str]
    labels: tuple[str, ...]
    sort_key: tuple[Any, ...]
    model: OperationModel


@lru_cache(maxsize=1)
def service_model() -> Any:
    return botocore.session.get_session().get_service_model("iot")


def snake_case(operation: str) -> str:
    """``StartThingRegistrationTask`` -> ``start_thing_registration_task`` (as botocore's xform_name)."""
    return botocore.xform_name(operation)


def _compile(uri: str) -> tuple[re.Pattern[str], tuple[str, ...], tuple[Any, ...]]:
    path = uri.split("?", 1)[0]
    parts: list[str] = []
    labels: list[str] = []
    kinds: list[int] = []  # per segment: 0 literal, 1 label, 2 greedy; literals sort first
    for segment in path.strip("/").split("/") if path.strip("/") else []:
        pattern = ""
        kind = 0
        pos = 0
        for match in _LABEL.finditer(segment):
            pattern += re.escape(segment[pos : match.start()])
            label = match.group(1)
            if label.endswith("+"):
                labels.append(label[:-1])
                pattern += "(.+)"
                kind = 2
            else:
                labels.append(label)
                pattern += "([^/]+)"
                kind = max(kind, 1)
            pos = match.end()
        pattern += re.escape(segment[pos:])
        parts.append(pattern)
        kinds.append(kind)
    regex = re.compile("^/" + "/".join(parts) + "/?$")
    return regex, tuple(labels), (tuple(kinds), -len(kinds))


@lru_cache(maxsize=1)
def routes_by_method() -> dict[str, list[Route]]:
    """Every modeled operation, grouped by method, most specific patterns first."""
    model = service_model()
    table: dict[str, list[Route]] = {}
    for name in model.operation_names:
        op = model.operation_model(name)
        regex, labels, key = _compile(op.http["requestUri"])
        table.setdefault(op.http["method"], []).append(
            Route(name, op.http["method"], op.http["requestUri"], regex, labels, key, op)
        )
    for routes in table.values():
        routes.sort(key=lambda r: r.sort_key)
    return table


def all_routes() -> list[Route]:
    return sorted((r for rs in routes_by_method().values() for r in rs), key=lambda r: r.name)


def match_route(method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
    """The operation for ``method`` + ``raw_path`` (still percent-encoded) and its URI labels (decoded)."""
    for route in routes_by_method().get(method, ()):
        found = route.regex.match(raw_path)
        if found:
            return route, {label: unquote(v) for label, v in zip(route.labels, found.groups(), strict=True)}
    return None


# ---------------------------------------------------------------- input


def _convert_text(value: str, shape: Shape, where: str) -> Any:
    """A querystring/header/uri string to the member's type."""
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(value)
        if kind in ("float", "double"):
            return float(value)
        if kind == "boolean":
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return value.lower() == "true"
        if kind == "timestamp":
            return _parse_timestamp(value)
    except ValueError:
        raise validation_error(
            [f"Value '{value}' at '{where}' failed to satisfy constraint: Member must be a {kind}"]
        ) from None
    return value


def _parse_timestamp(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except ValueError:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()


def parse_input(
    route: Route, labels: dict[str, str], query: str, headers: Any, body: bytes
) -> dict[str, Any]:
    """The input members from the request, by location, types converted (timestamps -> epoch floats)."""
    shape = route.model.input_shape
    if shape is None:
        return {}
    params: dict[str, Any] = {}
    qs = parse_qs(query, keep_blank_values=True) if query else {}
    payload_name = shape.serialization.get("payload")
    body_doc: Any = None
    if body and (payload_name is None or shape.members[payload_name].type_name == "structure"):
        try:
            body_doc = parse_json(body)
        except JsonTooDeep as exc:
            raise IotError("InvalidRequestException", f"The request body {exc}.") from None
        except ValueError:
            raise IotError("InvalidRequestException", "The request body is not valid JSON.") from None
        if not isinstance(body_doc, dict):
            raise IotError("InvalidRequestException", "The request body must be a JSON object.")
    for name, member in shape.members.items():
        loc = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        if loc == "uri":
            if wire_name in labels:
                params[name] = _convert_text(labels[wire_name], member, name)
        elif loc == "querystring":
            if member.type_name == "map":
                params[name] = {k: v[-1] for k, v in qs.items()}
            elif wire_name in qs:
                values = qs[wire_name]
                if member.type_name == "list":
                    params[name] = [_convert_text(v, member.member, name) for v in values]
                else:
                    params[name] = _convert_text(values[-1], member, name)
        elif loc == "header":
            value = headers.get(wire_name)
            if value is not None:
                params[name] = _convert_text(value, member, name)
        elif name == payload_name:
            if member.type_name == "structure":
                if body_doc is not None:
                    params[name] = _from_json(body_doc, member)
            elif body:
                params[name] = body
        elif body_doc is not None and payload_name is None and wire_name in body_doc:
            value = body_doc[wire_name]
            if value is not None:
                params[name] = _from_json(value, member)
    validate(shape, params)
    return params


def _from_json(value: Any, shape: Shape) -> Any:
    kind = shape.type_name
    if value is None:
        return None
    if kind == "structure" and isinstance(value, dict):
        out = {}
        for name, member in shape.members.items():
            wire_name = member.serialization.get("name", name)
            if wire_name in value and value[wire_name] is not None:
                out[name] = _from_json(value[wire_name], member)
        return out
    if kind == "list" and isinstance(value, list):
        return [_from_json(v, shape.member) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _from_json(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        return _parse_timestamp(value)
    if kind == "blob" and isinstance(value, str):
        return base64.b64decode(value)
    return value


# ---------------------------------------------------------------- output


def serialise_output(route: Route, result: dict[str, Any] | None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a successful call, keeping only modeled output members."""
    status = int(route.model.http.get("responseCode", 200))
    shape = route.model.output_shape
    headers: dict[str, str] = {}
    if shape is None or not result:
        return status, headers, b"{}"
    payload_name = shape.serialization.get("payload")
    doc: dict[str, Any] = {}
    for name, member in shape.members.items():
        value = result.get(name)
        if value is None:
            continue
        loc = member.serialization.get("location")
        if loc == "header":
            headers[member.serialization.get("name", name)] = str(_to_json(value, member))
        elif loc == "statusCode":
            status = int(value)
        elif name == payload_name:
            if member.type_name in ("blob", "string"):
                data = value if isinstance(value, bytes) else str(value).encode()
                return status, headers, data
            return status, headers, json.dumps(_to_json(value, member)).encode()
        else:
            doc[member.serialization.get("name", name)] = _to_json(value, member)
    return status, headers, json.dumps(doc).encode()


def _to_json(value: Any, shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "structure":
        out = {}
        for name, member in shape.members.items():
            item = value.get(name)
            if item is not None:
                out[member.serialization.get("name", name)] = _to_json(item, member)
        return out
    if kind == "list":
        return [_to_json(v, shape.member) for v in value]
    if kind == "map":
        return {k: _to_json(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            return value.timestamp()
        return float(value)
    if kind == "blob":
        return base64.b64encode(value if isinstance(value, bytes) else str(value).encode()).decode()
    return value
