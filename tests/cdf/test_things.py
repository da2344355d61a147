"""POST /things in every certificate mode, GET, DELETE and PATCH, over HTTP against the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from include.certificate_authority import CertificateAuthority, certificate_id_from_pem
from include.inventory import Inventory
from plugins.cdf_api.standalone import local_factory_ca


def _provision(
    cdf_api, template: str, parameters: dict[str, str], extra: dict | None = None, status: int = 201
) -> dict:
    body: dict[str, Any] = {"provisioningTemplateId": template, "parameters": parameters}
    if extra is not None:
        body["cdfProvisioningParameters"] = extra
    response = cdf_api.call("POST", "/things", body)
    assert response.status_code == status, response.text
    return response.json()


def _certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _key_matches(private_pem: str, certificate_pem: str) -> bool:
    key = serialization.load_pem_private_key(private_pem.encode(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == _certificate(
        certificate_pem
    ).public_key().public_bytes(der, spki)


def _principals(cdf_api, thing: str) -> list[str]:
    return cdf_api.iot.list_thing_principals(thingName=thing)["principals"]


def test_create_device_certificate_honours_cert_info_and_attaches_policies(cdf_api) -> None:
    ca_pem, _ = local_factory_ca(cdf_api.state_dir)
    extra = {
        "caId": certificate_id_from_pem(ca_pem),
        "certInfo": {"commonName": "own-1", "organization": "Example", "country": "DE", "daysExpiry": 30},
    }
    found = _provision(cdf_api, "cdf-own-ca", {"ThingName": "own-1", "SerialNumber": "SN-OWN-1"}, extra)
    certificate = _certificate(found["certificatePem"])
    assert certificate.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
    assert certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example"
    assert certificate.issuer == _certificate(ca_pem).subject
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    assert _key_matches(found["privateKey"], found["certificatePem"])
    assert found["publicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    arns = found["resourceArns"]
    assert arns["thing"].endswith(":thing/own-1") and ":cert/" in arns["certificate"]
    assert arns["policy"].endswith(":policy/FactoryDevicePolicy")  # the policy under its logical name
    attached = {
        p["policyName"] for p in cdf_api.iot.list_attached_policies(target=arns["certificate"])["policies"]
    }
    assert "FactoryDevicePolicy" in attached
    assert any(name.startswith("cdf-telemetry_") for name in attached)  # created from its document
    device = Inventory(cdf_api.settings.inventory_url).device("own-1")
    assert device["status"] == "provisioned" and device["certificate_id"] == certificate_id_from_pem(
        found["certificatePem"]
    )


def test_create_device_certificate_refuses_another_ca_and_unused_inputs(cdf_api) -> None:
    wrong = _provision(cdf_api, "cdf-own-ca", {"ThingName": "own-2"}, {"caId": "f" * 64}, status=400)
    assert "this service signs with the factory CA only" in wrong["error"]
    unused = _provision(cdf_api, "cdf-own-ca", {"ThingName": "own-2"}, {"csr": "x"}, status=400)
    assert unused["error"].startswith("cdfProvisioningParameters.csr: the template's certificate mode")
    country = _provision(
        cdf_api, "cdf-own-ca", {"ThingName": "own-2"}, {"certInfo": {"country": "USA"}}, status=400
    )
    assert "cdfProvisioningParameters.certInfo: country 'USA' must be a two-letter" in country["error"]
    filled = _provision(cdf_api, "cdf-own-ca", {"ThingName": "own-2", "CertificatePem": "x"}, status=400)
    assert "parameters.CertificatePem: is filled by the template's createDeviceCertificate" in filled["error"]
    undeclared = _provision(cdf_api, "cdf-own-ca", {"ThingName": "own-2", "Colour": "red"}, status=400)
    assert "parameters.Colour: template cdf-own-ca declares no such parameter" in undeclared["error"]
    with pytest.raises(Exception, match="ResourceNotFound"):
        cdf_api.iot.describe_thing(thingName="own-2")


def test_create_device_aws_certificate(cdf_api) -> None:
    found = _provision(cdf_api, "cdf-aws-issued", {"ThingName": "aws-1"})
    certificate = _certificate(found["certificatePem"])
    assert "Amazon" in certificate.issuer.rfc4514_string()
    assert _key_matches(found["privateKey"], found["certificatePem"])
    assert found["resourceArns"]["certificate"].endswith(certificate_id_from_pem(found["certificatePem"]))


def _self_signed(common_name: str) -> str:
    """A certificate of a CA that AWS IoT does not know (what RegisterCertificateWithoutCA is for)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca = CertificateAuthority.create_development(common_name=f"{common_name} issuer")
    certificate = ca.issue_device_certificate(key.public_key(), common_name)
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_register_device_certificate_without_ca(cdf_api) -> None:
    pem = _self_signed("noca-1")
    found = _provision(
        cdf_api,
        "cdf-without-ca",
        {"ThingName": "noca-1"},
        {"certificatePem": pem, "certificateStatus": "ACTIVE"},
    )
    assert "privateKey" not in found
    assert found["resourceArns"]["certificate"].endswith(certificate_id_from_pem(pem))
    missing = _provision(
        cdf_api, "cdf-without-ca", {"ThingName": "noca-2"}, {"certificatePem": pem}, status=400
    )
    assert (
        "cdfProvisioningParameters.certificateStatus: registerDeviceCertificateWithoutCA needs it"
        in missing["error"]
    )
    bad = _provision(
        cdf_api,
        "cdf-without-ca",
        {"ThingName": "noca-2"},
        {"certificatePem": "nope", "certificateStatus": "ACTIVE"},
        status=400,
    )
    assert "cdfProvisioningParameters.certificatePem: is not a PEM X.509 certificate" in bad["error"]


