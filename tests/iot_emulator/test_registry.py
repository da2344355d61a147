"""Things, thing types, thing groups, billing groups, policies and thing principals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from iot_emulator.service import in_memory_service
from tests.iot_emulator import test_ca
from tests.iot_emulator.test_ca import epoch, json_round_trip, unique

iot = test_ca.iot  # the fixture: each test runs in-process and over HTTP

POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["*"]}],
    }
)
ACCOUNT_ARN = "arn:aws:iot:us-east-1:123456789012"


def body(response: dict[str, Any]) -> dict[str, Any]:
    """A response without boto3's ResponseMetadata."""
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def all_pages(call: Any, result_key: str, token: str = "nextToken", **kwargs: Any) -> list[Any]:
    """Follow the modeled pagination tokens to the end, as botocore's paginators do."""
    input_token = "marker" if token == "nextMarker" else token
    items: list[Any] = []
    while True:
        page = call(**kwargs)
        items.extend(page[result_key])
        if not page.get(token):
            return items
        kwargs[input_token] = page[token]


# ---- things ----


def test_create_and_describe_thing(iot: Any) -> None:
    thing_type, name = unique("type"), unique("thing")
    iot.create_thing_type(thingTypeName=thing_type)
    created = iot.create_thing(
        thingName=name, thingTypeName=thing_type, attributePayload={"attributes": {"serial": "SN-1"}}
    )
    assert created["thingArn"] == f"{ACCOUNT_ARN}:thing/{name}"
    described = iot.describe_thing(thingName=name)
    assert described["thingId"] == created["thingId"]
    assert described["thingArn"] == created["thingArn"]
    assert described["defaultClientId"] == name
    assert described["thingTypeName"] == thing_type
    assert described["attributes"] == {"serial": "SN-1"}
    assert described["version"] == 1


def test_create_thing_is_idempotent_for_identical_config_only(iot: Any) -> None:
    name = unique("thing")
    first = iot.create_thing(thingName=name, attributePayload={"attributes": {"a": "1"}})
    again = iot.create_thing(thingName=name, attributePayload={"attributes": {"a": "1"}})
    assert again["thingId"] == first["thingId"]
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as info:
        iot.create_thing(thingName=name, attributePayload={"attributes": {"a": "2"}})
    assert info.value.response["resourceId"] == first["thingId"]
    assert info.value.response["resourceArn"] == first["thingArn"]


def test_create_thing_validates_names_attributes_and_limits(iot: Any) -> None:
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(thingName="bad name with spaces")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(thingName=unique("t"), attributePayload={"attributes": {"bad key": "v"}})
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(thingName=unique("t"), attributePayload={"attributes": {"k": "bad value!"}})
    four = {f"a{i}": "v" for i in range(4)}
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(thingName=unique("t"), attributePayload={"attributes": four})
    thing_type = unique("type")
    iot.create_thing_type(thingTypeName=thing_type)
    iot.create_thing(thingName=unique("t"), thingTypeName=thing_type, attributePayload={"attributes": four})
    fifty_one = {f"a{i}": "v" for i in range(51)}
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(
            thingName=unique("t"), thingTypeName=thing_type, attributePayload={"attributes": fifty_one}
        )


def test_create_thing_with_unknown_or_deprecated_type(iot: Any) -> None:
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_thing(thingName=unique("t"), thingTypeName=unique("missing"))
    thing_type = unique("type")
    iot.create_thing_type(thingTypeName=thing_type)
    iot.deprecate_thing_type(thingTypeName=thing_type)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(thingName=unique("t"), thingTypeName=thing_type)


def test_describe_unknown_thing_is_not_found(iot: Any) -> None:
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName=unique("missing"))


def test_update_thing_merge_replace_remove_and_versions(iot: Any) -> None:
    name, thing_type = unique("thing"), unique("type")
    iot.create_thing_type(thingTypeName=thing_type)
    iot.create_thing(thingName=name, attributePayload={"attributes": {"a": "1", "b": "2"}})
    iot.update_thing(thingName=name, attributePayload={"attributes": {"b": "", "c": "3"}, "merge": True})
    assert iot.describe_thing(thingName=name)["attributes"] == {"a": "1", "c": "3"}
    iot.update_thing(thingName=name, attributePayload={"attributes": {"z": "9"}})
    assert iot.describe_thing(thingName=name)["attributes"] == {"z": "9"}
    iot.update_thing(thingName=name, thingTypeName=thing_type, expectedVersion=3)
    described = iot.describe_thing(thingName=name)
    assert described["thingTypeName"] == thing_type and described["version"] == 4
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.update_thing(thingName=name, removeThingType=True, expectedVersion=1)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_thing(thingName=name, thingTypeName=thing_type, removeThingType=True)
    iot.update_thing(thingName=name, removeThingType=True)
    assert "thingTypeName" not in iot.describe_thing(thingName=name)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_thing(thingName=unique("missing"), attributePayload={"attributes": {}})


