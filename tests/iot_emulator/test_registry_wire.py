"""Registry and certificate operations through boto3 only: botocore's paginators and modeled HTTP statuses."""

from __future__ import annotations

from typing import Any

import pytest

from tests.iot_emulator.test_ca import issue, make_ca, pem, register_ca, unique
from tests.iot_emulator.test_registry import POLICY


def paginate(iot_client: Any, operation: str, **kwargs: Any) -> list[Any]:
    """Every item botocore's own paginator yields, checking it took pages of 2."""
    paginator = iot_client.get_paginator(operation)
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 2}, **kwargs))
    result_key = paginator.result_keys[0].expression
    items = [item for page in pages for item in page[result_key]]
    assert len(pages) == max(1, -(-len(items) // 2)), f"{operation} did not page by 2"
    return items


def test_botocore_paginators_walk_every_registry_listing(iot_client: Any) -> None:
    prefix = unique("pg")
    thing_type = f"{prefix}-type"
    iot_client.create_thing_type(thingTypeName=thing_type)
    root = f"{prefix}-root"
    iot_client.create_thing_group(thingGroupName=root)
    children = [f"{prefix}-child{i}" for i in range(2)]
    for child in children:
        iot_client.create_thing_group(thingGroupName=child, parentGroupName=root)
    things = [f"{prefix}-thing{i}" for i in range(3)]
    for thing in things:
        iot_client.create_thing(
            thingName=thing, thingTypeName=thing_type, attributePayload={"attributes": {"batch": prefix}}
        )
        iot_client.add_thing_to_thing_group(thingGroupName=root, thingName=thing)
    cert_arn = iot_client.create_keys_and_certificate()["certificateArn"]
    policies = [f"{prefix}-policy{i}" for i in range(3)]
    for policy in policies:
        iot_client.create_policy(policyName=policy, policyDocument=POLICY)
        iot_client.attach_policy(policyName=policy, target=cert_arn)
    for thing in things:
        iot_client.attach_thing_principal(thingName=thing, principal=cert_arn)
    thing_cert_arns = [iot_client.create_keys_and_certificate()["certificateArn"] for _ in range(2)]
    for arn in thing_cert_arns:
        iot_client.attach_thing_principal(thingName=things[0], principal=arn)
    group_arn = iot_client.describe_thing_group(thingGroupName=root)["thingGroupArn"]
    iot_client.attach_policy(policyName=policies[0], target=group_arn)

    listed = paginate(iot_client, "list_things", attributeName="batch", attributeValue=prefix)
    assert [t["thingName"] for t in listed] == things
    assert [t["thingName"] for t in paginate(iot_client, "list_things", thingTypeName=thing_type)] == things
    assert paginate(iot_client, "list_things_in_thing_group", thingGroupName=root) == things
    groups = paginate(iot_client, "list_thing_groups", namePrefixFilter=prefix)
    assert [g["groupName"] for g in groups] == [root, *children]
    assert [g["groupName"] for g in paginate(iot_client, "list_thing_groups", parentGroup=root)] == children
    attached = paginate(iot_client, "list_attached_policies", target=cert_arn)
    assert [p["policyName"] for p in attached] == policies
    assert paginate(iot_client, "list_targets_for_policy", policyName=policies[0]) == [cert_arn, group_arn]
    assert paginate(iot_client, "list_principal_things", principal=cert_arn) == things
    assert paginate(iot_client, "list_thing_principals", thingName=things[0]) == [cert_arn, *thing_cert_arns]
    listed_policies = {p["policyName"] for p in paginate(iot_client, "list_policies")}
    assert set(policies) <= listed_policies
    assert thing_type in {t["thingTypeName"] for t in paginate(iot_client, "list_thing_types")}


def test_botocore_paginators_walk_certificate_listings(iot_client: Any) -> None:
    key, ca, ca_id = register_ca(iot_client)
    ids = [
        iot_client.register_certificate(certificatePem=pem(issue(key, ca)))["certificateId"] for _ in range(3)
    ]
    by_ca = paginate(iot_client, "list_certificates_by_ca", caCertificateId=ca_id, ascendingOrder=True)
    assert [c["certificateId"] for c in by_ca] == ids
    assert set(ids) <= {c["certificateId"] for c in paginate(iot_client, "list_certificates")}
    register_ca(iot_client)
    register_ca(iot_client)
    assert ca_id in {c["certificateId"] for c in paginate(iot_client, "list_ca_certificates")}


def test_thing_group_membership_paginator(iot_client: Any) -> None:
    thing = unique("thing")
    iot_client.create_thing(thingName=thing)
    groups = [unique("group") for _ in range(3)]
    for group in groups:
        iot_client.create_thing_group(thingGroupName=group)
        iot_client.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
    listed = paginate(iot_client, "list_thing_groups_for_thing", thingName=thing)
    assert [g["groupName"] for g in listed] == groups


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ResourceNotFoundException", 404),
        ("ResourceAlreadyExistsException", 409),
        ("CertificateStateException", 406),
        ("DeleteConflictException", 409),
        ("VersionConflictException", 409),
        ("MalformedPolicyException", 400),
        ("InvalidRequestException", 400),
        ("CertificateValidationException", 400),
        ("RegistrationCodeValidationException", 400),
    ],
)
def test_errors_carry_the_modeled_code_and_status(iot_client: Any, code: str, status: int) -> None:
    name = unique("x")
    trigger = {
        "ResourceNotFoundException": lambda: iot_client.describe_thing(thingName=name),
        "ResourceAlreadyExistsException": lambda: [
            iot_client.create_policy(policyName=name, policyDocument=POLICY) for _ in range(2)
        ],
        "CertificateStateException": lambda: iot_client.delete_certificate(
            certificateId=iot_client.create_keys_and_certificate(setAsActive=True)["certificateId"]
        ),
        "DeleteConflictException": lambda: _attached_policy_delete(iot_client, name),
        "VersionConflictException": lambda: [
            iot_client.create_thing(thingName=name),
            iot_client.update_thing(thingName=name, expectedVersion=5),
        ],
        "MalformedPolicyException": lambda: iot_client.create_policy(policyName=name, policyDocument="{"),
        "InvalidRequestException": lambda: iot_client.create_thing(
            thingName=name, attributePayload={"attributes": {f"a{i}": "v" for i in range(4)}}
        ),
        "CertificateValidationException": lambda: iot_client.register_certificate(certificatePem="garbage"),
        "RegistrationCodeValidationException": lambda: _wrong_registration_code(iot_client),
    }[code]
    with pytest.raises(getattr(iot_client.exceptions, code)) as info:
        trigger()
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert info.value.response["Error"]["Message"]


def test_limit_exceeded_is_410_and_retried_by_botocore(iot_client: Any) -> None:
    cert_arn = iot_client.create_keys_and_certificate()["certificateArn"]
    for _ in range(10):
        policy = unique("policy")
        iot_client.create_policy(policyName=policy, policyDocument=POLICY)
        iot_client.attach_policy(policyName=policy, target=cert_arn)
    extra = unique("policy")
    iot_client.create_policy(policyName=extra, policyDocument=POLICY)
    with pytest.raises(iot_client.exceptions.LimitExceededException) as info:
        iot_client.attach_policy(policyName=extra, target=cert_arn)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410


def _attached_policy_delete(iot_client: Any, name: str) -> None:
    iot_client.create_policy(policyName=name, policyDocument=POLICY)
    cert_arn = iot_client.create_keys_and_certificate()["certificateArn"]
    iot_client.attach_policy(policyName=name, target=cert_arn)
    iot_client.delete_policy(policyName=name)


def _wrong_registration_code(iot_client: Any) -> None:
    key, ca = make_ca()
    iot_client.register_ca_certificate(
        caCertificate=pem(ca), verificationCertificate=pem(issue(key, ca, cn="f" * 64))
    )