@pytest.mark.parametrize(
    ("template", "extra"),
    [
        (
            "cdf-acmpca",
            {"acmpcaCaAlias": "dev", "awsiotCaAlias": "dev", "certInfo": {"country": "US", "daysExpiry": 90}},
        ),
        ("cdf-acmpca-without-ca", {"acmpcaCaAlias": "dev", "certInfo": {"country": "US"}}),
    ],
)
def test_acmpca_keeps_the_key_cdf_dropped(cdf_api, template: str, extra: dict) -> None:
    thing = f"{template}-1"
    found = _provision(cdf_api, template, {"ThingName": thing}, extra)
    assert _key_matches(found["privateKey"], found["certificatePem"])
    certificate_id = found["resourceArns"]["certificate"].rsplit("/", 1)[-1]
    described = cdf_api.iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]
    assert described["status"] == "ACTIVE"
    assert bool(described.get("caCertificateId")) == (template == "cdf-acmpca")


def test_acmpca_with_the_callers_csr_and_the_typo_spelling(cdf_api) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pca-csr-1")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    extra = {"amcpcaCaArn": cdf_api.pca_arn, "awsiotCaArn": cdf_api.pca_ca_arn, "csr": csr}
    found = _provision(cdf_api, "cdf-acmpca", {"ThingName": "pca-csr-1"}, extra)
    assert "privateKey" not in found
    assert (
        _certificate(found["certificatePem"]).public_key().public_numbers()
        == key.public_key().public_numbers()
    )


def test_acmpca_inputs_are_checked_before_anything_is_made(cdf_api) -> None:
    before = len(cdf_api.iot.list_certificates()["certificates"])
    no_ca = _provision(cdf_api, "cdf-acmpca", {"ThingName": "pca-x"}, {"acmpcaCaAlias": "dev"}, status=400)
    assert "acmpca mode REGISTER_WITH_CA needs awsiotCaArn or awsiotCaAlias" in no_ca["error"]
    alias = _provision(
        cdf_api, "cdf-acmpca-without-ca", {"ThingName": "pca-x"}, {"acmpcaCaAlias": "other"}, status=400
    )
    assert "no such alias (set CDF_PCA_OTHER" in alias["error"]
    assert len(cdf_api.iot.list_certificates()["certificates"]) == before


@pytest.mark.parametrize(
    ("model", "parameters"),
    [
        (
            "TH-100",
            {"serial_number": "CAT-TH-1", "MacAddress": "00:11:22:33:44:55", "ThingName": "TH-100-CAT-TH-1"},
        ),
        ("TH-100", {"SerialNumber": "CAT-TH-2", "firmware_version": "1.2.3"}),
    ],
)
def test_a_catalog_product_id_works_too(cdf_api, model: str, parameters: dict[str, str]) -> None:
    found = _provision(cdf_api, model, parameters)
    serial = parameters.get("serial_number") or parameters["SerialNumber"]
    thing = cdf_api.iot.describe_thing(thingName=f"{model}-{serial}")
    assert thing["attributes"]["serialNumber"] == serial
    assert _key_matches(found["privateKey"], found["certificatePem"])
    assert Inventory(cdf_api.settings.inventory_url).device(f"{model}-{serial}")["model"] == model


