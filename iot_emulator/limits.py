"""Request limits: the largest body and the deepest JSON the emulator accepts, checked before parsing."""

from __future__ import annotations

import itertools
import re
from typing import Any

import orjson

# AWS documents no body limit for the IoT control plane. 1 MiB is twice the largest request an implemented
# operation can validly send (CreatePolicy's 404,600-character policyDocument, JSON-escaped) and keeps one
# request thread's memory bounded. The answer follows IoT's data plane, which models a 413 for it.
MAX_BODY_BYTES = 1024 * 1024
BODY_TOO_LARGE = "RequestEntityTooLargeException"
# AWS documents no nesting limit either; its Java front ends parse with Jackson, whose default
# (StreamReadConstraints.DEFAULT_MAX_DEPTH) is 1000. The deepest input the IoT model defines nests 10.
MAX_JSON_DEPTH = 1000
# Templates are compiled and evaluated recursively (a few Python frames per level), so they get a tighter
# bound well inside Python's recursion limit; AWS's own examples nest fewer than 10 levels.
MAX_TEMPLATE_DEPTH = 100

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1


class BodyTooLarge(Exception):
    """The request body is longer than the limit (``size`` is None when it was chunked)."""

    def __init__(self, size: int | None, limit: int) -> None:
        shown = f"{size} bytes" if size is not None else "more bytes"
        super().__init__(f"The request body is {shown} long; the limit is {limit} bytes.")
        self.size = size
        self.limit = limit


class JsonTooDeep(ValueError):
    """A JSON document nests arrays and objects deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"nests arrays and objects deeper than {limit} levels, the limit")
        self.limit = limit


def json_depth(data: bytes) -> int:
    """Deepest nesting of arrays and objects in ``data``; brackets inside strings do not count.

    Linear and without recursion (the point is to look before a recursive parser does): strings are cut
    out by one regular expression, then the running sum of the remaining brackets is taken in C.
    """
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def nests_deeper_than(data: bytes | str, limit: int) -> bool:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:  # most documents: no scan needed
        return False
    return json_depth(raw) > limit


def parse_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``data`` parsed; JsonTooDeep beyond ``max_depth``, another ValueError when it is not JSON.

    orjson, not the standard library: it has no Python recursion, so the 1000 levels allowed cannot
    overflow the interpreter's stack of a request thread.
    """
    if nests_deeper_than(data, max_depth):
        raise JsonTooDeep(max_depth)
    return orjson.loads(data)
