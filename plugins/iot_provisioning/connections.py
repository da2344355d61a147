"""What pipeline tasks take from Airflow: AWS clients from the connection, the factory CA from a secret."""

from __future__ import annotations

import json
from typing import Any

AWS_CONN_ID = "aws_default"
FACTORY_CA_CONN_ID = "factory_ca"
REGISTRATION_POOL = "iot_bulk_registration"


def aws_clients(aws_conn_id: str | None = AWS_CONN_ID) -> tuple[Any, Any]:
    """boto3 S3 and IoT clients built from the Airflow AWS connection (its endpoint_url decides where)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from plugins.iot_provisioning.hooks import IotHook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn(), IotHook(aws_conn_id=aws_conn_id).conn


def acm_pca_client(aws_conn_id: str | None = AWS_CONN_ID) -> Any:
    """The ACM Private CA client of the Airflow AWS connection, with botocore's standard retries."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 10})
    return AwsBaseHook(aws_conn_id=aws_conn_id, client_type="acm-pca", config=config).conn


def ca_from_connection(
    password: str | None, extra: str | dict[str, Any] | None, conn_id: str
) -> tuple[str, str]:
    """(certificate PEM, private key PEM) from the connection's password and extra.certificate_pem."""
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError:
            raise ValueError(f"connection {conn_id!r}: extra is not valid JSON") from None
    certificate = (extra or {}).get("certificate_pem") or ""
    problems = []
    if "BEGIN CERTIFICATE" not in certificate:
        problems.append("extra.certificate_pem must hold the CA certificate PEM")
    # Checked by marker only: the key's text must never reach a message.
    if not password or "PRIVATE KEY" not in password:
        problems.append("password must hold the CA private key PEM")
    if problems:
        raise ValueError(f"connection {conn_id!r} is not a usable factory CA: " + "; ".join(problems))
    return certificate, password


def factory_ca_pems(conn_id: str = FACTORY_CA_CONN_ID) -> tuple[str, str]:
    """The factory CA (certificate PEM, private key PEM) from an Airflow connection or secrets backend."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    return ca_from_connection(connection.password, connection.extra, conn_id)


def factory_ca_certificate(conn_id: str = FACTORY_CA_CONN_ID) -> str:
    """Only the CA certificate PEM (pre-flight checks it is registered and ACTIVE)."""
    return factory_ca_pems(conn_id)[0]
