"""Things, thing types, thing groups, billing groups, policies and principal attachments."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from typing import Any

from iot_emulator.errors import IotError, already_exists, invalid_request, limit_exceeded, not_found

# Patterns and lengths from botocore's IoT model (see aws-iot-facts.md 4.7).
_RESOURCE_NAME = re.compile(r"[a-zA-Z0-9:_-]+")
_POLICY_NAME = re.compile(r"[\w+=,.@-]+")
_ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]+")
_ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]*")
_DESCRIPTION = re.compile(r"[!-~ ]*")  # Java's \p{Graph} is printable ASCII
_COGNITO_IDENTITY = re.compile(r"[a-z]{2}(-[a-z]+)+-\d:[0-9a-f-]{36}")
MAX_ATTRIBUTES_WITHOUT_TYPE = 3
MAX_ATTRIBUTES_WITH_TYPE = 50
MAX_GROUPS_PER_THING = 10
MAX_GROUP_DEPTH = 7
MAX_CHILD_GROUPS = 100
MAX_POLICIES_PER_TARGET = 10
MAX_POLICY_CHARS = 2048  # excluding whitespace
MAX_PAGE = 250
REGISTRY_PAGE_SIZE = 50
MARKER_PAGE_SIZE = 25


def paginate(
    items: list[Any], token: str | None, limit: int | None, default: int
) -> tuple[list[Any], str | None]:
    """One page of ``items`` and the next token (base64 of the next offset), as IoT's list calls page."""
    if limit is None:
        limit = default
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise invalid_request(f"The page size must be between 1 and {MAX_PAGE}")
    start = 0
    if token:
        try:
            start = int(base64.b64decode(token, validate=True).decode("ascii"))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise invalid_request("The pagination token is not valid") from None
        if start < 0:
            raise invalid_request("The pagination token is not valid")
    end = start + limit
    next_token = base64.b64encode(str(end).encode("ascii")).decode("ascii") if end < len(items) else None
    return items[start:end], next_token


def _page_result(key: str, page: list[Any], token_key: str, token: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {key: page}
    if token:
        result[token_key] = token
    return result


def _check_name(
    value: Any, member: str, pattern: re.Pattern[str] = _RESOURCE_NAME, max_length: int = 128
) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_length or not pattern.fullmatch(value):
        raise invalid_request(
            f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {pattern.pattern} and length 1 to {max_length}"
        )
    return value


def _check_description(value: Any, member: str) -> None:
    if value is not None and (
        not isinstance(value, str) or len(value) > 2028 or not _DESCRIPTION.fullmatch(value)
    ):
        raise invalid_request(f"{member} must be at most 2028 printable characters")


def _checked_attributes(attributes: Any) -> dict[str, str]:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise invalid_request("attributes must be a map of attribute names to values")
    for name, value in attributes.items():
        _check_name(name, "attributePayload.attributes.key", _ATTRIBUTE_NAME)
        if not isinstance(value, str) or len(value) > 800 or not _ATTRIBUTE_VALUE.fullmatch(value):
            raise invalid_request(
                f"1 validation error detected: Value '{value}' at 'attributePayload.attributes.{name}' "
                "failed to satisfy constraint: Member must satisfy regular expression pattern: "
                f"{_ATTRIBUTE_VALUE.pattern}"
            )
    return dict(attributes)


def _merged_attributes(current: dict[str, str], payload: dict[str, Any] | None) -> dict[str, str]:
    """AttributePayload semantics: replace unless ``merge``; when merging, an empty value removes."""
    if payload is None:
        return dict(current)
    incoming = _checked_attributes(payload.get("attributes"))
    if not payload.get("merge"):
        return {k: v for k, v in incoming.items() if v != ""}
    merged = dict(current)
    for name, value in incoming.items():
        if value == "":
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def _check_policy_document(document: Any) -> None:
    if not isinstance(document, str):
        raise IotError("MalformedPolicyException", "Policy document must be a JSON string")
    if len("".join(document.split())) > MAX_POLICY_CHARS:
        raise IotError(
            "MalformedPolicyException",
            f"Policy document is too large: at most {MAX_POLICY_CHARS} characters excluding whitespace",
        )
    try:
        policy = json.loads(document)
    except ValueError:
        raise IotError("MalformedPolicyException", "Policy document is not valid JSON") from None
    if not isinstance(policy, dict) or "Statement" not in policy:
        raise IotError("MalformedPolicyException", "Policy document must be a JSON object with a Statement")
    if policy.get("Version", "2012-10-17") not in ("2012-10-17", "2008-10-17"):
        raise IotError(
            "MalformedPolicyException", f"Policy document has an unsupported Version {policy['Version']}"
        )
    statements = policy["Statement"]
    for statement in statements if isinstance(statements, list) else [statements]:
        if not isinstance(statement, dict) or statement.get("Effect") not in ("Allow", "Deny"):
            raise IotError(
                "MalformedPolicyException", "Every policy statement needs an Effect of Allow or Deny"
            )
        for member in ("Action", "Resource"):
            value = statement.get(member)
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) and v for v in values):
                raise IotError(
                    "MalformedPolicyException", f"Every policy statement needs a non-empty {member}"
                )