def test_removing_the_type_keeps_the_three_attribute_limit(iot: Any) -> None:
    name, thing_type = unique("thing"), unique("type")
    iot.create_thing_type(thingTypeName=thing_type)
    iot.create_thing(
        thingName=name,
        thingTypeName=thing_type,
        attributePayload={"attributes": {f"a{i}": "v" for i in range(5)}},
    )
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_thing(thingName=name, removeThingType=True)


def test_delete_thing_rules(iot: Any) -> None:
    name = unique("thing")
    iot.create_thing(thingName=name)
    cert = iot.create_keys_and_certificate()
    iot.attach_thing_principal(thingName=name, principal=cert["certificateArn"])
    with pytest.raises(iot.exceptions.InvalidRequestException) as info:
        iot.delete_thing(thingName=name)
    message = info.value.response["Error"]["Message"]
    assert message == f"Cannot delete. Thing {name} is still attached to one or more principals"
    iot.detach_thing_principal(thingName=name, principal=cert["certificateArn"])
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.delete_thing(thingName=name, expectedVersion=7)
    iot.delete_thing(thingName=name, expectedVersion=1)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName=name)
    iot.delete_thing(thingName=name)  # AWS: deleting a thing that does not exist succeeds


def test_list_things_filters_and_pages(iot: Any) -> None:
    batch, thing_type = unique("batch"), unique("type")
    iot.create_thing_type(thingTypeName=thing_type)
    names = [unique("thing") for _ in range(5)]
    for i, name in enumerate(names):
        typed = {"thingTypeName": thing_type} if i % 2 == 0 else {}
        iot.create_thing(
            thingName=name, attributePayload={"attributes": {"batch": batch, "serial": f"SN-{i}"}}, **typed
        )
    page = iot.list_things(attributeName="batch", attributeValue=batch, maxResults=2)
    assert len(page["things"]) == 2 and page["nextToken"]
    listed = all_pages(iot.list_things, "things", attributeName="batch", attributeValue=batch, maxResults=2)
    assert [t["thingName"] for t in listed] == names
    assert listed[0]["attributes"] == {"batch": batch, "serial": "SN-0"}
    assert listed[0]["thingArn"] == f"{ACCOUNT_ARN}:thing/{names[0]}" and listed[0]["version"] == 1
    typed = all_pages(iot.list_things, "things", thingTypeName=thing_type)
    assert [t["thingName"] for t in typed] == names[0::2]
    prefixed = all_pages(
        iot.list_things,
        "things",
        attributeName="batch",
        attributeValue=batch[:-3],
        usePrefixAttributeValue=True,
    )
    assert [t["thingName"] for t in prefixed] == names
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_things(nextToken="bm90LWFuLW9mZnNldA==")


# ---- thing types ----


def test_thing_type_lifecycle(iot: Any) -> None:
    name = unique("type")
    properties = {"thingTypeDescription": "Thermostat TH-100", "searchableAttributes": ["serial"]}
    created = iot.create_thing_type(thingTypeName=name, thingTypeProperties=properties)
    assert created["thingTypeArn"] == f"{ACCOUNT_ARN}:thingtype/{name}"
    assert body(iot.create_thing_type(thingTypeName=name, thingTypeProperties=properties)) == body(created)
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_thing_type(thingTypeName=name, thingTypeProperties={"thingTypeDescription": "other"})
    described = iot.describe_thing_type(thingTypeName=name)
    assert described["thingTypeId"] == created["thingTypeId"]
    assert described["thingTypeProperties"] == properties
    assert described["thingTypeMetadata"]["deprecated"] is False
    assert epoch(described["thingTypeMetadata"]["creationDate"]) > 0
    listed = iot.list_thing_types(thingTypeName=name)["thingTypes"]
    assert [t["thingTypeName"] for t in listed] == [name]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_thing_type(thingTypeName=name)  # must be deprecated first
    iot.deprecate_thing_type(thingTypeName=name)
    metadata = iot.describe_thing_type(thingTypeName=name)["thingTypeMetadata"]
    assert metadata["deprecated"] is True and epoch(metadata["deprecationDate"]) > 0
    iot.deprecate_thing_type(thingTypeName=name, undoDeprecate=True)
    assert iot.describe_thing_type(thingTypeName=name)["thingTypeMetadata"]["deprecated"] is False
    thing = unique("thing")
    iot.create_thing(thingName=thing, thingTypeName=name)
    iot.deprecate_thing_type(thingTypeName=name)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_thing_type(thingTypeName=name)  # still used by a thing
    iot.delete_thing(thingName=thing)
    iot.delete_thing_type(thingTypeName=name)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing_type(thingTypeName=name)


