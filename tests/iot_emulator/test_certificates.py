"""Device certificates: own CA, no CA, from a CSR, keys and certificate; describe, status, list, delete."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from iot_emulator.service import in_memory_service
from tests.iot_emulator import test_ca
from tests.iot_emulator.test_ca import (
    NOW,
    certificate_id,
    epoch,
    issue,
    json_round_trip,
    make_ca,
    pem,
    register_ca,
    unique,
)

iot = test_ca.iot  # the fixture: each test runs in-process and over HTTP

POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}'
)


def csr_pem(key: Any = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique("device"))]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# ---- RegisterCertificate ----


def test_register_certificate_from_registered_ca(iot: Any) -> None:
    key, ca, ca_id = register_ca(iot)
    device = issue(key, ca)
    result = iot.register_certificate(certificatePem=pem(device), setAsActive=True)
    assert result["certificateId"] == certificate_id(device)
    assert result["certificateArn"] == f"arn:aws:iot:us-east-1:123456789012:cert/{certificate_id(device)}"
    description = iot.describe_certificate(certificateId=result["certificateId"])["certificateDescription"]
    assert description["status"] == "ACTIVE"
    assert description["caCertificateId"] == ca_id
    assert description["ownedBy"] == "123456789012"
    assert description["certificateMode"] == "DEFAULT"
    assert description["certificatePem"] == pem(device)
    assert description["customerVersion"] == 1 and description["generationId"]
    assert epoch(description["creationDate"]) > 0
    assert epoch(description["validity"]["notAfter"]) == pytest.approx(device.not_valid_after_utc.timestamp())


def test_register_certificate_status_defaults_to_inactive_and_status_member_wins(iot: Any) -> None:
    key, ca, _ = register_ca(iot)
    first = iot.register_certificate(certificatePem=pem(issue(key, ca)))
    second = iot.register_certificate(certificatePem=pem(issue(key, ca)), status="PENDING_ACTIVATION")
    assert iot.describe_certificate(certificateId=first["certificateId"])["certificateDescription"][
        "status"
    ] == ("INACTIVE")
    assert iot.describe_certificate(certificateId=second["certificateId"])["certificateDescription"][
        "status"
    ] == ("PENDING_ACTIVATION")


def test_register_certificate_with_ca_pem_picks_that_ca(iot: Any) -> None:
    key, ca, ca_id = register_ca(iot)
    result = iot.register_certificate(
        certificatePem=pem(issue(key, ca)), caCertificatePem=pem(ca), status="ACTIVE"
    )
    assert iot.describe_certificate(certificateId=result["certificateId"])["certificateDescription"][
        "caCertificateId"
    ] == (ca_id)


def test_register_certificate_of_unknown_ca_is_certificate_validation(iot: Any) -> None:
    key, ca = make_ca()
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_certificate(certificatePem=pem(issue(key, ca)))
    _, _, _ = register_ca(iot)
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_certificate(certificatePem=pem(issue(key, ca)), caCertificatePem=pem(ca))


def test_register_certificate_with_forged_signature_is_certificate_validation(iot: Any) -> None:
    _, ca, _ = register_ca(iot)
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    forged = issue(impostor_key, ca)  # names the registered CA as issuer, signed by another key
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_certificate(certificatePem=pem(forged))


def test_register_certificate_of_inactive_ca_is_certificate_state(iot: Any) -> None:
    key, ca, _ = register_ca(iot, active=False)
    with pytest.raises(iot.exceptions.CertificateStateException):
        iot.register_certificate(certificatePem=pem(issue(key, ca)), setAsActive=True)


def test_register_certificate_twice_is_already_exists_with_id_and_arn(iot: Any) -> None:
    key, ca, _ = register_ca(iot)
    device = pem(issue(key, ca))
    first = iot.register_certificate(certificatePem=device)
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as info:
        iot.register_certificate(certificatePem=device)
    assert info.value.response["resourceId"] == first["certificateId"]
    assert info.value.response["resourceArn"] == first["certificateArn"]


def test_register_certificate_rejects_garbage_and_expired(iot: Any) -> None:
    key, ca, _ = register_ca(iot)
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_certificate(
            certificatePem="-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
        )
    expired = issue(key, ca, not_after=NOW - dt.timedelta(days=1))
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_certificate(certificatePem=pem(expired))


def test_register_certificate_rejects_pending_transfer_status(iot: Any) -> None:
    key, ca, _ = register_ca(iot)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.register_certificate(certificatePem=pem(issue(key, ca)), status="PENDING_TRANSFER")


def test_cas_sharing_subject_and_key_need_the_ca_pem(iot: Any) -> None:
    shared_key = ec.generate_private_key(ec.SECP256R1())
    subject = unique("Twin CA")
    _, first = make_ca(cn=subject, key=shared_key)
    _, second = make_ca(cn=subject, key=shared_key)
    code = iot.get_registration_code()["registrationCode"]
    for ca in (first, second):
        iot.register_ca_certificate(
            caCertificate=pem(ca),
            verificationCertificate=pem(issue(shared_key, ca, cn=code)),
            setAsActive=True,
        )
    device = issue(shared_key, first)
    with pytest.raises(iot.exceptions.CertificateConflictException):
        iot.register_certificate(certificatePem=pem(device))
    result = iot.register_certificate(certificatePem=pem(device), caCertificatePem=pem(second))
    description = iot.describe_certificate(certificateId=result["certificateId"])["certificateDescription"]
    assert description["caCertificateId"] == certificate_id(second)


def test_cas_sharing_subject_with_different_keys_are_told_apart_by_signature(iot: Any) -> None:
    subject = unique("Sibling CA")
    key_a, ca_a = make_ca(cn=subject)
    key_b, ca_b = make_ca(cn=subject)
    code = iot.get_registration_code()["registrationCode"]
    ids = []
    for key, ca in ((key_a, ca_a), (key_b, ca_b)):
        ids.append(
            iot.register_ca_certificate(
                caCertificate=pem(ca), verificationCertificate=pem(issue(key, ca, cn=code)), setAsActive=True
            )["certificateId"]
        )
    result = iot.register_certificate(certificatePem=pem(issue(key_b, ca_b)))
    assert (
        iot.describe_certificate(certificateId=result["certificateId"])["certificateDescription"][
            "caCertificateId"
        ]
        == (ids[1])
    )


# ---- RegisterCertificateWithoutCA ----


def test_register_certificate_without_ca_is_sni_only_with_no_ca_id(iot: Any) -> None:
    key, ca = make_ca()  # never registered
    device = issue(key, ca)
    result = iot.register_certificate_without_ca(certificatePem=pem(device), status="ACTIVE")
    description = iot.describe_certificate(certificateId=result["certificateId"])["certificateDescription"]
    assert description["certificateMode"] == "SNI_ONLY"
    assert description["status"] == "ACTIVE"
    assert "caCertificateId" not in description
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.register_certificate_without_ca(certificatePem=pem(device))
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_certificate_without_ca(certificatePem="garbage")


# ---- CreateCertificateFromCsr / CreateKeysAndCertificate ----


def test_create_certificate_from_csr_issues_for_the_csr_key(iot: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    result = iot.create_certificate_from_csr(certificateSigningRequest=csr_pem(key), setAsActive=True)
    cert = x509.load_pem_x509_certificate(result["certificatePem"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert result["certificateId"] == certificate_id(cert)
    assert cert.subject.rfc4514_string() == "CN=AWS IoT Certificate"
    assert cert.not_valid_after_utc == dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    description = iot.describe_certificate(certificateId=result["certificateId"])["certificateDescription"]
    assert description["status"] == "ACTIVE"
    assert "caCertificateId" not in description


def test_same_csr_twice_gives_two_certificates(iot: Any) -> None:
    csr = csr_pem()
    first = iot.create_certificate_from_csr(certificateSigningRequest=csr)
    second = iot.create_certificate_from_csr(certificateSigningRequest=csr)
    assert first["certificateId"] != second["certificateId"]
    assert iot.describe_certificate(certificateId=first["certificateId"])["certificateDescription"][
        "status"
    ] == ("INACTIVE")


def test_issuer_is_stable_per_account() -> None:
    first = in_memory_service().create_certificate_from_csr(certificateSigningRequest=csr_pem())
    second = in_memory_service().create_certificate_from_csr(certificateSigningRequest=csr_pem())
    issuer_a = x509.load_pem_x509_certificate(first["certificatePem"].encode()).issuer
    issuer_b = x509.load_pem_x509_certificate(second["certificatePem"].encode()).issuer
    assert issuer_a == issuer_b


def test_create_certificate_from_bad_csr_is_invalid_request(iot: Any) -> None:
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_certificate_from_csr(certificateSigningRequest="not a csr")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_certificate_from_csr(certificateSigningRequest=csr_pem(weak))


def test_create_keys_and_certificate_returns_rsa_2048_pair_matching_the_certificate(iot: Any) -> None:
    result = iot.create_keys_and_certificate(setAsActive=True)
    private = serialization.load_pem_private_key(result["keyPair"]["PrivateKey"].encode(), password=None)
    assert result["keyPair"]["PrivateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert result["keyPair"]["PublicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    cert = x509.load_pem_x509_certificate(result["certificatePem"].encode())
    assert cert.public_key().public_numbers() == private.public_key().public_numbers()
    description = iot.describe_certificate(certificateId=result["certificateId"])["certificateDescription"]
    assert description["status"] == "ACTIVE"
    assert "PrivateKey" not in str(description)


# ---- DescribeCertificate / UpdateCertificate ----


def test_describe_unknown_or_malformed_certificate(iot: Any) -> None:
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_certificate(certificateId="ef" * 32)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.describe_certificate(certificateId="zz" * 32)  # right length, not hex


def test_update_certificate_transitions(iot: Any) -> None:
    key, ca, _ = register_ca(iot)
    cert_id = iot.register_certificate(certificatePem=pem(issue(key, ca)))["certificateId"]

    def status() -> str:
        return iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"]

    iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    assert status() == "ACTIVE"
    assert iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["customerVersion"] == 2
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    assert status() == "INACTIVE"
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_certificate(certificateId=cert_id, newStatus="PENDING_TRANSFER")
    iot.update_certificate(certificateId=cert_id, newStatus="REVOKED")
    assert status() == "REVOKED"
    with pytest.raises(iot.exceptions.CertificateStateException):
        iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_certificate(certificateId="12" * 32, newStatus="ACTIVE")


def test_activating_a_certificate_of_an_inactive_ca_is_certificate_state(iot: Any) -> None:
    key, ca, ca_id = register_ca(iot)
    cert_id = iot.register_certificate(certificatePem=pem(issue(key, ca)))["certificateId"]
    iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    with pytest.raises(iot.exceptions.CertificateStateException):
        iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")


# ---- ListCertificates / ListCertificatesByCA ----


def _all_pages(call: Any, **kwargs: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = call(**kwargs)
        items.extend(page["certificates"])
        if "nextMarker" not in page:
            return items
        kwargs["marker"] = page["nextMarker"]


def test_list_certificates_by_ca_pages_in_creation_order(iot: Any) -> None:
    key, ca, ca_id = register_ca(iot)
    ids = [iot.register_certificate(certificatePem=pem(issue(key, ca)))["certificateId"] for _ in range(5)]
    first = iot.list_certificates_by_ca(caCertificateId=ca_id, pageSize=2, ascendingOrder=True)
    assert len(first["certificates"]) == 2 and first["nextMarker"]
    ascending = _all_pages(
        iot.list_certificates_by_ca, caCertificateId=ca_id, pageSize=2, ascendingOrder=True
    )
    assert [c["certificateId"] for c in ascending] == ids
    descending = _all_pages(iot.list_certificates_by_ca, caCertificateId=ca_id, pageSize=3)
    assert [c["certificateId"] for c in descending] == ids[::-1]
    assert set(ascending[0]) == {
        "certificateArn",
        "certificateId",
        "status",
        "certificateMode",
        "creationDate",
    }


def test_list_certificates_includes_every_kind(iot: Any) -> None:
    key, ca, _ = register_ca(iot)
    own = iot.register_certificate(certificatePem=pem(issue(key, ca)))["certificateId"]
    issued = iot.create_certificate_from_csr(certificateSigningRequest=csr_pem())["certificateId"]
    listed = {c["certificateId"] for c in _all_pages(iot.list_certificates, pageSize=250)}
    assert {own, issued} <= listed


def test_list_certificates_rejects_bad_page_size_and_marker(iot: Any) -> None:
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_certificates(pageSize=251)  # botocore checks only the minimum client-side
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_certificates(marker="bm9wZQ==")  # base64 of "nope"


# ---- DeleteCertificate ----


def test_delete_certificate_conflicts_and_force(iot: Any) -> None:
    key, ca, _ = register_ca(iot)
    cert = iot.register_certificate(certificatePem=pem(issue(key, ca)), setAsActive=True)
    cert_id, arn = cert["certificateId"], cert["certificateArn"]
    with pytest.raises(iot.exceptions.CertificateStateException) as info:
        iot.delete_certificate(certificateId=cert_id)
    assert info.value.response["Error"]["Message"] == (
        f"Certificate must be deactivated (not ACTIVE) before deletion. Id: {cert_id}"
    )
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    thing = unique("thing")
    iot.create_thing(thingName=thing)
    iot.attach_thing_principal(thingName=thing, principal=arn)
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_certificate(certificateId=cert_id)
    iot.detach_thing_principal(thingName=thing, principal=arn)
    policy = unique("policy")
    iot.create_policy(policyName=policy, policyDocument=POLICY)
    iot.attach_policy(policyName=policy, target=arn)
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_certificate(certificateId=cert_id)
    iot.delete_certificate(certificateId=cert_id, forceDelete=True)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_certificate(certificateId=cert_id)
    assert iot.list_targets_for_policy(policyName=policy)["targets"] == []
    iot.delete_policy(policyName=policy)  # no longer attached anywhere


def test_delete_unknown_certificate_is_not_found(iot: Any) -> None:
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.delete_certificate(certificateId="34" * 32)


# ---- persistence ----


def test_state_survives_json_and_caches_rebuild() -> None:
    backend = in_memory_service()
    key, ca = make_ca()
    code = backend.get_registration_code()["registrationCode"]
    backend.register_ca_certificate(
        caCertificate=pem(ca), verificationCertificate=pem(issue(key, ca, cn=code)), setAsActive=True
    )
    backend.register_certificate(certificatePem=pem(issue(key, ca)))
    backend.create_certificate_from_csr(certificateSigningRequest=csr_pem())
    assert backend._ca_objects and backend._stand_in_amazon_ca is not None  # caches in use...
    document = backend.state.to_document()
    assert "_ca_objects" not in document and "_stand_in_amazon_ca" not in document  # ...never saved
    restored = json_round_trip(backend)
    assert not restored._ca_objects and restored._stand_in_amazon_ca is None
    assert restored.get_registration_code() == backend.get_registration_code()
    restored.register_certificate(certificatePem=pem(issue(key, ca)), caCertificatePem=pem(ca))
    issued = restored.create_certificate_from_csr(certificateSigningRequest=csr_pem())
    assert len(restored.list_certificates(pageSize=250)["certificates"]) == 4
    issuer = x509.load_pem_x509_certificate(issued["certificatePem"].encode()).issuer
    assert issuer.rfc4514_string() == "OU=Amazon Web Services O=Amazon.com Inc. L=Seattle ST=Washington C=US"