class RegistryMixin:
    """The thing registry and the policy store, with AWS's names, limits and conflicts."""

    def _init_registry(self) -> None:
        self.things: dict[str, dict[str, Any]] = {}
        self.thing_types: dict[str, dict[str, Any]] = {}
        self.thing_groups: dict[str, dict[str, Any]] = {}
        self.billing_groups: dict[str, dict[str, Any]] = {}
        # Membership both ways; the inner dicts are ordered sets.
        self.group_things: dict[str, dict[str, None]] = {}
        self.thing_group_names: dict[str, dict[str, None]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.policy_targets: dict[str, dict[str, None]] = {}
        self.target_policies: dict[str, dict[str, None]] = {}
        # principal ARN/identity <-> thing name; the value on thing_principals is the thingPrincipalType.
        self.thing_principals: dict[str, dict[str, str]] = {}
        self.principal_things: dict[str, dict[str, None]] = {}

    # ---- cross-mixin helpers ----

    def _thing_record(self, name: str) -> dict[str, Any]:
        record = self.things.get(name)
        if record is None:
            raise not_found(f"Thing {name} cannot be found.")
        return record

    def _principal_thing_names(self, principal_arn: str) -> list[str]:
        return list(self.principal_things.get(principal_arn, ()))

    def _principal_policy_names(self, principal_arn: str) -> list[str]:
        return list(self.target_policies.get(principal_arn, ()))

    # ---- things ----

    def _thing_type_for_assignment(self, name: str) -> dict[str, Any]:
        _check_name(name, "thingTypeName")
        thing_type = self.thing_types.get(name)
        if thing_type is None:
            raise not_found(f"Thing Type {name} cannot be found.")
        if thing_type["thingTypeMetadata"]["deprecated"]:
            raise invalid_request(f"Can not create new thing with deprecated thing type: {name}")
        return thing_type

    @staticmethod
    def _check_attribute_count(attributes: dict[str, str], thing_type_name: str | None) -> None:
        limit = MAX_ATTRIBUTES_WITH_TYPE if thing_type_name else MAX_ATTRIBUTES_WITHOUT_TYPE
        if len(attributes) > limit:
            kind = "with" if thing_type_name else "without"
            raise invalid_request(f"A thing {kind} a thing type can have at most {limit} attributes")

    def create_thing(
        self,
        thingName: str,
        thingTypeName: str | None = None,
        attributePayload: dict[str, Any] | None = None,
        billingGroupName: str | None = None,
    ) -> dict[str, Any]:
        _check_name(thingName, "thingName")
        attributes = _checked_attributes((attributePayload or {}).get("attributes"))
        existing = self.things.get(thingName)
        if existing is not None:
            # CreateThing is idempotent for the same configuration.
            if (
                existing.get("thingTypeName") == thingTypeName
                and existing["attributes"] == attributes
                and existing.get("billingGroupName") == billingGroupName
            ):
                return {k: existing[k] for k in ("thingName", "thingArn", "thingId")}
            raise already_exists(
                f"Thing {thingName} already exists in account with different attributes",
                existing["thingId"],
                existing["thingArn"],
            )
        if thingTypeName is not None:
            self._thing_type_for_assignment(thingTypeName)
        self._check_attribute_count(attributes, thingTypeName)
        if billingGroupName is not None:
            self._billing_group_record(billingGroupName)
        record = {
            "thingName": thingName,
            "thingId": str(uuid.uuid4()),
            "thingArn": self.arn(f"thing/{thingName}"),
            "thingTypeName": thingTypeName,
            "attributes": attributes,
            "version": 1,
            "billingGroupName": billingGroupName,
        }
        self.things[thingName] = record
        if billingGroupName is not None:
            self.billing_groups[billingGroupName]["things"][thingName] = None
        return {"thingName": thingName, "thingArn": record["thingArn"], "thingId": record["thingId"]}

    def describe_thing(self, thingName: str) -> dict[str, Any]:
        record = self._thing_record(_check_name(thingName, "thingName"))
        result = {k: v for k, v in record.items() if v is not None}
        result["attributes"] = dict(record["attributes"])
        result["defaultClientId"] = thingName
        return result

    def update_thing(
        self,
        thingName: str,
        thingTypeName: str | None = None,
        attributePayload: dict[str, Any] | None = None,
        expectedVersion: int | None = None,
        removeThingType: bool = False,
    ) -> dict[str, Any]:
        record = self._thing_record(_check_name(thingName, "thingName"))
        if thingTypeName is not None and removeThingType:
            raise invalid_request("Cannot set a thing type and remove the thing type in the same request")
        self._check_version(record, expectedVersion, f"thing {thingName}")
        type_name = record["thingTypeName"]
        if removeThingType:
            type_name = None
        elif thingTypeName is not None:
            self._thing_type_for_assignment(thingTypeName)
            type_name = thingTypeName
        attributes = _merged_attributes(record["attributes"], attributePayload)
        self._check_attribute_count(attributes, type_name)
        record["thingTypeName"] = type_name
        record["attributes"] = attributes
        record["version"] += 1
        return {}

    @staticmethod
    def _check_version(record: dict[str, Any], expected: int | None, what: str) -> None:
        if expected is not None and expected != record["version"]:
            raise IotError(
                "VersionConflictException", f"The version for {what} does not match the expected version."
            )

    def delete_thing(self, thingName: str, expectedVersion: int | None = None) -> dict[str, Any]:
        _check_name(thingName, "thingName")
        record = self.things.get(thingName)
        if record is None:
            return {}  # AWS: deleting a thing that does not exist succeeds
        self._check_version(record, expectedVersion, f"thing {thingName}")
        if self.thing_principals.get(thingName):
            raise invalid_request(
                f"Cannot delete. Thing {thingName} is still attached to one or more principals"
            )
        for group in self.thing_group_names.pop(thingName, {}):
            self.group_things[group].pop(thingName, None)
        if record["billingGroupName"]:
            self.billing_groups[record["billingGroupName"]]["things"].pop(thingName, None)
        self.thing_principals.pop(thingName, None)
        del self.things[thingName]
        return {}

    def list_things(
        self,
        nextToken: str | None = None,
        maxResults: int | None = None,
        attributeName: str | None = None,
        attributeValue: str | None = None,
        thingTypeName: str | None = None,
        usePrefixAttributeValue: bool = False,
    ) -> dict[str, Any]:
        if attributeValue is not None and attributeName is None:
            raise invalid_request("attributeValue requires attributeName")
        records = [
            r
            for r in self.things.values()
            if (thingTypeName is None or r["thingTypeName"] == thingTypeName)
            and (
                attributeName is None
                or self._attribute_matches(r, attributeName, attributeValue, usePrefixAttributeValue)
            )
        ]
        page, token = paginate(records, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        things = []
        for r in page:
            item = {k: r[k] for k in ("thingName", "thingArn", "version")}
            item["attributes"] = dict(r["attributes"])
            if r["thingTypeName"]:
                item["thingTypeName"] = r["thingTypeName"]
            things.append(item)
        return _page_result("things", things, "nextToken", token)

    @staticmethod
    def _attribute_matches(record: dict[str, Any], name: str, value: str | None, prefix: bool) -> bool:
        actual = record["attributes"].get(name)
        if actual is None:
            return False
        if value is None:
            return True
        return actual.startswith(value) if prefix else actual == value

    # ---- thing types ----

    def create_thing_type(
        self,
        thingTypeName: str,
        thingTypeProperties: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        _check_name(thingTypeName, "thingTypeName")
        properties = dict(thingTypeProperties or {})
        _check_description(properties.get("thingTypeDescription"), "thingTypeDescription")
        for name in properties.get("searchableAttributes") or []:
            _check_name(name, "searchableAttributes", _ATTRIBUTE_NAME)
        if len(properties.get("searchableAttributes") or []) > 3:
            raise invalid_request("A thing type can have at most 3 searchable attributes")
        existing = self.thing_types.get(thingTypeName)
        if existing is not None:
            if existing["thingTypeProperties"] != properties:
                raise already_exists(
                    f"Thing Type {thingTypeName} already exists with different properties",
                    existing["thingTypeId"],
                    existing["thingTypeArn"],
                )
        else:
            existing = self.thing_types[thingTypeName] = {
                "thingTypeName": thingTypeName,
                "thingTypeId": str(uuid.uuid4()),
                "thingTypeArn": self.arn(f"thingtype/{thingTypeName}"),
                "thingTypeProperties": properties,
                "thingTypeMetadata": {"deprecated": False, "creationDate": self.now()},
                "tags": list(tags or []),
            }
        return {k: existing[k] for k in ("thingTypeName", "thingTypeArn", "thingTypeId")}

    def _thing_type_record(self, name: str) -> dict[str, Any]:
        record = self.thing_types.get(_check_name(name, "thingTypeName"))
        if record is None:
            raise not_found(f"Thing Type {name} cannot be found.")
        return record

    @staticmethod
    def _thing_type_definition(record: dict[str, Any]) -> dict[str, Any]:
        return {
            "thingTypeName": record["thingTypeName"],
            "thingTypeArn": record["thingTypeArn"],
            "thingTypeProperties": json.loads(json.dumps(record["thingTypeProperties"])),
            "thingTypeMetadata": dict(record["thingTypeMetadata"]),
        }

    def describe_thing_type(self, thingTypeName: str) -> dict[str, Any]:
        record = self._thing_type_record(thingTypeName)
        return {"thingTypeId": record["thingTypeId"], **self._thing_type_definition(record)}

    def list_thing_types(
        self, nextToken: str | None = None, maxResults: int | None = None, thingTypeName: str | None = None
    ) -> dict[str, Any]:
        records = [
            r
            for r in self.thing_types.values()
            if thingTypeName is None or r["thingTypeName"] == thingTypeName
        ]
        page, token = paginate(records, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return _page_result("thingTypes", [self._thing_type_definition(r) for r in page], "nextToken", token)

    def deprecate_thing_type(self, thingTypeName: str, undoDeprecate: bool = False) -> dict[str, Any]:
        metadata = self._thing_type_record(thingTypeName)["thingTypeMetadata"]
        if undoDeprecate:
            metadata["deprecated"] = False
            metadata.pop("deprecationDate", None)
        else:
            metadata["deprecated"] = True
            metadata["deprecationDate"] = self.now()
        return {}

    def delete_thing_type(self, thingTypeName: str) -> dict[str, Any]:
        record = self._thing_type_record(thingTypeName)
        if not record["thingTypeMetadata"]["deprecated"]:
            raise invalid_request(f"Thing type {thingTypeName} must be deprecated before it can be deleted")
        if any(t["thingTypeName"] == thingTypeName for t in self.things.values()):
            raise invalid_request(f"Thing type {thingTypeName} is still associated with one or more things")
        del self.thing_types[thingTypeName]
        return {}

    # ---- thing groups ----

    def _group_record(self, name: str) -> dict[str, Any]:
        record = self.thing_groups.get(_check_name(name, "thingGroupName"))
        if record is None:
            raise not_found(f"Thing Group {name} cannot be found.")
        return record

    def _group_ancestors(self, name: str) -> list[str]:
        """Names from the root down to the parent of ``name``."""
        chain: list[str] = []
        parent = self.thing_groups[name]["parentGroupName"]
        while parent is not None:
            chain.append(parent)
            parent = self.thing_groups[parent]["parentGroupName"]
        return chain[::-1]

    def _group_descendants(self, name: str) -> list[str]:
        found: list[str] = []
        frontier = [name]
        while frontier:
            children = [g for g, r in self.thing_groups.items() if r["parentGroupName"] in frontier]
            found.extend(children)
            frontier = children
        return found

    def create_thing_group(
        self,
        thingGroupName: str,
        parentGroupName: str | None = None,
        thingGroupProperties: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        _check_name(thingGroupName, "thingGroupName")
        properties = dict(thingGroupProperties or {})
        _check_description(properties.get("thingGroupDescription"), "thingGroupDescription")
        if "attributePayload" in properties:
            properties["attributePayload"] = {
                "attributes": _checked_attributes(properties["attributePayload"].get("attributes"))
            }
        existing = self.thing_groups.get(thingGroupName)
        if existing is not None:
            # Same name, same parent and properties: AWS returns the existing group.
            if (
                existing["thingGroupProperties"] != properties
                or existing["parentGroupName"] != parentGroupName
            ):
                raise already_exists(
                    f"Thing Group {thingGroupName} already exists in current account "
                    "with different properties",
                    existing["thingGroupId"],
                    existing["thingGroupArn"],
                )
            return {k: existing[k] for k in ("thingGroupName", "thingGroupArn", "thingGroupId")}
        if parentGroupName is not None:
            self._group_record(parentGroupName)
            if len(self._group_ancestors(parentGroupName)) + 2 > MAX_GROUP_DEPTH:
                raise invalid_request(f"A thing group hierarchy can be at most {MAX_GROUP_DEPTH} levels deep")
            children = sum(1 for r in self.thing_groups.values() if r["parentGroupName"] == parentGroupName)
            if children >= MAX_CHILD_GROUPS:
                raise invalid_request(
                    f"A thing group can have at most {MAX_CHILD_GROUPS} direct child groups"
                )
        record = {
            "thingGroupName": thingGroupName,
            "thingGroupId": str(uuid.uuid4()),
            "thingGroupArn": self.arn(f"thinggroup/{thingGroupName}"),
            "version": 1,
            "thingGroupProperties": properties,
            "parentGroupName": parentGroupName,
            "creationDate": self.now(),
            "tags": list(tags or []),
        }
        self.thing_groups[thingGroupName] = record
        self.group_things[thingGroupName] = {}
        return {k: record[k] for k in ("thingGroupName", "thingGroupArn", "thingGroupId")}

    def describe_thing_group(self, thingGroupName: str) -> dict[str, Any]:
        record = self._group_record(thingGroupName)
        metadata: dict[str, Any] = {"creationDate": record["creationDate"]}
        if record["parentGroupName"] is not None:
            metadata["parentGroupName"] = record["parentGroupName"]
            metadata["rootToParentThingGroups"] = [
                {"groupName": g, "groupArn": self.thing_groups[g]["thingGroupArn"]}
                for g in self._group_ancestors(thingGroupName)
            ]
        return {
            "thingGroupName": record["thingGroupName"],
            "thingGroupId": record["thingGroupId"],
            "thingGroupArn": record["thingGroupArn"],
            "version": record["version"],
            "thingGroupProperties": json.loads(json.dumps(record["thingGroupProperties"])),
            "thingGroupMetadata": metadata,
        }

    def update_thing_group(
        self, thingGroupName: str, thingGroupProperties: dict[str, Any], expectedVersion: int | None = None
    ) -> dict[str, Any]:
        record = self._group_record(thingGroupName)
        self._check_version(record, expectedVersion, f"thing group {thingGroupName}")
        _check_description(thingGroupProperties.get("thingGroupDescription"), "thingGroupDescription")
        properties = record["thingGroupProperties"]
        if "thingGroupDescription" in thingGroupProperties:
            properties["thingGroupDescription"] = thingGroupProperties["thingGroupDescription"]
        if "attributePayload" in thingGroupProperties:
            current = properties.get("attributePayload", {}).get("attributes", {})
            properties["attributePayload"] = {
                "attributes": _merged_attributes(current, thingGroupProperties["attributePayload"])
            }
        record["version"] += 1
        return {"version": record["version"]}

    def delete_thing_group(self, thingGroupName: str, expectedVersion: int | None = None) -> dict[str, Any]:
        record = self.thing_groups.get(_check_name(thingGroupName, "thingGroupName"))
        if record is None:
            return {}  # ResourceNotFound is not modeled for DeleteThingGroup: deleting nothing succeeds
        self._check_version(record, expectedVersion, f"thing group {thingGroupName}")
        if any(r["parentGroupName"] == thingGroupName for r in self.thing_groups.values()):
            raise invalid_request(
                f"Cannot delete thing group : {thingGroupName} "
                "when there are still child groups attached to it"
            )
        for thing in self.group_things.pop(thingGroupName, {}):
            self.thing_group_names[thing].pop(thingGroupName, None)
        for policy in self.target_policies.pop(record["thingGroupArn"], {}):
            self.policy_targets[policy].pop(record["thingGroupArn"], None)
        del self.thing_groups[thingGroupName]
        return {}

    def list_thing_groups(
        self,
        nextToken: str | None = None,
        maxResults: int | None = None,
        parentGroup: str | None = None,
        namePrefixFilter: str | None = None,
        recursive: bool | None = None,
    ) -> dict[str, Any]:
        if parentGroup is not None:
            self._group_record(parentGroup)
            if recursive:
                names = self._group_descendants(parentGroup)
            else:
                names = [g for g, r in self.thing_groups.items() if r["parentGroupName"] == parentGroup]
        elif recursive is False:
            names = [g for g, r in self.thing_groups.items() if r["parentGroupName"] is None]
        else:
            names = list(self.thing_groups)
        if namePrefixFilter:
            names = [g for g in names if g.startswith(namePrefixFilter)]
        page, token = paginate(names, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return _page_result("thingGroups", [self._name_and_arn(g) for g in page], "nextToken", token)

    def _name_and_arn(self, group: str) -> dict[str, str]:
        return {"groupName": group, "groupArn": self.thing_groups[group]["thingGroupArn"]}

    def _resolve_group(self, name: str | None, arn: str | None) -> str:
        if name is None and arn is None:
            raise invalid_request(
                "Both thingGroupArn and thingGroupName are empty. Need to specify at least one of them"
            )
        if name is not None:
            record = self._group_record(name)
            if arn is not None and record["thingGroupArn"] != arn:
                raise invalid_request("thingGroupArn does not match the specified thingGroupName")
            return name
        prefix = self.arn("thinggroup/")
        if not arn.startswith(prefix) or arn[len(prefix) :] not in self.thing_groups:  # type: ignore[union-attr]
            raise not_found(f"Thing Group {arn} cannot be found.")
        return arn[len(prefix) :]  # type: ignore[index]

    def _resolve_thing(self, name: str | None, arn: str | None) -> str:
        if name is None and arn is None:
            raise invalid_request(
                "Both thingArn and thingName are empty. Need to specify at least one of them"
            )
        if name is not None:
            record = self._thing_record(_check_name(name, "thingName"))
            if arn is not None and record["thingArn"] != arn:
                raise invalid_request("thingArn does not match the specified thingName")
            return name
        prefix = self.arn("thing/")
        if not arn.startswith(prefix) or arn[len(prefix) :] not in self.things:  # type: ignore[union-attr]
            raise not_found(f"Thing {arn} cannot be found.")
        return arn[len(prefix) :]  # type: ignore[index]

    def _add_to_group(self, thing: str, group: str) -> None:
        current = self.thing_group_names.setdefault(thing, {})
        if group in current:
            return  # attaches are idempotent
        if len(current) >= MAX_GROUPS_PER_THING:
            raise invalid_request(f"A thing can be a member of at most {MAX_GROUPS_PER_THING} thing groups")
        root = ([*self._group_ancestors(group), group])[0]
        for other in current:
            if ([*self._group_ancestors(other), other])[0] == root:
                raise invalid_request(
                    f"Thing {thing} is already in thing group {other} of the same hierarchy as {group}"
                )
        current[group] = None
        self.group_things[group][thing] = None

    def _remove_from_group(self, thing: str, group: str) -> None:
        self.thing_group_names.get(thing, {}).pop(group, None)
        self.group_things[group].pop(thing, None)

    def add_thing_to_thing_group(
        self,
        thingGroupName: str | None = None,
        thingGroupArn: str | None = None,
        thingName: str | None = None,
        thingArn: str | None = None,
        overrideDynamicGroups: bool = False,
    ) -> dict[str, Any]:
        group = self._resolve_group(thingGroupName, thingGroupArn)
        thing = self._resolve_thing(thingName, thingArn)
        self._add_to_group(thing, group)
        return {}

    def remove_thing_from_thing_group(
        self,
        thingGroupName: str | None = None,
        thingGroupArn: str | None = None,
        thingName: str | None = None,
        thingArn: str | None = None,
    ) -> dict[str, Any]:
        group = self._resolve_group(thingGroupName, thingGroupArn)
        thing = self._resolve_thing(thingName, thingArn)
        self._remove_from_group(thing, group)
        return {}

    def update_thing_groups_for_thing(
        self,
        thingName: str | None = None,
        thingGroupsToAdd: list[str] | None = None,
        thingGroupsToRemove: list[str] | None = None,
        overrideDynamicGroups: bool = False,
    ) -> dict[str, Any]:
        thing = self._resolve_thing(thingName, None)
        to_add = [self._resolve_group(g, None) for g in thingGroupsToAdd or []]
        to_remove = [self._resolve_group(g, None) for g in thingGroupsToRemove or []]
        for group in to_remove:
            self._remove_from_group(thing, group)
        for group in to_add:
            self._add_to_group(thing, group)
        return {}

    def list_thing_groups_for_thing(
        self, thingName: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        self._thing_record(_check_name(thingName, "thingName"))
        page, token = paginate(
            list(self.thing_group_names.get(thingName, ())), nextToken, maxResults, REGISTRY_PAGE_SIZE
        )
        return _page_result("thingGroups", [self._name_and_arn(g) for g in page], "nextToken", token)

    def list_things_in_thing_group(
        self,
        thingGroupName: str,
        recursive: bool = False,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        self._group_record(thingGroupName)
        groups = [thingGroupName, *(self._group_descendants(thingGroupName) if recursive else [])]
        things = list(dict.fromkeys(t for g in groups for t in self.group_things[g]))
        page, token = paginate(things, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return _page_result("things", page, "nextToken", token)

    # ---- billing groups (enough for CreateThing's billingGroupName and templates' BillingGroup) ----

    def _billing_group_record(self, name: str) -> dict[str, Any]:
        record = self.billing_groups.get(_check_name(name, "billingGroupName"))
        if record is None:
            raise not_found(f"Billing Group {name} cannot be found.")
        return record

    def create_billing_group(
        self,
        billingGroupName: str,
        billingGroupProperties: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        _check_name(billingGroupName, "billingGroupName")
        properties = dict(billingGroupProperties or {})
        _check_description(properties.get("billingGroupDescription"), "billingGroupDescription")
        existing = self.billing_groups.get(billingGroupName)
        if existing is not None and existing["billingGroupProperties"] != properties:
            raise already_exists(
                f"Billing Group {billingGroupName} already exists with different properties",
                existing["billingGroupId"],
                existing["billingGroupArn"],
            )
        if existing is None:
            existing = self.billing_groups[billingGroupName] = {
                "billingGroupName": billingGroupName,
                "billingGroupId": str(uuid.uuid4()),
                "billingGroupArn": self.arn(f"billinggroup/{billingGroupName}"),
                "version": 1,
                "billingGroupProperties": properties,
                "creationDate": self.now(),
                "things": {},
            }
        return {k: existing[k] for k in ("billingGroupName", "billingGroupArn", "billingGroupId")}

    def describe_billing_group(self, billingGroupName: str) -> dict[str, Any]:
        record = self._billing_group_record(billingGroupName)
        return {
            "billingGroupName": record["billingGroupName"],
            "billingGroupId": record["billingGroupId"],
            "billingGroupArn": record["billingGroupArn"],
            "version": record["version"],
            "billingGroupProperties": dict(record["billingGroupProperties"]),
            "billingGroupMetadata": {"creationDate": record["creationDate"]},
        }

    def delete_billing_group(
        self, billingGroupName: str, expectedVersion: int | None = None
    ) -> dict[str, Any]:
        record = self.billing_groups.get(_check_name(billingGroupName, "billingGroupName"))
        if record is None:
            return {}
        self._check_version(record, expectedVersion, f"billing group {billingGroupName}")
        for thing in record["things"]:
            self.things[thing]["billingGroupName"] = None
        del self.billing_groups[billingGroupName]
        return {}

    def add_thing_to_billing_group(
        self,
        billingGroupName: str | None = None,
        billingGroupArn: str | None = None,
        thingName: str | None = None,
        thingArn: str | None = None,
    ) -> dict[str, Any]:
        if billingGroupName is None and billingGroupArn is not None:
            billingGroupName = billingGroupArn.rsplit("/", 1)[-1]
        if billingGroupName is None:
            raise invalid_request("Both billingGroupArn and billingGroupName are empty")
        group = self._billing_group_record(billingGroupName)
        thing = self._thing_record(self._resolve_thing(thingName, thingArn))
        previous = thing["billingGroupName"]
        if previous and previous != billingGroupName:
            self.billing_groups[previous]["things"].pop(thing["thingName"], None)
        thing["billingGroupName"] = billingGroupName
        group["things"][thing["thingName"]] = None
        return {}

    # ---- policies ----

    def create_policy(
        self, policyName: str, policyDocument: str, tags: list[dict[str, str]] | None = None
    ) -> dict[str, Any]:
        _check_name(policyName, "policyName", _POLICY_NAME)
        existing = self.policies.get(policyName)
        if existing is not None:
            raise already_exists(
                f"Policy cannot be created - name already exists (name={policyName})",
                policyName,
                existing["policyArn"],
            )
        _check_policy_document(policyDocument)
        now = self.now()
        record = self.policies[policyName] = {
            "policyName": policyName,
            "policyArn": self.arn(f"policy/{policyName}"),
            "policyDocument": policyDocument,
            "defaultVersionId": "1",
            "creationDate": now,
            "lastModifiedDate": now,
            "generationId": hashlib.sha256(f"{policyName}:{now}".encode()).hexdigest(),
            "tags": list(tags or []),
        }
        self.policy_targets[policyName] = {}
        return {
            "policyName": policyName,
            "policyArn": record["policyArn"],
            "policyDocument": policyDocument,
            "policyVersionId": "1",
        }

    def _policy_record(self, name: str) -> dict[str, Any]:
        record = self.policies.get(_check_name(name, "policyName", _POLICY_NAME))
        if record is None:
            raise not_found(f"Policy {name} cannot be found.")
        return record

    def get_policy(self, policyName: str) -> dict[str, Any]:
        record = self._policy_record(policyName)
        return {k: v for k, v in record.items() if k != "tags"}

    def delete_policy(self, policyName: str) -> dict[str, Any]:
        self._policy_record(policyName)
        if self.policy_targets.get(policyName):
            raise IotError(
                "DeleteConflictException",
                "The policy cannot be deleted as the policy is attached to one or more principals "
                f"(name={policyName})",
            )
        del self.policies[policyName]
        self.policy_targets.pop(policyName, None)
        return {}

    def list_policies(
        self, marker: str | None = None, pageSize: int | None = None, ascendingOrder: bool = False
    ) -> dict[str, Any]:
        records = list(self.policies.values())
        if not ascendingOrder:
            records.reverse()
        page, token = paginate(records, marker, pageSize, MARKER_PAGE_SIZE)
        return _page_result(
            "policies",
            [{"policyName": r["policyName"], "policyArn": r["policyArn"]} for r in page],
            "nextMarker",
            token,
        )

    def _check_policy_target(self, target: str) -> None:
        """Targets are certificate ARNs, thing group ARNs or Cognito identity ids; IoT ones must exist."""
        if not isinstance(target, str) or not target:
            raise invalid_request(
                "target must be a certificate ARN, a thing group ARN or a Cognito identity id"
            )
        if target.startswith(self.arn("cert/")):
            self._certificate_id_from_arn(target)
        elif target.startswith(self.arn("thinggroup/")):
            self._resolve_group(None, target)
        elif not _COGNITO_IDENTITY.fullmatch(target):
            raise invalid_request(f"Invalid policy target: {target}")

    def attach_policy(self, policyName: str, target: str) -> dict[str, Any]:
        self._policy_record(policyName)
        self._check_policy_target(target)
        attached = self.target_policies.setdefault(target, {})
        if policyName in attached:
            return {}
        if len(attached) >= MAX_POLICIES_PER_TARGET:
            raise limit_exceeded(f"At most {MAX_POLICIES_PER_TARGET} policies can be attached to {target}")
        attached[policyName] = None
        self.policy_targets[policyName][target] = None
        return {}

    def detach_policy(self, policyName: str, target: str) -> dict[str, Any]:
        self._policy_record(policyName)
        self.target_policies.get(target, {}).pop(policyName, None)
        self.policy_targets[policyName].pop(target, None)
        return {}

    def list_attached_policies(
        self, target: str, recursive: bool = False, marker: str | None = None, pageSize: int | None = None
    ) -> dict[str, Any]:
        try:
            self._check_policy_target(target)
        except IotError as exc:
            if exc.code != "InvalidRequestException":
                raise
            raise not_found(f"The target {target} does not exist") from None
        names = list(self.target_policies.get(target, ()))
        if recursive and target.startswith(self.arn("thinggroup/")):
            group = self._resolve_group(None, target)
            for ancestor in reversed(self._group_ancestors(group)):
                names.extend(self.target_policies.get(self.thing_groups[ancestor]["thingGroupArn"], ()))
            names = list(dict.fromkeys(names))
        page, token = paginate(names, marker, pageSize, MARKER_PAGE_SIZE)
        policies = [{"policyName": n, "policyArn": self.policies[n]["policyArn"]} for n in page]
        return _page_result("policies", policies, "nextMarker", token)

    def list_targets_for_policy(
        self, policyName: str, marker: str | None = None, pageSize: int | None = None
    ) -> dict[str, Any]:
        self._policy_record(policyName)
        page, token = paginate(list(self.policy_targets[policyName]), marker, pageSize, MARKER_PAGE_SIZE)
        return _page_result("targets", page, "nextMarker", token)

    # ---- thing principals ----

    def _check_principal(self, principal: str) -> None:
        if not isinstance(principal, str) or not principal:
            raise invalid_request("principal must be a certificate ARN or a Cognito identity id")
        if principal.startswith("arn:"):
            if not principal.startswith(self.arn("cert/")):
                raise invalid_request(f"Invalid principal: {principal}")
            self._certificate_id_from_arn(principal)
        elif not _COGNITO_IDENTITY.fullmatch(principal):
            raise invalid_request(f"Invalid principal: {principal}")

    def attach_thing_principal(
        self, thingName: str, principal: str, thingPrincipalType: str | None = None
    ) -> dict[str, Any]:
        self._thing_record(_check_name(thingName, "thingName"))
        self._check_principal(principal)
        principal_type = thingPrincipalType or "NON_EXCLUSIVE_THING"
        if principal_type not in ("EXCLUSIVE_THING", "NON_EXCLUSIVE_THING"):
            raise invalid_request("thingPrincipalType must be EXCLUSIVE_THING or NON_EXCLUSIVE_THING")
        others = [t for t in self.principal_things.get(principal, ()) if t != thingName]
        if others and (
            principal_type == "EXCLUSIVE_THING"
            or any(self.thing_principals[t][principal] == "EXCLUSIVE_THING" for t in others)
        ):
            raise invalid_request(f"Principal {principal} is attached exclusively and cannot be shared")
        self.thing_principals.setdefault(thingName, {})[principal] = principal_type
        self.principal_things.setdefault(principal, {})[thingName] = None
        return {}

    def detach_thing_principal(self, thingName: str, principal: str) -> dict[str, Any]:
        self._thing_record(_check_name(thingName, "thingName"))
        self._check_principal(principal)
        self.thing_principals.get(thingName, {}).pop(principal, None)
        things = self.principal_things.get(principal)
        if things is not None:
            things.pop(thingName, None)
            if not things:
                del self.principal_things[principal]
        return {}

    def list_thing_principals(
        self, thingName: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        self._thing_record(_check_name(thingName, "thingName"))
        principals = list(self.thing_principals.get(thingName, ()))
        page, token = paginate(principals, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return _page_result("principals", page, "nextToken", token)

    def list_principal_things(
        self, principal: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        try:
            self._check_principal(principal)
        except IotError as exc:
            if exc.code != "InvalidRequestException":
                raise
            raise not_found(f"The principal {principal} does not exist") from None
        things = self._principal_thing_names(principal)
        page, token = paginate(things, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return _page_result("things", page, "nextToken", token)
