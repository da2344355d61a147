"""Contract tests over HTTP: provisioning templates and versions, provisioning claims and RegisterThing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.iot_emulator.test_template_engine import FactoryCa, csr_pem

ROLE = "arn:aws:iam::123456789012:role/provisioning"
BODY = json.dumps(
    {
        "Parameters": {"SerialNumber": {"Type": "String"}, "CSR": {"Type": "String"}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Fn::Join": ["-", ["dev", {"Ref": "SerialNumber"}]]}},
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"},
            },
        },
    }
)


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


@pytest.fixture
def template_name(iot_client: Any) -> str:
    name = f"tpl-{uuid.uuid4().hex[:12]}"
    iot_client.create_provisioning_template(
        templateName=name, templateBody=BODY, provisioningRoleArn=ROLE, enabled=True, description="first"
    )
    return name


# ---------------------------------------------------------------- templates


def test_create_describe_list_update_delete_template(iot_client: Any) -> None:
    name = f"tpl-{uuid.uuid4().hex[:12]}"
    hook = {
        "targetArn": "arn:aws:lambda:us-east-1:123456789012:function:check",
        "payloadVersion": "2020-04-01",
    }
    created = iot_client.create_provisioning_template(
        templateName=name,
        templateBody=BODY,
        provisioningRoleArn=ROLE,
        preProvisioningHook=hook,
        tags=[{"Key": "team", "Value": "factory"}],
    )
    assert created["templateArn"] == f"arn:aws:iot:us-east-1:123456789012:provisioningtemplate/{name}"
    assert created["defaultVersionId"] == 1

    described = iot_client.describe_provisioning_template(templateName=name)
    assert described["templateBody"] == BODY
    assert described["type"] == "FLEET_PROVISIONING"
    assert described["enabled"] is False
    assert described["preProvisioningHook"] == hook
    assert isinstance(described["creationDate"], dt.datetime)

    iot_client.update_provisioning_template(templateName=name, enabled=True, removePreProvisioningHook=True)
    described = iot_client.describe_provisioning_template(templateName=name)
    assert described["enabled"] is True and "preProvisioningHook" not in described

    listed = [t["templateName"] for t in iot_client.list_provisioning_templates()["templates"]]
    assert name in listed

    iot_client.delete_provisioning_template(templateName=name)
    with pytest.raises(ClientError) as exc:
        iot_client.describe_provisioning_template(templateName=name)
    assert error_code(exc) == "ResourceNotFoundException"


def test_template_errors(iot_client: Any, template_name: str) -> None:
    with pytest.raises(iot_client.exceptions.ResourceAlreadyExistsException) as exists:
        iot_client.create_provisioning_template(
            templateName=template_name, templateBody=BODY, provisioningRoleArn=ROLE
        )
    assert exists.value.response["resourceId"] == template_name

    bad = json.dumps(
        {"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "N"}}}}}
    )
    with pytest.raises(iot_client.exceptions.InvalidRequestException) as invalid:
        iot_client.create_provisioning_template(
            templateName="tpl-bad", templateBody=bad, provisioningRoleArn=ROLE
        )
    assert "Resources.thing.Properties.ThingName: Ref 'N' is not a declared parameter" in str(invalid.value)

    hook = {"targetArn": "arn:aws:lambda:us-east-1:123456789012:function:check"}
    with pytest.raises(iot_client.exceptions.InvalidRequestException):
        iot_client.create_provisioning_template(
            templateName="tpl-jitp",
            templateBody=BODY,
            provisioningRoleArn=ROLE,
            type="JITP",
            preProvisioningHook=hook,
        )


def test_list_templates_paginates(iot_client: Any) -> None:
    prefix = uuid.uuid4().hex[:8]
    names = {f"page-{prefix}-{i}" for i in range(5)}
    for name in names:
        iot_client.create_provisioning_template(
            templateName=name, templateBody=BODY, provisioningRoleArn=ROLE
        )
    pages = list(
        iot_client.get_paginator("list_provisioning_templates").paginate(PaginationConfig={"PageSize": 2})
    )
    assert len(pages) >= 3
    seen = [t["templateName"] for page in pages for t in page["templates"]]
    assert names <= set(seen) and len(seen) == len(set(seen))
    for name in names:
        iot_client.delete_provisioning_template(templateName=name)


# ---------------------------------------------------------------- versions


def test_versions_default_limit_and_delete(iot_client: Any, template_name: str) -> None:
    v2 = iot_client.create_provisioning_template_version(templateName=template_name, templateBody=BODY)
    assert (v2["versionId"], v2["isDefaultVersion"]) == (2, False)
    v3 = iot_client.create_provisioning_template_version(
        templateName=template_name, templateBody=BODY, setAsDefault=True
    )
    assert (v3["versionId"], v3["isDefaultVersion"]) == (3, True)
    assert iot_client.describe_provisioning_template(templateName=template_name)["defaultVersionId"] == 3
    version = iot_client.describe_provisioning_template_version(templateName=template_name, versionId=1)
    assert version["isDefaultVersion"] is False and version["templateBody"] == BODY

    iot_client.create_provisioning_template_version(templateName=template_name, templateBody=BODY)
    iot_client.create_provisioning_template_version(templateName=template_name, templateBody=BODY)
    with pytest.raises(iot_client.exceptions.VersionsLimitExceededException):
        iot_client.create_provisioning_template_version(templateName=template_name, templateBody=BODY)

    with pytest.raises(iot_client.exceptions.DeleteConflictException):
        iot_client.delete_provisioning_template_version(templateName=template_name, versionId=3)
    iot_client.delete_provisioning_template_version(templateName=template_name, versionId=1)
    versions = iot_client.list_provisioning_template_versions(templateName=template_name)["versions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in versions] == [
        (2, False),
        (3, True),
        (4, False),
        (5, False),
    ]
    page = iot_client.list_provisioning_template_versions(templateName=template_name, maxResults=3)
    assert len(page["versions"]) == 3 and page["nextToken"]

    iot_client.update_provisioning_template(templateName=template_name, defaultVersionId=5)
    assert iot_client.describe_provisioning_template(templateName=template_name)["defaultVersionId"] == 5
    with pytest.raises(iot_client.exceptions.ResourceNotFoundException):
        iot_client.update_provisioning_template(templateName=template_name, defaultVersionId=1)
    with pytest.raises(iot_client.exceptions.ResourceNotFoundException):
        iot_client.describe_provisioning_template_version(templateName=template_name, versionId=1)


# ---------------------------------------------------------------- claims


def test_provisioning_claim_expires_in_five_minutes(iot_client: Any, template_name: str) -> None:
    before = time.time()
    claim = iot_client.create_provisioning_claim(templateName=template_name)
    expiration = claim["expiration"].timestamp()
    assert before + 299 <= expiration <= time.time() + 301
    cert = x509.load_pem_x509_certificate(claim["certificatePem"].encode())
    assert cert.not_valid_after_utc.timestamp() == expiration
    assert "OU=Amazon IoT Provisioning" in cert.issuer.rfc4514_string()
    der = cert.public_bytes(serialization.Encoding.DER)
    assert claim["certificateId"] == hashlib.sha256(der).hexdigest()
    assert claim["keyPair"]["PrivateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert claim["keyPair"]["PublicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    key = serialization.load_pem_private_key(claim["keyPair"]["PrivateKey"].encode(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    # A claim certificate is not one of the account's certificates.
    listed = {c["certificateId"] for c in iot_client.list_certificates()["certificates"]}
    assert claim["certificateId"] not in listed

    with pytest.raises(iot_client.exceptions.ResourceNotFoundException):
        iot_client.create_provisioning_claim(templateName="no-such-template")


# ---------------------------------------------------------------- RegisterThing


def test_register_thing_with_csr(iot_client: Any) -> None:
    serial = uuid.uuid4().hex[:10]
    result = iot_client.register_thing(
        templateBody=BODY, parameters={"SerialNumber": serial, "CSR": csr_pem()}
    )
    assert set(result["resourceArns"]) == {"thing", "certificate"}
    assert result["resourceArns"]["thing"] == f"arn:aws:iot:us-east-1:123456789012:thing/dev-{serial}"
    assert result["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    principals = iot_client.list_thing_principals(thingName=f"dev-{serial}")["principals"]
    assert principals == [result["resourceArns"]["certificate"]]


def test_register_thing_with_own_ca_certificate_and_pseudo_parameters(iot_client: Any) -> None:
    ca = FactoryCa(f"Provisioning CA {uuid.uuid4().hex[:6]}")
    code = iot_client.get_registration_code()["registrationCode"]
    iot_client.register_ca_certificate(
        caCertificate=ca.pem, verificationCertificate=ca.verification_pem(code), setAsActive=True
    )
    serial = uuid.uuid4().hex[:10]
    body = json.dumps(
        {
            "Parameters": {"Pem": {"Type": "String"}},
            "Resources": {
                "thing": {
                    "Type": "AWS::IoT::Thing",
                    "Properties": {
                        "ThingName": {"Fn::Sub": "thermo-${AWS::IoT::Certificate::SerialNumber}"},
                        "AttributePayload": {"cn": {"Ref": "AWS::IoT::Certificate::CommonName"}},
                    },
                },
                "certificate": {
                    "Type": "AWS::IoT::Certificate",
                    "Properties": {"CertificatePem": {"Ref": "Pem"}, "CACertificatePem": ca.pem},
                },
            },
        }
    )
    pem = ca.issue("sensor", serial=serial)
    result = iot_client.register_thing(templateBody=body, parameters={"Pem": pem})
    thing = iot_client.describe_thing(thingName=f"thermo-{serial}")
    assert thing["attributes"] == {"cn": "sensor"}
    assert result["certificatePem"] == pem


def test_register_thing_errors(iot_client: Any) -> None:
    with pytest.raises(iot_client.exceptions.InvalidRequestException) as missing:
        iot_client.register_thing(templateBody=BODY, parameters={"CSR": csr_pem()})
    assert "parameter 'SerialNumber' has no value in the input and no Default" in str(missing.value)

    typed = json.dumps(
        {
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t", "ThingTypeName": "x1"}}
            }
        }
    )
    with pytest.raises(iot_client.exceptions.ResourceRegistrationFailureException) as failed:
        iot_client.register_thing(templateBody=typed)
    assert failed.value.response["Error"]["Message"] == (
        "Register thing workflow execution terminates due to: Thing Type 123456789012:x1 not found."
    )
