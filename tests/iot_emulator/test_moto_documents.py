"""Secrets Manager secrets and ACM private CAs survive an emulator restart (JSON under --state-dir)."""

from __future__ import annotations

import boto3
from cryptography import x509

from iot_emulator.moto_backends import reset_moto
from iot_emulator.server import EmulatorServer


def _client(server: EmulatorServer, service: str):
    return boto3.client(
        service,
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_secrets_and_private_cas_survive_a_restart(fresh_emulator, tmp_path):
    from scripts.bootstrap import _create_root_pca, _csr, _pca_issue

    first = EmulatorServer("127.0.0.1", 0, state_dir=tmp_path / "state").start()
    try:
        secrets, pca = _client(first, "secretsmanager"), _client(first, "acm-pca")
        secrets.create_secret(Name="airflow/connections/factory_ca", SecretString='{"password": "v1"}')
        secrets.put_secret_value(SecretId="airflow/connections/factory_ca", SecretString='{"password": "v2"}')
        arn = _create_root_pca(pca)
        issued = _pca_issue(pca, arn, _csr("device-1"), None, days=30)
        ca_pem = pca.get_certificate_authority_certificate(CertificateAuthorityArn=arn)["Certificate"]
    finally:
        first.stop()
    reset_moto()  # moto's state is per process: forget it, so that only the state dir's files bring it back
    second = EmulatorServer("127.0.0.1", 0, state_dir=tmp_path / "state").start()
    try:
        secrets, pca = _client(second, "secretsmanager"), _client(second, "acm-pca")
        value = secrets.get_secret_value(SecretId="airflow/connections/factory_ca")["SecretString"]
        assert value == '{"password": "v2"}'
        assert (
            pca.describe_certificate_authority(CertificateAuthorityArn=arn)["CertificateAuthority"]["Status"]
            == "ACTIVE"
        )
        assert pca.get_certificate_authority_certificate(CertificateAuthorityArn=arn)["Certificate"] == ca_pem
        # The restored CA still signs, with the same key.
        again = _pca_issue(pca, arn, _csr("device-2"), None, days=30)
        authority = x509.load_pem_x509_certificate(ca_pem.encode())
        for pem in (issued, again):
            x509.load_pem_x509_certificate(pem.encode()).verify_directly_issued_by(authority)
    finally:
        second.stop()