def test_catalog_products_go_through_the_manifest_contract(cdf_api) -> None:
    bad_mac = _provision(cdf_api, "TH-100", {"serial_number": "CAT-3", "mac_address": "zz"}, status=400)
    assert "(invalid_mac)" in bad_mac["error"]
    renamed = _provision(cdf_api, "TH-100", {"serial_number": "CAT-3", "ThingName": "other"}, status=400)
    assert "names this device 'TH-100-CAT-3'" in renamed["error"]
    unknown = _provision(cdf_api, "TH-100", {"serial_number": "CAT-3", "Colour": "red"}, status=400)
    assert "parameters.Colour: product TH-100's template has no such parameter" in unknown["error"]
    gateway = _provision(cdf_api, "GW-200", {"serial_number": "CAT-GW-1"}, status=400)
    assert "(csr_required)" in gateway["error"]


def test_device_csr_product_signs_the_callers_csr(cdf_api) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    found = _provision(cdf_api, "GW-200", {"serial_number": "CAT-GW-2", "csr": csr})
    assert "privateKey" not in found
    assert (
        _certificate(found["certificatePem"]).public_key().public_numbers()
        == key.public_key().public_numbers()
    )


def test_registration_failure_is_cdfs_400_and_leaves_no_certificate(cdf_api) -> None:
    document = {
        "Parameters": {"ThingName": {"Type": "String"}, "CertificateId": {"Type": "String"}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Ref": "ThingName"}, "ThingTypeName": "NoSuchType"},
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateId": {"Ref": "CertificateId"}, "Status": "ACTIVE"},
            },
        },
        "CDF": {"createDeviceAWSCertificate": True},
    }
    cdf_api.upload_template("broken-type", document)
    before = {c["certificateId"] for c in cdf_api.iot.list_certificates()["certificates"]}
    failed = _provision(cdf_api, "broken-type", {"ThingName": "broken-1"}, status=400)
    assert failed["error"].startswith("REGISTRATION_FAILED: ")
    after = {c["certificateId"] for c in cdf_api.iot.list_certificates()["certificates"]}
    assert after == before  # the AWS-issued certificate made for it was deleted again


def test_two_certificate_modes_in_one_template_are_refused(cdf_api) -> None:
    document = {"Resources": {}, "CDF": {"createDeviceCertificate": True, "createDeviceAWSCertificate": True}}
    cdf_api.upload_template("two-modes", document)
    error = _provision(cdf_api, "two-modes", {}, status=400)["error"]
    assert "sets createDeviceCertificate and createDeviceAWSCertificate; a template has exactly one" in error


def test_get_thing_shows_certificates_policies_and_parent_groups(cdf_api) -> None:
    cdf_api.iot.create_thing_group(
        thingGroupName="plant-a", thingGroupProperties={"attributePayload": {"attributes": {"site": "a"}}}
    )
    cdf_api.iot.create_thing_group(thingGroupName="line-7", parentGroupName="plant-a")
    _provision(cdf_api, "cdf-own-ca", {"ThingName": "get-1", "SerialNumber": "SN-GET-1"})
    cdf_api.iot.add_thing_to_thing_group(thingGroupName="line-7", thingName="get-1")
    response = cdf_api.call("GET", "/things/get-1")
    assert response.status_code == 200
    found = response.json()
    assert found["thingName"] == "get-1" and found["attributes"] == {"serialNumber": "SN-GET-1"}
    (certificate,) = found["certificates"]
    assert certificate["certificateStatus"] == "ACTIVE" and certificate["certificatePem"].startswith(
        "-----BEGIN"
    )
    policies = {p["policyName"]: p for p in found["policies"]}
    assert policies["FactoryDevicePolicy"]["policyDocument"]["Version"] == "2012-10-17"  # parsed
    groups = {g["groupName"]: g for g in found["groups"]}
    assert groups["line-7"]["inherited"] is False and groups["line-7"]["parentGroupName"] == "plant-a"
    assert groups["plant-a"]["inherited"] is True and groups["plant-a"]["attributes"] == {"site": "a"}
    assert groups["factory-provisioned"]["inherited"] is False
    assert cdf_api.call("GET", "/things/absent-1").json() == {"error": "thing absent-1 does not exist"}


