"""The app: authentication and media types on every route but /health, CDF's error bodies for everything."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from include.cdf.errors import CdfError
from plugins.cdf_api.auth import CHALLENGE, Authenticator
from plugins.cdf_api.backend import Backend
from plugins.cdf_api.media import HttpError, check_headers, error_response
from plugins.cdf_api.routes import router

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health",)


def create_app(backend: Backend, authenticate: Authenticator, *, root_path: str = "") -> FastAPI:
    """The CDF provisioning API over `backend`; `authenticate` decides who may call it."""
    app = FastAPI(
        title="CDF provisioning API (factory provisioning pipeline)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # the contract is plugins/cdf_api/openapi.yaml
        root_path=root_path,
    )
    app.state.backend = backend

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.scope["path"][len(request.scope.get("root_path", "")) :] or "/"
        if path.rstrip("/") not in OPEN_PATHS and request.scope["path"].rstrip("/") not in OPEN_PATHS:
            try:
                request.state.user = await authenticate(request)
                check_headers(request)
            except HttpError as error:
                headers = CHALLENGE if error.status == 401 else None
                return error_response(error.status, str(error), headers)
        return await call_next(request)

    @app.exception_handler(CdfError)
    async def cdf_error(request: Request, error: CdfError) -> Response:
        return error_response(error.status, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}")
        if error.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}")
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return error_response(400, f"invalid request: {error.errors()[0].get('msg')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        # The traceback goes to the log, never the request body (it can carry a CSR or certificate).
        log.exception("CDF API %s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error ({type(error).__name__}); see the server log")

    app.include_router(router(backend))
    return app
