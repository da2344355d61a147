"""AWS IoT error shapes as exceptions; the wire layer turns them into AWS's exact HTTP error responses."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import botocore.session


@lru_cache(maxsize=1)
def _error_statuses() -> dict[str, int]:
    """HTTP status of every IoT error shape, read from botocore's service model."""
    model = botocore.session.get_session().get_service_model("iot")
    statuses: dict[str, int] = {}
    for name in model.operation_names:
        for shape in model.operation_model(name).error_shapes:
            statuses[shape.name] = shape.metadata.get("error", {}).get("httpStatusCode", 400)
    return statuses


class IotError(Exception):
    """An error AWS IoT would return: its modeled code, HTTP status, message and extra members."""

    def __init__(self, code: str, message: str, *, status: int | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = {k: v for k, v in fields.items() if v is not None}
        # Only errors the IoT model does not define (413, 501, admin 403...) pass their status explicitly.
        self.status = status if status is not None else _error_statuses().get(code, 400)

    def body(self) -> dict[str, Any]:
        return {"message": self.message, **self.fields}


def invalid_request(message: str) -> IotError:
    return IotError("InvalidRequestException", message)


def not_found(message: str) -> IotError:
    return IotError("ResourceNotFoundException", message)


def already_exists(message: str, resource_id: str | None = None, resource_arn: str | None = None) -> IotError:
    return IotError(
        "ResourceAlreadyExistsException", message, resourceId=resource_id, resourceArn=resource_arn
    )


def delete_conflict(message: str) -> IotError:
    return IotError("DeleteConflictException", message)


def limit_exceeded(message: str) -> IotError:
    return IotError("LimitExceededException", message)


def conflict(message: str) -> IotError:
    return IotError("ConflictingResourceUpdateException", message)


def throttled(message: str = "Rate exceeded") -> IotError:
    return IotError("ThrottlingException", message)


def registration_failure(reason: str) -> IotError:
    """The error AWS raises when a resource of a template cannot be registered (aws-iot-facts.md 1.7)."""
    return IotError(
        "ResourceRegistrationFailureException",
        f"Register thing workflow execution terminates due to: {reason}",
    )