def test_thing_type_is_filled(cdf_api) -> None:
    _provision(cdf_api, "TH-100", {"serial_number": "TYPE-1"})
    assert cdf_api.call("GET", "/things/TH-100-TYPE-1").json()["thingType"] == "Thermostat"


def test_patch_sets_every_certificate_and_accepts_in_active(cdf_api) -> None:
    _provision(cdf_api, "cdf-own-ca", {"ThingName": "patch-1"})
    second = cdf_api.iot.create_keys_and_certificate(setAsActive=True)
    cdf_api.iot.attach_thing_principal(thingName="patch-1", principal=second["certificateArn"])

    def statuses() -> set[str]:
        return {c["certificateStatus"] for c in cdf_api.call("GET", "/things/patch-1").json()["certificates"]}

    for sent, stored in (
        ("IN_ACTIVE", "INACTIVE"),
        ("ACTIVE", "ACTIVE"),
        ("INACTIVE", "INACTIVE"),
        ("REVOKED", "REVOKED"),
    ):
        response = cdf_api.call("PATCH", "/things/patch-1/certificates", {"certificateStatus": sent})
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert statuses() == {stored}
    bad = cdf_api.call("PATCH", "/things/patch-1/certificates", {"certificateStatus": "DISABLED"})
    assert (
        bad.status_code == 400
        and "certificateStatus 'DISABLED': must be one of ACTIVE, INACTIVE" in bad.json()["error"]
    )
    final = cdf_api.call("PATCH", "/things/patch-1/certificates", {"certificateStatus": "ACTIVE"})
    assert (
        final.status_code == 400 and "UpdateCertificate" in final.json()["error"]
    )  # REVOKED is final in AWS
    missing = cdf_api.call("PATCH", "/things/patch-1/certificates", {})
    assert missing.status_code == 400 and missing.json()["error"] == "certificateStatus: is required"
    unknown = cdf_api.call("PATCH", "/things/absent-2/certificates", {"certificateStatus": "ACTIVE"})
    assert unknown.status_code == 404


def test_delete_in_the_safe_order_keeps_shared_certificates(cdf_api) -> None:
    found = _provision(cdf_api, "cdf-own-ca", {"ThingName": "del-1"})
    own = found["resourceArns"]["certificate"]
    shared = cdf_api.iot.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    cdf_api.iot.create_thing(thingName="del-other")
    for thing in ("del-1", "del-other"):
        cdf_api.iot.attach_thing_principal(thingName=thing, principal=shared)
    cdf_api.iot.attach_policy(policyName="FactoryDevicePolicy", target=shared)
    response = cdf_api.call("DELETE", "/things/del-1")
    assert response.status_code == 204 and response.content == b""
    with pytest.raises(Exception, match="ResourceNotFound"):
        cdf_api.iot.describe_thing(thingName="del-1")
    with pytest.raises(Exception, match="ResourceNotFound"):
        cdf_api.iot.describe_certificate(certificateId=own.rsplit("/", 1)[-1])
    kept = cdf_api.iot.describe_certificate(certificateId=shared.rsplit("/", 1)[-1])["certificateDescription"]
    assert kept["status"] == "ACTIVE"  # another thing holds it: only detached from this one
    assert _principals(cdf_api, "del-other") == [shared]
    device = Inventory(cdf_api.settings.inventory_url).device("del-1")
    assert (
        device["status"] == "deleted" and device["lifecycle_action"] == "delete"
    )  # as decommissions record it
    assert cdf_api.call("DELETE", "/things/del-1").status_code == 404


def test_delete_retries_eventual_consistency_conflicts(cdf_api, emulator) -> None:
    _provision(cdf_api, "cdf-own-ca", {"ThingName": "del-2"})
    calls = {"n": 0}
    backend = emulator.backend()
    real = backend.delete_thing

    def flaky(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:  # as AWS answers while the detach has not reached every replica
            from iot_emulator.errors import IotError

            raise IotError(
                "InvalidRequestException",
                "Cannot delete. Thing del-2 is still attached to one or more principals",
            )
        return real(**kwargs)

    backend.delete_thing = flaky
    try:
        assert cdf_api.call("DELETE", "/things/del-2").status_code == 204
    finally:
        del backend.delete_thing
    assert calls["n"] == 3