def test_list_thing_types_pages(iot: Any) -> None:
    names = {unique("type") for _ in range(3)}
    for name in names:
        iot.create_thing_type(thingTypeName=name)
    listed = {t["thingTypeName"] for t in all_pages(iot.list_thing_types, "thingTypes", maxResults=1)}
    assert names <= listed


# ---- thing groups ----


def test_thing_group_hierarchy_and_describe(iot: Any) -> None:
    root, child, leaf = unique("root"), unique("child"), unique("leaf")
    created = iot.create_thing_group(
        thingGroupName=root,
        thingGroupProperties={
            "thingGroupDescription": "Factory A",
            "attributePayload": {"attributes": {"k": "v"}},
        },
    )
    assert created["thingGroupArn"] == f"{ACCOUNT_ARN}:thinggroup/{root}"
    iot.create_thing_group(thingGroupName=child, parentGroupName=root)
    iot.create_thing_group(thingGroupName=leaf, parentGroupName=child)
    described = iot.describe_thing_group(thingGroupName=leaf)
    assert described["thingGroupMetadata"]["parentGroupName"] == child
    assert [g["groupName"] for g in described["thingGroupMetadata"]["rootToParentThingGroups"]] == [
        root,
        child,
    ]
    assert described["version"] == 1
    root_described = iot.describe_thing_group(thingGroupName=root)
    assert root_described["thingGroupProperties"]["attributePayload"]["attributes"] == {"k": "v"}
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_thing_group(thingGroupName=unique("orphan"), parentGroupName=unique("missing"))
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing_group(thingGroupName=unique("missing"))


def test_create_thing_group_idempotent_and_conflicting(iot: Any) -> None:
    name = unique("group")
    first = iot.create_thing_group(thingGroupName=name)
    assert iot.create_thing_group(thingGroupName=name)["thingGroupId"] == first["thingGroupId"]
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_thing_group(thingGroupName=name, thingGroupProperties={"thingGroupDescription": "other"})


def test_thing_group_depth_limit(iot: Any) -> None:
    parent = None
    for _ in range(7):
        name = unique("level")
        iot.create_thing_group(thingGroupName=name, **({"parentGroupName": parent} if parent else {}))
        parent = name
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing_group(thingGroupName=unique("too-deep"), parentGroupName=parent)


def test_update_and_delete_thing_group(iot: Any) -> None:
    parent, child = unique("parent"), unique("child")
    iot.create_thing_group(thingGroupName=parent)
    iot.create_thing_group(thingGroupName=child, parentGroupName=parent)
    assert (
        iot.update_thing_group(
            thingGroupName=parent, thingGroupProperties={"thingGroupDescription": "new"}, expectedVersion=1
        )["version"]
        == 2
    )
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.update_thing_group(thingGroupName=parent, thingGroupProperties={}, expectedVersion=1)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_thing_group(thingGroupName=parent)  # has a child
    thing = unique("thing")
    iot.create_thing(thingName=thing)
    iot.add_thing_to_thing_group(thingGroupName=child, thingName=thing)
    iot.delete_thing_group(thingGroupName=child)
    assert iot.list_thing_groups_for_thing(thingName=thing)["thingGroups"] == []
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.delete_thing_group(thingGroupName=parent, expectedVersion=1)
    iot.delete_thing_group(thingGroupName=parent, expectedVersion=2)
    iot.delete_thing_group(thingGroupName=parent)  # gone already: still succeeds


