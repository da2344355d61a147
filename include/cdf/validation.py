"""Pydantic validation errors as one sentence naming the field (`parameters.SerialNumber: ...`)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from include.cdf.errors import BadRequest

Model = TypeVar("Model", bound=BaseModel)


def field_path(location: tuple[Any, ...], prefix: str = "") -> str:
    """`certInfo.country`, `parameters[3].ThingName`: dotted names, list positions in brackets."""
    text = prefix
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def sentence(error: ValidationError, prefix: str = "") -> str:
    """The first problem of a ValidationError (and how many more), in CDF's one-string error style."""
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    first = problems[0]
    kind, message = first["type"], first["msg"]
    location = tuple(first["loc"])
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a field of this object"
    elif kind in ("string_type", "str_type"):
        message = "must be a string"
    else:
        message = message.removeprefix("Value error, ")
        message = message[0].lower() + message[1:]
    more = (
        f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        if len(problems) > 1
        else ""
    )
    return f"{field_path(location, prefix)}: {message}{more}"


def parse(model: type[Model], value: Any, prefix: str = "") -> Model:
    """`value` validated as `model`, or BadRequest naming the first wrong field."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise BadRequest(sentence(error, prefix)) from None
