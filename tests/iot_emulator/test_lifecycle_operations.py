"""What the lifecycle DAGs need from IoT: V2 principal listings, policy versions, tags, and the eventual
consistency of a delete right after a detach (the ``detach_lag`` fault), in-process and over HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iot_emulator.__main__ import faults_from_args, parse_args
from iot_emulator.service import in_memory_service
from iot_emulator.state import STATE_VERSION, IotState
from tests.iot_emulator import test_bulk, test_ca
from tests.iot_emulator.test_ca import unique
from tests.iot_emulator.test_faults import admin
from tests.iot_emulator.test_registry import all_pages, body

iot = test_ca.iot  # the fixture: each test runs in-process and over HTTP
ca, faults = test_bulk.ca, test_bulk.faults  # a registered CA and bulk faults, for the bulk-line test

ACCOUNT_ARN = "arn:aws:iot:us-east-1:123456789012"
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def policy(effect: str = "Allow", action: str = "iot:Connect") -> str:
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": effect, "Action": action, "Resource": "*"}]}
    )


def certificate(iot: Any) -> str:
    """An AWS-issued certificate from a P-256 CSR (cheaper than CreateKeysAndCertificate's RSA key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    return iot.create_certificate_from_csr(certificateSigningRequest=pem, setAsActive=True)["certificateArn"]


# ---- ListThingPrincipalsV2 / ListPrincipalThingsV2 ----


def test_v2_listings_carry_the_attachment_type_and_filter_by_it(iot: Any) -> None:
    thing, other = unique("thing"), unique("thing")
    iot.create_thing(thingName=thing)
    iot.create_thing(thingName=other)
    shared, exclusive = certificate(iot), certificate(iot)
    iot.attach_thing_principal(thingName=thing, principal=shared)
    iot.attach_thing_principal(thingName=other, principal=shared)
    iot.attach_thing_principal(thingName=thing, principal=exclusive, thingPrincipalType="EXCLUSIVE_THING")

    objects = iot.list_thing_principals_v2(thingName=thing)["thingPrincipalObjects"]
    assert objects == [
        {"principal": shared, "thingPrincipalType": "NON_EXCLUSIVE_THING"},
        {"principal": exclusive, "thingPrincipalType": "EXCLUSIVE_THING"},
    ]
    only = iot.list_thing_principals_v2(thingName=thing, thingPrincipalType="EXCLUSIVE_THING")
    assert only["thingPrincipalObjects"] == [
        {"principal": exclusive, "thingPrincipalType": "EXCLUSIVE_THING"}
    ]
    paged = all_pages(iot.list_thing_principals_v2, "thingPrincipalObjects", thingName=thing, maxResults=1)
    assert paged == objects

    things = all_pages(iot.list_principal_things_v2, "principalThingObjects", principal=shared, maxResults=1)
    assert things == [
        {"thingName": thing, "thingPrincipalType": "NON_EXCLUSIVE_THING"},
        {"thingName": other, "thingPrincipalType": "NON_EXCLUSIVE_THING"},
    ]
    exclusive_things = iot.list_principal_things_v2(principal=exclusive, thingPrincipalType="EXCLUSIVE_THING")
    assert exclusive_things["principalThingObjects"] == [
        {"thingName": thing, "thingPrincipalType": "EXCLUSIVE_THING"}
    ]


def test_v2_listing_errors(iot: Any) -> None:
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_thing_principals_v2(thingName=unique("missing"))
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_principal_things_v2(principal=f"{ACCOUNT_ARN}:cert/{'0' * 64}")
    thing = unique("thing")
    iot.create_thing(thingName=thing)
    assert iot.list_thing_principals_v2(thingName=thing)["thingPrincipalObjects"] == []


def test_v2_listings_on_the_wire(iot_client: Any) -> None:
    thing = unique("thing")
    iot_client.create_thing(thingName=thing)
    cert = certificate(iot_client)
    iot_client.attach_thing_principal(thingName=thing, principal=cert)
    with pytest.raises(iot_client.exceptions.InvalidRequestException):  # the model's enum, checked
        iot_client.list_thing_principals_v2(thingName=thing, thingPrincipalType="SHARED")
    pages = iot_client.get_paginator("list_principal_things_v2").paginate(principal=cert)
    assert [o["thingName"] for page in pages for o in page["principalThingObjects"]] == [thing]


# ---- policy versions ----


def test_policy_versions_default_and_limit(iot: Any) -> None:
    name = unique("policy")
    created = iot.create_policy(policyName=name, policyDocument=policy())
    assert created["policyVersionId"] == "1"
    second = iot.create_policy_version(policyName=name, policyDocument=policy("Deny"))
    assert (second["policyVersionId"], second["isDefaultVersion"]) == ("2", False)
    assert iot.get_policy(policyName=name)["defaultVersionId"] == "1"
    third = iot.create_policy_version(
        policyName=name, policyDocument=policy(action="iot:*"), setAsDefault=True
    )
    assert third["isDefaultVersion"] is True
    got = iot.get_policy(policyName=name)
    assert (got["defaultVersionId"], got["policyDocument"]) == ("3", policy(action="iot:*"))

    versions = iot.list_policy_versions(policyName=name)["policyVersions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in versions] == [
        ("3", True),
        ("2", False),
        ("1", False),
    ]
    version = iot.get_policy_version(policyName=name, policyVersionId="2")
    assert body(version) | {"creationDate": None, "lastModifiedDate": None, "generationId": None} == {
        "policyArn": f"{ACCOUNT_ARN}:policy/{name}",
        "policyName": name,
        "policyDocument": policy("Deny"),
        "policyVersionId": "2",
        "isDefaultVersion": False,
        "creationDate": None,
        "lastModifiedDate": None,
        "generationId": None,
    }
    iot.create_policy_version(policyName=name, policyDocument=policy(action="iot:Publish"))
    iot.create_policy_version(policyName=name, policyDocument=policy(action="iot:Receive"))
    with pytest.raises(iot.exceptions.VersionsLimitExceededException):
        iot.create_policy_version(policyName=name, policyDocument=policy(action="iot:Subscribe"))

    iot.set_default_policy_version(policyName=name, policyVersionId="2")
    assert iot.get_policy(policyName=name)["policyDocument"] == policy("Deny")


def test_policy_version_deletes_and_the_policy_delete_conflict(iot: Any) -> None:
    name = unique("policy")
    iot.create_policy(policyName=name, policyDocument=policy())
    iot.create_policy_version(policyName=name, policyDocument=policy("Deny"), setAsDefault=True)
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_policy_version(policyName=name, policyVersionId="2")  # the default
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_policy(policyName=name)  # a non-default version is left: CDF's DeletePolicy failure
    iot.delete_policy_version(policyName=name, policyVersionId="1")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy_version(policyName=name, policyVersionId="1")
    # Version ids are never reused after a delete.
    assert iot.create_policy_version(policyName=name, policyDocument=policy())["policyVersionId"] == "3"
    iot.delete_policy_version(policyName=name, policyVersionId="3")
    iot.delete_policy(policyName=name)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_policy_versions(policyName=name)


def test_policy_version_errors(iot: Any) -> None:
    name = unique("policy")
    iot.create_policy(policyName=name, policyDocument=policy())
    with pytest.raises(iot.exceptions.MalformedPolicyException):
        iot.create_policy_version(policyName=name, policyDocument='{"Statement": []')
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_policy_version(policyName=unique("missing"), policyDocument=policy())
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.set_default_policy_version(policyName=name, policyVersionId="9")


def test_policy_versions_survive_a_restart() -> None:
    service = in_memory_service()
    service.create_policy(policyName="kept", policyDocument=policy())
    service.create_policy_version(policyName="kept", policyDocument=policy("Deny"), setAsDefault=True)
    loaded = test_ca.json_round_trip(service)
    assert [v["versionId"] for v in loaded.list_policy_versions(policyName="kept")["policyVersions"]] == [
        "2",
        "1",
    ]
    assert loaded.get_policy(policyName="kept")["policyDocument"] == policy("Deny")


def test_a_version_2_state_gets_each_policy_its_one_version() -> None:
    document = {
        "version": 2,
        "policies": {
            "old": {
                "policyName": "old",
                "policyArn": f"{ACCOUNT_ARN}:policy/old",
                "policyDocument": policy(),
                "defaultVersionId": "1",
                "creationDate": 1.0,
                "lastModifiedDate": 1.0,
                "generationId": "g",
                "tags": [],
            }
        },
        "policy_targets": {"old": {}},
    }
    state = IotState.from_document(document)
    assert state.policies["old"]["versions"] == {"1": {"policyDocument": policy(), "creationDate": 1.0}}
    assert state.policies["old"]["nextVersionId"] == 2
    assert state.to_document()["version"] == STATE_VERSION == 3


# ---- tags ----


def test_tags_on_taggable_resources(iot: Any) -> None:
    name = unique("policy")
    arn = iot.create_policy(policyName=name, policyDocument=policy(), tags=[{"Key": "team", "Value": "a"}])[
        "policyArn"
    ]
    iot.tag_resource(resourceArn=arn, tags=[{"Key": "team", "Value": "b"}, {"Key": "batch", "Value": "42"}])
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [
        {"Key": "team", "Value": "b"},
        {"Key": "batch", "Value": "42"},
    ]
    iot.untag_resource(resourceArn=arn, tagKeys=["team", "absent"])
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "batch", "Value": "42"}]

    group = unique("group")
    group_arn = iot.create_thing_group(thingGroupName=group)["thingGroupArn"]
    iot.tag_resource(resourceArn=group_arn, tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    assert len(all_pages(iot.list_tags_for_resource, "tags", resourceArn=group_arn)) == 50
    with pytest.raises(iot.exceptions.LimitExceededException):
        iot.tag_resource(resourceArn=group_arn, tags=[{"Key": "one-more", "Value": "v"}])


def test_tag_errors(iot: Any) -> None:
    thing = unique("thing")
    thing_arn = iot.create_thing(thingName=thing)["thingArn"]
    with pytest.raises(iot.exceptions.InvalidRequestException):  # things are not taggable in AWS IoT
        iot.tag_resource(resourceArn=thing_arn, tags=[{"Key": "k", "Value": "v"}])
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_tags_for_resource(resourceArn=f"{ACCOUNT_ARN}:thinggroup/{unique('missing')}")


# ---- eventual consistency after a detach (fault detach_lag), over HTTP ----


@pytest.fixture
def lagging(fresh_emulator: Any) -> Any:
    admin(fresh_emulator.endpoint_url, "POST", {"detach_lag": 0.4})
    yield fresh_emulator
    fresh_emulator.faults.reset()


def test_deletes_right_after_a_detach_are_refused_then_succeed(lagging: Any) -> None:
    iot = lagging.client("iot", config=NO_RETRIES)
    name = unique("thing")
    iot.create_thing(thingName=name)
    cert = certificate(iot)
    certificate_id = cert.rsplit("/", 1)[1]
    iot.create_policy(policyName=name, policyDocument=policy())
    iot.attach_policy(policyName=name, target=cert)
    iot.attach_thing_principal(thingName=name, principal=cert)
    iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE")
    iot.detach_policy(policyName=name, target=cert)
    iot.detach_thing_principal(thingName=name, principal=cert)

    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_certificate(certificateId=certificate_id)
    with pytest.raises(iot.exceptions.InvalidRequestException) as refused:
        iot.delete_thing(thingName=name)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert admin(lagging.endpoint_url, "GET")[1]["injected"]["DetachLag"] == 2

    time.sleep(0.45)
    iot.delete_certificate(certificateId=certificate_id)
    iot.delete_thing(thingName=name)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName=name)


