"""The factory CA connection: password = key PEM, extra.certificate_pem; errors never echo the key."""

from __future__ import annotations

import json

import pytest

from plugins.iot_provisioning.connections import ca_from_connection, factory_ca_pems
from tests.dags.airflow_support import development_ca, factory_ca_connection

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n"


def test_reads_key_from_password_and_certificate_from_extra():
    assert ca_from_connection(KEY, json.dumps({"certificate_pem": CERT}), "factory_ca") == (CERT, KEY)
    assert ca_from_connection(KEY, {"certificate_pem": CERT}, "factory_ca") == (CERT, KEY)


def test_problems_are_listed_without_the_key():
    with pytest.raises(ValueError) as error:
        ca_from_connection("SECRETSECRET not a pem", "{}", "factory_ca")
    message = str(error.value)
    assert "certificate_pem" in message and "password must hold" in message
    assert "SECRET" not in message


def test_from_an_airflow_connection_env_var(monkeypatch):
    certificate_pem, key_pem = development_ca()
    monkeypatch.setenv("AIRFLOW_CONN_FACTORY_CA", factory_ca_connection(certificate_pem, key_pem))
    assert factory_ca_pems() == (certificate_pem, key_pem)