def test_group_membership_by_name_and_arn(iot: Any) -> None:
    group, thing = unique("group"), unique("thing")
    group_arn = iot.create_thing_group(thingGroupName=group)["thingGroupArn"]
    thing_arn = iot.create_thing(thingName=thing)["thingArn"]
    iot.add_thing_to_thing_group(thingGroupArn=group_arn, thingArn=thing_arn)
    iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)  # idempotent
    assert iot.list_things_in_thing_group(thingGroupName=group)["things"] == [thing]
    assert iot.list_thing_groups_for_thing(thingName=thing)["thingGroups"] == [
        {"groupName": group, "groupArn": group_arn}
    ]
    iot.remove_thing_from_thing_group(thingGroupName=group, thingArn=thing_arn)
    assert iot.list_things_in_thing_group(thingGroupName=group)["things"] == []
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.add_thing_to_thing_group(thingGroupName=unique("missing"), thingName=thing)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=unique("missing"))
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.add_thing_to_thing_group(thingName=thing)


def test_group_limits_per_thing(iot: Any) -> None:
    thing = unique("thing")
    iot.create_thing(thingName=thing)
    root, child = unique("root"), unique("child")
    iot.create_thing_group(thingGroupName=root)
    iot.create_thing_group(thingGroupName=child, parentGroupName=root)
    iot.add_thing_to_thing_group(thingGroupName=root, thingName=thing)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.add_thing_to_thing_group(thingGroupName=child, thingName=thing)  # same hierarchy
    for _ in range(9):
        group = unique("group")
        iot.create_thing_group(thingGroupName=group)
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
    eleventh = unique("group")
    iot.create_thing_group(thingGroupName=eleventh)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.add_thing_to_thing_group(thingGroupName=eleventh, thingName=thing)


def test_update_thing_groups_for_thing_moves_within_a_hierarchy(iot: Any) -> None:
    thing, root, child = unique("thing"), unique("root"), unique("child")
    iot.create_thing(thingName=thing)
    iot.create_thing_group(thingGroupName=root)
    iot.create_thing_group(thingGroupName=child, parentGroupName=root)
    iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToAdd=[root])
    iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToAdd=[child], thingGroupsToRemove=[root])
    assert [g["groupName"] for g in iot.list_thing_groups_for_thing(thingName=thing)["thingGroups"]] == [
        child
    ]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToAdd=[unique("missing")])


def test_list_things_in_group_recursive_and_list_groups(iot: Any) -> None:
    prefix = unique("tree")
    root, child = f"{prefix}-root", f"{prefix}-child"
    iot.create_thing_group(thingGroupName=root)
    iot.create_thing_group(thingGroupName=child, parentGroupName=root)
    things = [unique("thing") for _ in range(3)]
    for thing in things:
        iot.create_thing(thingName=thing)
    iot.add_thing_to_thing_group(thingGroupName=root, thingName=things[0])
    iot.add_thing_to_thing_group(thingGroupName=child, thingName=things[1])
    iot.add_thing_to_thing_group(thingGroupName=child, thingName=things[2])
    assert iot.list_things_in_thing_group(thingGroupName=root)["things"] == [things[0]]
    recursive = all_pages(
        iot.list_things_in_thing_group, "things", thingGroupName=root, recursive=True, maxResults=1
    )
    assert recursive == things
    named = all_pages(iot.list_thing_groups, "thingGroups", namePrefixFilter=prefix, maxResults=1)
    assert [g["groupName"] for g in named] == [root, child]
    children = iot.list_thing_groups(parentGroup=root)["thingGroups"]
    assert [g["groupName"] for g in children] == [child]
    roots = all_pages(iot.list_thing_groups, "thingGroups", namePrefixFilter=prefix, recursive=False)
    assert [g["groupName"] for g in roots] == [root]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_things_in_thing_group(thingGroupName=unique("missing"))


# ---- billing groups ----


def test_billing_group_for_create_thing(iot: Any) -> None:
    billing, thing = unique("billing"), unique("thing")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_thing(thingName=thing, billingGroupName=billing)
    created = iot.create_billing_group(billingGroupName=billing)
    assert created["billingGroupArn"] == f"{ACCOUNT_ARN}:billinggroup/{billing}"
    iot.create_thing(thingName=thing, billingGroupName=billing)
    assert iot.describe_thing(thingName=thing)["billingGroupName"] == billing
    other = unique("thing")
    iot.create_thing(thingName=other)
    iot.add_thing_to_billing_group(billingGroupName=billing, thingName=other)
    assert iot.describe_thing(thingName=other)["billingGroupName"] == billing
    assert iot.describe_billing_group(billingGroupName=billing)["billingGroupId"] == created["billingGroupId"]