def test_without_the_fault_a_detach_applies_at_once(fresh_emulator: Any) -> None:
    iot = fresh_emulator.client("iot", config=NO_RETRIES)
    name = unique("thing")
    iot.create_thing(thingName=name)
    cert = certificate(iot)
    iot.attach_thing_principal(thingName=name, principal=cert)
    iot.detach_thing_principal(thingName=name, principal=cert)
    iot.delete_thing(thingName=name)


def test_the_detach_lag_flag() -> None:
    faults = faults_from_args(parse_args(["--detach-lag", "1.5"]))
    assert faults.detach_lag == 1.5
    with pytest.raises(ValueError, match="detach_lag"):
        faults.update({"detach_lag": -1})


# ---- a bulk line that fails after making its resources (fault partial_fail_lines) ----


def test_a_partly_failed_line_leaves_what_it_made(
    iot_client: Any, s3_client: Any, ca: Any, faults: Any
) -> None:
    faults(partial_fail_lines=[2])
    lines = test_bulk.device_lines(ca, 3)
    task = test_bulk.wait(iot_client, test_bulk.start(iot_client, s3_client, b"\n".join(lines) + b"\n"))
    assert (task["successCount"], task["failureCount"]) == (2, 1)
    errors = [json.loads(e) for e in test_bulk.report(iot_client, task["taskId"], "ERRORS")]
    assert [e["lineNumber"] for e in errors] == [2]
    failed = json.loads(lines[1])["ThingName"]
    principals = iot_client.list_thing_principals(thingName=failed)["principals"]  # the thing is there
    assert len(principals) == 1
    policies = iot_client.list_attached_policies(target=principals[0])["policies"]
    assert [p["policyName"] for p in policies] == ["bulk-device"]
