"""Input validation from botocore's model, before the service runs: AWS's constraints in AWS's words."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from botocore.model import Shape

from iot_emulator.errors import IotError


def validation_error(problems: list[str]) -> IotError:
    count = len(problems)
    noun = "error" if count == 1 else "errors"
    return IotError("InvalidRequestException", f"{count} validation {noun} detected: " + "; ".join(problems))


# Java's \p{...} classes used by the IoT model, as ranges Python's re accepts inside [...].
_JAVA_CLASSES = {
    r"\p{C}": r"\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ue000-\uf8ff",
    r"\p{Cntrl}": r"\x00-\x1f\x7f",
    r"\p{Graph}": r"\x21-\x7e",
    r"\p{Upper}": "A-Z",
    r"\p{Digit}": "0-9",
    r"\p{L}": r"\w",
    r"\p{N}": r"\w",
    r"\p{Z}": r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000",
}


@lru_cache(maxsize=2048)
def _pattern(pattern: str) -> re.Pattern[str] | None:
    for java, python in _JAVA_CLASSES.items():
        pattern = pattern.replace(java, python)
    try:
        return re.compile(pattern)
    except re.error:  # another Java-only construct: such members are not pattern-checked
        return None


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "long": (int,),
    "boolean": (bool,),
    "float": (int, float),
    "double": (int, float),
    "structure": (dict,),
    "list": (list,),
    "map": (dict,),
    "timestamp": (int, float),
    "blob": (bytes,),
}


def validate(shape: Shape, params: dict[str, Any]) -> None:
    """Raise InvalidRequestException listing every constraint ``params`` breaks, in AWS's words."""
    problems: list[str] = []
    _check_structure(shape, params, "", problems)
    if problems:
        raise validation_error(problems)


def _check_structure(shape: Shape, value: dict[str, Any], prefix: str, problems: list[str]) -> None:
    for name in shape.required_members:
        if value.get(name) is None:
            problems.append(
                f"Value null at '{prefix}{name}' failed to satisfy constraint: Member must not be null"
            )
    for name, member_value in value.items():
        member = shape.members.get(name)
        if member is not None and member_value is not None:
            _check_value(member, member_value, f"{prefix}{name}", problems)


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)
        except RecursionError:  # a body may nest 1000 levels, deeper than json.dumps can recurse here
            text = f"<{type(value).__name__} nested too deeply to show>"
    return text if len(text) <= 256 else text[:256] + "..."


def _check_value(shape: Shape, value: Any, where: str, problems: list[str]) -> None:
    kind = shape.type_name
    expected = _PY_TYPES.get(kind)
    if expected and (not isinstance(value, expected) or (kind != "boolean" and isinstance(value, bool))):
        problems.append(
            f"Value '{_show(value)}' at '{where}' failed to satisfy constraint: Member must be a {kind}"
        )
        return
    meta = shape.metadata
    if kind == "string":
        _check_length(len(value), meta, value, where, problems)
        if shape.enum and value not in shape.enum:
            problems.append(
                f"Value '{_show(value)}' at '{where}' failed to satisfy constraint: "
                f"Member must satisfy enum value set: [{', '.join(shape.enum)}]"
            )
        pattern = meta.get("pattern")
        if pattern:
            compiled = _pattern(pattern)
            if compiled is not None and compiled.fullmatch(value) is None:
                problems.append(
                    f"Value '{_show(value)}' at '{where}' failed to satisfy constraint: "
                    f"Member must satisfy regular expression pattern: {pattern}"
                )
    elif kind in ("integer", "long", "float", "double"):
        if "min" in meta and value < meta["min"]:
            problems.append(
                f"Value '{value}' at '{where}' failed to satisfy constraint: "
                f"Member must have value greater than or equal to {meta['min']}"
            )
        if "max" in meta and value > meta["max"]:
            problems.append(
                f"Value '{value}' at '{where}' failed to satisfy constraint: "
                f"Member must have value less than or equal to {meta['max']}"
            )
    elif kind == "list":
        _check_length(len(value), meta, value, where, problems)
        for index, item in enumerate(value, 1):
            if item is not None:
                _check_value(shape.member, item, f"{where}.{index}.member", problems)
    elif kind == "map":
        _check_length(len(value), meta, value, where, problems)
        for key, item in value.items():
            _check_value(shape.key, key, f"{where}.{key}.key", problems)
            if item is not None:
                _check_value(shape.value, item, f"{where}.{key}.value", problems)
    elif kind == "structure":
        _check_structure(shape, value, f"{where}.", problems)
    elif kind == "blob":
        _check_length(len(value), meta, "<binary>", where, problems)


def _check_length(length: int, meta: dict[str, Any], value: Any, where: str, problems: list[str]) -> None:
    if "min" in meta and length < meta["min"]:
        problems.append(
            f"Value '{_show(value)}' at '{where}' failed to satisfy constraint: "
            f"Member must have length greater than or equal to {meta['min']}"
        )
    if "max" in meta and length > meta["max"]:
        problems.append(
            f"Value '{_show(value)}' at '{where}' failed to satisfy constraint: "
            f"Member must have length less than or equal to {meta['max']}"
        )