# ---- policies ----


def test_policy_create_get_and_duplicates(iot: Any) -> None:
    name = unique("policy")
    created = iot.create_policy(policyName=name, policyDocument=POLICY)
    assert body(created) == {
        "policyName": name,
        "policyArn": f"{ACCOUNT_ARN}:policy/{name}",
        "policyDocument": POLICY,
        "policyVersionId": "1",
    }
    fetched = iot.get_policy(policyName=name)
    assert fetched["policyDocument"] == POLICY and fetched["defaultVersionId"] == "1"
    assert epoch(fetched["creationDate"]) > 0 and fetched["generationId"]
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as info:
        iot.create_policy(policyName=name, policyDocument=POLICY)
    assert info.value.response["resourceArn"] == created["policyArn"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy(policyName=unique("missing"))


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        json.dumps({"Version": "2012-10-17"}),
        json.dumps({"Statement": [{"Effect": "Maybe", "Action": "iot:*", "Resource": "*"}]}),
        json.dumps({"Statement": [{"Effect": "Allow", "Resource": "*"}]}),
        json.dumps(
            {"Version": "2099-01-01", "Statement": [{"Effect": "Allow", "Action": "a", "Resource": "*"}]}
        ),
        json.dumps({"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": ["x" * 2100]}]}),
    ],
)
def test_malformed_policies_are_refused(iot: Any, document: str) -> None:
    with pytest.raises(iot.exceptions.MalformedPolicyException):
        iot.create_policy(policyName=unique("policy"), policyDocument=document)


def test_attach_detach_and_list_policies(iot: Any) -> None:
    name = unique("policy")
    iot.create_policy(policyName=name, policyDocument=POLICY)
    cert_arn = iot.create_keys_and_certificate()["certificateArn"]
    group = unique("group")
    group_arn = iot.create_thing_group(thingGroupName=group)["thingGroupArn"]
    iot.attach_policy(policyName=name, target=cert_arn)
    iot.attach_policy(policyName=name, target=cert_arn)  # idempotent
    iot.attach_policy(policyName=name, target=group_arn)
    assert iot.list_attached_policies(target=cert_arn)["policies"] == [
        {"policyName": name, "policyArn": f"{ACCOUNT_ARN}:policy/{name}"}
    ]
    assert all_pages(iot.list_targets_for_policy, "targets", "nextMarker", policyName=name, pageSize=1) == [
        cert_arn,
        group_arn,
    ]
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_policy(policyName=name)
    iot.detach_policy(policyName=name, target=cert_arn)
    iot.detach_policy(policyName=name, target=group_arn)
    assert iot.list_attached_policies(target=cert_arn)["policies"] == []
    iot.delete_policy(policyName=name)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy(policyName=name)


