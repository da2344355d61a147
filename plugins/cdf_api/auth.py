"""Who may call the API: Airflow's own JWT inside the API server, a development bearer token standalone.

Airflow does not guard plugin routes, so every route but /health passes one of these. Airflow users also
need the auth manager's permission on runs of provision_factory_batch: GET to read, POST to change.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Protocol

from fastapi import Request

from plugins.cdf_api.media import HttpError

PIPELINE_DAG_ID = "provision_factory_batch"
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_token(request: Request) -> str:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HttpError(401, "authentication required: send Authorization: Bearer <token>")
    return token.strip()


class Authenticator(Protocol):
    async def __call__(self, request: Request) -> str:
        """The caller's name, or HttpError 401 (no or bad token) / 403 (not allowed)."""
        ...


class DevelopmentToken:
    """One bearer token, made at start (or CDF_API_TOKEN), for the standalone server on loopback."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)

    def __repr__(self) -> str:
        return "DevelopmentToken(****)"

    async def __call__(self, request: Request) -> str:
        if not hmac.compare_digest(bearer_token(request).encode(), self.token.encode()):
            raise HttpError(401, "the bearer token is not this server's development token")
        return "developer"


class AirflowJwt:
    """The JWT Airflow's /auth/token issues for /api/v2, checked by Airflow's auth manager."""

    async def __call__(self, request: Request) -> str:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
        from jwt import ExpiredSignatureError, InvalidTokenError

        token = bearer_token(request)
        manager = get_auth_manager()
        try:
            user = await manager.get_user_from_token(token)
        except ExpiredSignatureError:
            raise HttpError(401, "the Airflow token has expired: get a new one from /auth/token") from None
        except (InvalidTokenError, ValueError):
            raise HttpError(
                401, "the bearer token is not a valid Airflow token (get one from /auth/token)"
            ) from None
        method = "GET" if request.method == "GET" else "POST" if request.method == "POST" else "PUT"
        if request.method == "DELETE":
            method = "DELETE"
        allowed = manager.is_authorized_dag(
            method=method,
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=PIPELINE_DAG_ID),
            user=user,
        )
        if not allowed:
            raise HttpError(403, f"user {user.get_name()} may not {method} runs of {PIPELINE_DAG_ID}")
        return str(user.get_name())
