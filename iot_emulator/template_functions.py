"""The template expression language: values, Ref to parameters and pseudo-parameters, intrinsic functions.

A value of a template is compiled once into a constant or a closure over a ``LineContext`` (one device's
parameters), so evaluating a line never re-reads the template's JSON. Every error names its place in the
template, e.g. ``Resources.thing.Properties.ThingName: Ref 'Name' is not a declared parameter``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from iot_emulator.errors import IotError, invalid_request

CERT_PSEUDO_PREFIX = "AWS::IoT::Certificate::"
CERT_PSEUDO_PARAMETERS = frozenset(
    CERT_PSEUDO_PREFIX + name
    for name in (
        "Id",
        "CommonName",
        "Country",
        "Organization",
        "OrganizationalUnit",
        "DistinguishedNameQualifier",
        "StateName",
        "SerialNumber",
    )
)

_MISSING = object()
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")

Evaluator = Callable[["LineContext"], Any]


def template_error(path: str, message: str) -> IotError:
    return invalid_request(f"{path}: {message}" if path else message)


class LineContext:
    """What one device line is evaluated with: its parameters and the certificate pseudo-parameters."""

    __slots__ = ("values", "pseudo")

    def __init__(self, values: Mapping[str, Any], pseudo: Callable[[str, str], str]) -> None:
        self.values = values
        self.pseudo = pseudo


@dataclass(frozen=True)
class Const:
    value: Any


Compiled = Const | Evaluator


def run(node: Compiled) -> Evaluator:
    if isinstance(node, Const):
        value = node.value
        return lambda ctx: value
    return node


def as_string(value: Any, path: str, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    raise template_error(path, f"{what} must be a string, got {json_type(value)}")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class ValueCompiler:
    def __init__(self, parameters: Mapping[str, Any], mappings: Mapping[str, Any]) -> None:
        self.parameters = parameters
        self.mappings = mappings
        self.uses_cert_pseudo = False

    def value(self, node: Any, path: str) -> Compiled:
        if isinstance(node, dict):
            intrinsic = [k for k in node if k == "Ref" or k.startswith("Fn::")]
            if intrinsic:
                if len(node) != 1:
                    raise template_error(path, f"{intrinsic[0]} must be the only key of its object")
                name, args = next(iter(node.items()))
                handler = self._INTRINSICS.get(name)
                if handler is None:
                    raise template_error(
                        path,
                        f"unsupported intrinsic function '{name}' "
                        "(supported: Ref, Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap, Fn::Sub)",
                    )
                return handler(self, args, path if name == "Ref" else f"{path}.{name}")
            items = {k: self.value(v, f"{path}.{k}") for k, v in node.items()}
            if all(isinstance(v, Const) for v in items.values()):
                return Const({k: v.value for k, v in items.items()})
            funcs = [(k, run(v)) for k, v in items.items()]
            return lambda ctx: {k: f(ctx) for k, f in funcs}
        if isinstance(node, list):
            elements = [self.value(v, f"{path}[{i}]") for i, v in enumerate(node)]
            if all(isinstance(v, Const) for v in elements):
                return Const([v.value for v in elements])
            funcs = [run(v) for v in elements]
            return lambda ctx: [f(ctx) for f in funcs]
        return Const(node)

    def _ref(self, name: Any, path: str) -> Compiled:
        if not isinstance(name, str):
            raise template_error(path, f"Ref takes a parameter name, got {json_type(name)}")
        if name in CERT_PSEUDO_PARAMETERS:
            self.uses_cert_pseudo = True
            return lambda ctx: ctx.pseudo(name, path)
        if name not in self.parameters:
            if name.startswith("AWS::"):
                raise template_error(
                    path,
                    f"Ref '{name}' is not a supported pseudo-parameter "
                    f"(supported: {', '.join(sorted(CERT_PSEUDO_PARAMETERS))})",
                )
            raise template_error(path, f"Ref '{name}' is not a declared parameter")

        def ref(ctx: LineContext) -> Any:
            value = ctx.values.get(name, _MISSING)
            if value is _MISSING:
                raise template_error(path, f"parameter '{name}' has no value in the input and no Default")
            return as_string(value, path, f"parameter '{name}'")

        return ref

    def _join(self, args: Any, path: str) -> Compiled:
        if not (isinstance(args, list) and len(args) == 2 and isinstance(args[0], str)):
            raise template_error(path, "Fn::Join takes [delimiter, [values...]] with a string delimiter")
        delimiter = args[0]
        values = self.value(args[1], f"{path}[1]")
        if isinstance(values, Const) and not isinstance(values.value, list):
            raise template_error(
                f"{path}[1]", f"Fn::Join needs a list of values, got {json_type(values.value)}"
            )
        get_values = run(values)

        def join(ctx: LineContext) -> str:
            items = get_values(ctx)
            if not isinstance(items, list):
                raise template_error(f"{path}[1]", f"Fn::Join needs a list of values, got {json_type(items)}")
            return delimiter.join(
                as_string(v, f"{path}[1][{i}]", "a joined value") for i, v in enumerate(items)
            )

        return join

    def _select(self, args: Any, path: str) -> Compiled:
        if not (isinstance(args, list) and len(args) == 2):
            raise template_error(path, "Fn::Select takes [index, list]")
        get_index = run(self.value(args[0], f"{path}[0]"))
        get_items = run(self.value(args[1], f"{path}[1]"))

        def select(ctx: LineContext) -> Any:
            raw = get_index(ctx)
            try:
                index = int(raw)
            except (TypeError, ValueError):
                raise template_error(f"{path}[0]", f"index {raw!r} is not an integer") from None
            items = get_items(ctx)
            if not isinstance(items, list):
                raise template_error(f"{path}[1]", f"Fn::Select needs a list, got {json_type(items)}")
            if not 0 <= index < len(items):
                raise template_error(
                    path, f"index {index} is out of range for a list of {len(items)} elements"
                )
            if items[index] is None:
                raise template_error(path, f"element {index} is null")
            return items[index]

        return select

    def _split(self, args: Any, path: str) -> Compiled:
        if not (isinstance(args, list) and len(args) == 2 and isinstance(args[0], str) and args[0]):
            raise template_error(
                path, "Fn::Split takes [delimiter, string] with a non-empty string delimiter"
            )
        delimiter = args[0]
        get_source = run(self.value(args[1], f"{path}[1]"))
        return lambda ctx: as_string(get_source(ctx), f"{path}[1]", "the string to split").split(delimiter)

    def _find_in_map(self, args: Any, path: str) -> Compiled:
        if not (isinstance(args, list) and len(args) == 3):
            raise template_error(path, "Fn::FindInMap takes [MapName, TopLevelKey, SecondLevelKey]")
        if isinstance(args[0], str) and args[0] not in self.mappings:
            raise template_error(f"{path}[0]", f"mapping '{args[0]}' is not declared in Mappings")
        keys = [run(self.value(arg, f"{path}[{i}]")) for i, arg in enumerate(args)]
        mappings = self.mappings

        def find_in_map(ctx: LineContext) -> Any:
            map_name, top, second = (
                as_string(k(ctx), f"{path}[{i}]", "a map key") for i, k in enumerate(keys)
            )
            table = mappings.get(map_name)
            if table is None:
                raise template_error(f"{path}[0]", f"mapping '{map_name}' is not declared in Mappings")
            if top not in table:
                raise template_error(f"{path}[1]", f"key '{top}' is not in mapping '{map_name}'")
            if second not in table[top]:
                raise template_error(f"{path}[2]", f"key '{second}' is not in mapping '{map_name}'.'{top}'")
            return table[top][second]

        return find_in_map

    def _sub(self, args: Any, path: str) -> Compiled:
        if isinstance(args, str):
            text, variables = args, {}
        elif (
            isinstance(args, list)
            and len(args) == 2
            and isinstance(args[0], str)
            and isinstance(args[1], dict)
        ):
            text, variables = args
        else:
            raise template_error(path, "Fn::Sub takes a string or [string, {variable: value}]")
        local = {k: run(self.value(v, f"{path}[1].{k}")) for k, v in variables.items()}
        parts: list[str | Evaluator] = []
        position = 0
        for match in _SUB_VARIABLE.finditer(text):
            parts.append(text[position : match.start()])
            position = match.end()
            name = match.group(1)
            if name.startswith("!"):
                parts.append("${" + name[1:] + "}")
            elif name in local:
                get = local[name]
                parts.append(lambda ctx, get=get, name=name: as_string(get(ctx), path, f"variable '{name}'"))
            else:
                parts.append(run(self._ref(name, path)))
        parts.append(text[position:])
        if all(isinstance(p, str) for p in parts):
            return Const("".join(parts))  # type: ignore[arg-type]
        return lambda ctx: "".join(p if isinstance(p, str) else p(ctx) for p in parts)

    _INTRINSICS: dict[str, Callable[[ValueCompiler, Any, str], Compiled]] = {
        "Ref": _ref,
        "Fn::Join": _join,
        "Fn::Select": _select,
        "Fn::Split": _split,
        "Fn::FindInMap": _find_in_map,
        "Fn::Sub": _sub,
    }
