"""CA registration (GetRegistrationCode and Register/Describe/Update/List/DeleteCACertificate).

Also home of the helpers the certificate and registry tests share: a small test CA and the ``iot`` fixture,
which runs each test on the backend in-process and, once the wire layer is there, with boto3 over HTTP.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iot_emulator.errors import IotError
from iot_emulator.faults import Faults
from iot_emulator.service import IotService, in_memory_service
from iot_emulator.state import IotState

NOW = dt.datetime.now(dt.UTC)


class InProcessIot:
    """The service behind a boto3-like facade: same kwargs, same exception classes and error responses."""

    def __init__(self, backend: IotService) -> None:
        self.backend = backend
        self.exceptions = boto3.client(
            "iot", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ).exceptions

    def __getattr__(self, operation: str) -> Any:
        method = getattr(self.backend, operation)

        def call(**kwargs: Any) -> Any:
            try:
                return method(**kwargs)
            except IotError as exc:
                error_class = self.exceptions.from_code(exc.code)
                response = {"Error": {"Code": exc.code, "Message": exc.message}, **exc.fields}
                raise error_class(response, operation) from exc

        return call


@pytest.fixture(params=["in_process", "http"])
def iot(request: pytest.FixtureRequest) -> Any:
    if request.param == "in_process":
        return InProcessIot(in_memory_service())
    return request.getfixturevalue("iot_client")


def json_round_trip(service: IotService) -> IotService:
    """A new service on the state saved as JSON and loaded back, as a restart does."""
    document = json.loads(json.dumps(service.state.to_document()))
    return IotService(IotState.from_document(document), s3=service.s3, faults=Faults())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def epoch(value: Any) -> float:
    """Timestamps come back as floats in-process and as datetimes through boto3."""
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(
    cn: str | None = None, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[Any, x509.Certificate]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn or unique("Factory CA"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: Any,
    ca_cert: x509.Certificate,
    cn: str | None = None,
    not_after: dt.datetime | None = None,
    key: Any = None,
) -> x509.Certificate:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn or unique("device")))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=2))
        .not_valid_after(not_after or NOW + dt.timedelta(days=365))
        .sign(ca_key, hashes.SHA256())
    )


def register_ca(iot: Any, active: bool = True, **kwargs: Any) -> tuple[Any, x509.Certificate, str]:
    """A fresh CA registered with a valid verification certificate; returns (key, cert, caCertificateId)."""
    key, cert = make_ca()
    code = iot.get_registration_code()["registrationCode"]
    result = iot.register_ca_certificate(
        caCertificate=pem(cert),
        verificationCertificate=pem(issue(key, cert, cn=code)),
        setAsActive=active,
        **kwargs,
    )
    return key, cert, result["certificateId"]


def certificate_id(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


# ---- GetRegistrationCode ----


def test_registration_code_is_stable_64_hex(iot: Any) -> None:
    first = iot.get_registration_code()["registrationCode"]
    assert len(first) == 64 and int(first, 16) >= 0
    assert iot.get_registration_code()["registrationCode"] == first


# ---- RegisterCACertificate ----


def test_register_ca_returns_sha256_id_and_arn_and_starts_inactive(iot: Any) -> None:
    key, cert = make_ca()
    code = iot.get_registration_code()["registrationCode"]
    result = iot.register_ca_certificate(
        caCertificate=pem(cert), verificationCertificate=pem(issue(key, cert, cn=code))
    )
    assert result["certificateId"] == certificate_id(cert)
    assert result["certificateArn"] == f"arn:aws:iot:us-east-1:123456789012:cacert/{certificate_id(cert)}"
    description = iot.describe_ca_certificate(certificateId=result["certificateId"])["certificateDescription"]
    assert description["status"] == "INACTIVE"
    assert description["autoRegistrationStatus"] == "DISABLE"
    assert description["certificateMode"] == "DEFAULT"
    assert description["ownedBy"] == "123456789012"
    assert description["certificatePem"] == pem(cert)
    assert description["customerVersion"] == 1 and description["generationId"]
    assert epoch(description["validity"]["notAfter"]) == pytest.approx(cert.not_valid_after_utc.timestamp())


def test_register_ca_with_flags_config_and_tags(iot: Any) -> None:
    config = {"templateBody": '{"Resources": {}}', "roleArn": "arn:aws:iam::123456789012:role/jitp"}
    _, _, ca_id = register_ca(
        iot, allowAutoRegistration=True, registrationConfig=config, tags=[{"Key": "line", "Value": "A"}]
    )
    result = iot.describe_ca_certificate(certificateId=ca_id)
    assert result["certificateDescription"]["status"] == "ACTIVE"
    assert result["certificateDescription"]["autoRegistrationStatus"] == "ENABLE"
    assert result["registrationConfig"] == config


def test_register_ca_rejects_verification_cert_with_wrong_code(iot: Any) -> None:
    key, cert = make_ca()
    with pytest.raises(iot.exceptions.RegistrationCodeValidationException) as info:
        iot.register_ca_certificate(
            caCertificate=pem(cert), verificationCertificate=pem(issue(key, cert, cn="0" * 64))
        )
    assert info.value.response["Error"]["Code"] == "RegistrationCodeValidationException"


def test_register_ca_rejects_verification_cert_signed_by_another_key(iot: Any) -> None:
    _, cert = make_ca()
    other_key, _ = make_ca()
    code = iot.get_registration_code()["registrationCode"]
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_ca_certificate(
            caCertificate=pem(cert), verificationCertificate=pem(issue(other_key, cert, cn=code))
        )


def test_register_ca_rejects_garbage_and_non_ca_certificates(iot: Any) -> None:
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_ca_certificate(caCertificate="not a pem", certificateMode="SNI_ONLY")
    key, cert = make_ca()
    leaf = issue(key, cert)  # no basicConstraints CA=true
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_ca_certificate(caCertificate=pem(leaf), certificateMode="SNI_ONLY")


def test_register_ca_default_mode_needs_verification_and_sni_only_refuses_it(iot: Any) -> None:
    key, cert = make_ca()
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.register_ca_certificate(caCertificate=pem(cert))
    code = iot.get_registration_code()["registrationCode"]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.register_ca_certificate(
            caCertificate=pem(cert),
            verificationCertificate=pem(issue(key, cert, cn=code)),
            certificateMode="SNI_ONLY",
        )
    result = iot.register_ca_certificate(caCertificate=pem(cert), certificateMode="SNI_ONLY")
    description = iot.describe_ca_certificate(certificateId=result["certificateId"])["certificateDescription"]
    assert description["certificateMode"] == "SNI_ONLY"


def test_register_ca_twice_is_resource_already_exists_with_id_and_arn(iot: Any) -> None:
    key, cert, ca_id = register_ca(iot)
    code = iot.get_registration_code()["registrationCode"]
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as info:
        iot.register_ca_certificate(
            caCertificate=pem(cert), verificationCertificate=pem(issue(key, cert, cn=code))
        )
    assert info.value.response["resourceId"] == ca_id
    assert info.value.response["resourceArn"].endswith(f":cacert/{ca_id}")


def test_at_most_ten_cas_share_a_subject(iot: Any) -> None:
    subject = unique("Shared CA")
    for _ in range(10):
        _, cert = make_ca(cn=subject)
        iot.register_ca_certificate(caCertificate=pem(cert), certificateMode="SNI_ONLY")
    _, cert = make_ca(cn=subject)
    with pytest.raises(iot.exceptions.LimitExceededException):
        iot.register_ca_certificate(caCertificate=pem(cert), certificateMode="SNI_ONLY")


# ---- Describe / Update / List / Delete ----


def test_describe_unknown_ca_is_not_found(iot: Any) -> None:
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_ca_certificate(certificateId="ab" * 32)


def test_update_ca_status_auto_registration_and_config(iot: Any) -> None:
    _, _, ca_id = register_ca(iot, active=False)
    config = {"templateBody": '{"Resources": {}}', "roleArn": "arn:aws:iam::123456789012:role/jitp"}
    iot.update_ca_certificate(
        certificateId=ca_id, newStatus="ACTIVE", newAutoRegistrationStatus="ENABLE", registrationConfig=config
    )
    result = iot.describe_ca_certificate(certificateId=ca_id)
    assert result["certificateDescription"]["status"] == "ACTIVE"
    assert result["certificateDescription"]["autoRegistrationStatus"] == "ENABLE"
    assert result["certificateDescription"]["customerVersion"] == 2
    assert result["registrationConfig"] == config
    iot.update_ca_certificate(certificateId=ca_id, removeAutoRegistration=True)
    assert "registrationConfig" not in iot.describe_ca_certificate(certificateId=ca_id)


def test_update_unknown_ca_is_not_found(iot: Any) -> None:
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_ca_certificate(certificateId="cd" * 32, newStatus="ACTIVE")


def test_list_ca_certificates_pages_with_markers_in_both_orders(iot: Any) -> None:
    ids = [register_ca(iot)[2] for _ in range(3)]
    seen: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"pageSize": 2, "ascendingOrder": True}
    while True:
        page = iot.list_ca_certificates(**kwargs)
        assert len(page["certificates"]) <= 2
        seen.extend(page["certificates"])
        if "nextMarker" not in page:
            break
        kwargs["marker"] = page["nextMarker"]
    listed = [c["certificateId"] for c in seen]
    assert [i for i in listed if i in ids] == ids  # ascending = creation order
    assert set(seen[0]) == {"certificateArn", "certificateId", "status", "creationDate"}
    newest_first = iot.list_ca_certificates(pageSize=250)["certificates"]
    assert [c["certificateId"] for c in newest_first if c["certificateId"] in ids] == ids[::-1]


JITP_BODY = json.dumps(
    {
        "Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}},
        "Resources": {
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"},
            }
        },
    }
)


def test_register_ca_with_unknown_template_name_is_not_found(iot: Any) -> None:
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        register_ca(iot, registrationConfig={"templateName": unique("missing")})


def test_list_ca_certificates_filters_by_template_name(iot: Any) -> None:
    name = unique("jitp")
    iot.create_provisioning_template(
        templateName=name,
        templateBody=JITP_BODY,
        provisioningRoleArn="arn:aws:iam::123456789012:role/jitp",
        type="JITP",
    )
    _, _, ca_id = register_ca(iot, registrationConfig={"templateName": name})
    listed = iot.list_ca_certificates(templateName=name, pageSize=250)["certificates"]
    assert [c["certificateId"] for c in listed] == [ca_id]


def test_delete_ca_refused_while_active_then_allowed(iot: Any) -> None:
    _, _, ca_id = register_ca(iot)
    with pytest.raises(iot.exceptions.CertificateStateException):
        iot.delete_ca_certificate(certificateId=ca_id)
    iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    iot.delete_ca_certificate(certificateId=ca_id)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_ca_certificate(certificateId=ca_id)


def test_delete_ca_refused_while_device_certificates_reference_it(iot: Any) -> None:
    key, cert, ca_id = register_ca(iot)
    device = iot.register_certificate(certificatePem=pem(issue(key, cert)))
    iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    with pytest.raises(iot.exceptions.CertificateStateException):
        iot.delete_ca_certificate(certificateId=ca_id)
    iot.delete_certificate(certificateId=device["certificateId"])
    iot.delete_ca_certificate(certificateId=ca_id)