def test_attach_policy_errors_and_limit(iot: Any) -> None:
    cert_arn = iot.create_keys_and_certificate()["certificateArn"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_policy(policyName=unique("missing"), target=cert_arn)
    name = unique("policy")
    iot.create_policy(policyName=name, policyDocument=POLICY)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_policy(policyName=name, target=f"{ACCOUNT_ARN}:cert/{'0' * 64}")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.attach_policy(policyName=name, target="not-a-target")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_attached_policies(target=f"{ACCOUNT_ARN}:cert/{'0' * 64}")
    names = [unique("policy") for _ in range(10)]
    for policy in names:
        iot.create_policy(policyName=policy, policyDocument=POLICY)
        iot.attach_policy(policyName=policy, target=cert_arn)
    with pytest.raises(iot.exceptions.LimitExceededException):
        iot.attach_policy(policyName=name, target=cert_arn)
    listed = all_pages(iot.list_attached_policies, "policies", "nextMarker", target=cert_arn, pageSize=3)
    assert [p["policyName"] for p in listed] == names


def test_list_attached_policies_recursive_includes_parent_groups(iot: Any) -> None:
    parent, child = unique("parent"), unique("child")
    iot.create_thing_group(thingGroupName=parent)
    child_arn = iot.create_thing_group(thingGroupName=child, parentGroupName=parent)["thingGroupArn"]
    parent_policy, child_policy = unique("policy"), unique("policy")
    for policy, group in ((parent_policy, parent), (child_policy, child)):
        iot.create_policy(policyName=policy, policyDocument=POLICY)
        iot.attach_policy(
            policyName=policy, target=iot.describe_thing_group(thingGroupName=group)["thingGroupArn"]
        )
    direct = iot.list_attached_policies(target=child_arn)["policies"]
    assert [p["policyName"] for p in direct] == [child_policy]
    recursive = iot.list_attached_policies(target=child_arn, recursive=True)["policies"]
    assert [p["policyName"] for p in recursive] == [child_policy, parent_policy]


def test_list_policies_pages_newest_first_by_default(iot: Any) -> None:
    names = [unique("policy") for _ in range(3)]
    for name in names:
        iot.create_policy(policyName=name, policyDocument=POLICY)
    ascending = all_pages(iot.list_policies, "policies", "nextMarker", pageSize=2, ascendingOrder=True)
    assert [p["policyName"] for p in ascending if p["policyName"] in names] == names
    descending = all_pages(iot.list_policies, "policies", "nextMarker", pageSize=2)
    assert [p["policyName"] for p in descending if p["policyName"] in names] == names[::-1]


# ---- thing principals ----


def test_thing_principals_attach_list_detach(iot: Any) -> None:
    thing, other = unique("thing"), unique("thing")
    iot.create_thing(thingName=thing)
    iot.create_thing(thingName=other)
    cert_arn = iot.create_keys_and_certificate()["certificateArn"]
    iot.attach_thing_principal(thingName=thing, principal=cert_arn)
    iot.attach_thing_principal(thingName=thing, principal=cert_arn)  # idempotent
    iot.attach_thing_principal(thingName=other, principal=cert_arn)
    assert iot.list_thing_principals(thingName=thing)["principals"] == [cert_arn]
    assert all_pages(iot.list_principal_things, "things", principal=cert_arn, maxResults=1) == [thing, other]
    iot.detach_thing_principal(thingName=thing, principal=cert_arn)
    assert iot.list_thing_principals(thingName=thing)["principals"] == []
    assert iot.list_principal_things(principal=cert_arn)["things"] == [other]


def test_thing_principal_errors(iot: Any) -> None:
    thing = unique("thing")
    iot.create_thing(thingName=thing)
    cert_arn = iot.create_keys_and_certificate()["certificateArn"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_thing_principal(thingName=unique("missing"), principal=cert_arn)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_thing_principal(thingName=thing, principal=f"{ACCOUNT_ARN}:cert/{'0' * 64}")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_thing_principals(thingName=unique("missing"))
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_principal_things(principal=f"{ACCOUNT_ARN}:cert/{'0' * 64}")


def test_exclusive_thing_principal(iot: Any) -> None:
    first, second = unique("thing"), unique("thing")
    iot.create_thing(thingName=first)
    iot.create_thing(thingName=second)
    cert_arn = iot.create_keys_and_certificate()["certificateArn"]
    iot.attach_thing_principal(thingName=first, principal=cert_arn, thingPrincipalType="EXCLUSIVE_THING")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.attach_thing_principal(thingName=second, principal=cert_arn)


# ---- helpers used by the other mixins ----


def test_cross_mixin_helpers() -> None:
    backend = in_memory_service()
    backend.create_thing(thingName="t1")
    cert = backend.create_keys_and_certificate()
    backend.create_policy(policyName="p1", policyDocument=POLICY)
    backend.attach_policy(policyName="p1", target=cert["certificateArn"])
    backend.attach_thing_principal(thingName="t1", principal=cert["certificateArn"])
    assert backend._thing_record("t1")["thingArn"].endswith(":thing/t1")
    assert backend._principal_thing_names(cert["certificateArn"]) == ["t1"]
    assert backend._principal_policy_names(cert["certificateArn"]) == ["p1"]
    assert backend._certificate_id_from_arn(cert["certificateArn"]) == cert["certificateId"]
    assert backend._certificate_arn(cert["certificateId"]) == cert["certificateArn"]
    assert backend._certificate_record(cert["certificateId"])["status"] == "INACTIVE"
    restored = json_round_trip(backend)
    assert restored._principal_thing_names(cert["certificateArn"]) == ["t1"]
