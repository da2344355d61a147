"""The one module that reaches moto's process-global state: its backends, its WSGI app and its reset.

Everything else receives what it needs from the server, as providers: moto replaces its backend objects on
every reset, so holding one would keep serving a forgotten S3.
"""

from __future__ import annotations

from typing import Any


def s3_backend(account_id: str) -> Any:
    """moto's S3 backend of ``account_id`` (S3 is one backend per partition, not per region)."""
    from moto.s3.models import s3_backends

    return s3_backends[account_id]["aws"]


def sqs_backends(account_id: str) -> Any:
    """moto's SQS backends of ``account_id``, by region (only the regions used so far)."""
    from moto.sqs.models import sqs_backends as backends

    return backends[account_id]


def secretsmanager_backends(account_id: str) -> Any:
    """moto's Secrets Manager backends of ``account_id``, by region."""
    from moto.secretsmanager.models import secretsmanager_backends as backends

    return backends[account_id]


def acmpca_backends(account_id: str) -> Any:
    """moto's ACM PCA backends of ``account_id``, by region."""
    from moto.acmpca.models import acmpca_backends as backends

    return backends[account_id]


def reset_moto() -> None:
    """What moto's POST /moto-api/reset does: every backend and moto's model data."""
    from moto.moto_api._internal.models import moto_api_backend

    moto_api_backend.reset()


def moto_wsgi_app() -> Any:
    """moto's server app: dispatches S3, SQS, Secrets Manager... by SigV4 scope, path and body."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    return DomainDispatcherApplication(create_backend_app)


def moto_request_handler() -> type:
    """moto's werkzeug request handler (it keeps header names with underscores, as S3 metadata needs)."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    return MotoRequestHandler
