"""Things and thing types: create, describe, update, delete and list them with AWS's rules."""

from __future__ import annotations

import json
import uuid
from typing import Any

from iot_emulator.errors import IotError, already_exists, invalid_request, not_found
from iot_emulator.names import (
    ATTRIBUTE_NAME,
    check_description,
    check_name,
    checked_attributes,
    merged_attributes,
)
from iot_emulator.paging import REGISTRY_PAGE_SIZE, page_result, paginate
from iot_emulator.service_base import ServiceBase

MAX_ATTRIBUTES_WITHOUT_TYPE = 3
MAX_ATTRIBUTES_WITH_TYPE = 50


class ThingsMixin(ServiceBase):
    """The thing registry's things and thing types."""

    def _thing_record(self, name: str) -> dict[str, Any]:
        record = self.state.things.get(name)
        if record is None:
            raise not_found(f"Thing {name} cannot be found.")
        return record

    # ---- things ----

    def _thing_type_for_assignment(self, name: str) -> dict[str, Any]:
        check_name(name, "thingTypeName")
        thing_type = self.state.thing_types.get(name)
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
        check_name(thingName, "thingName")
        attributes = checked_attributes((attributePayload or {}).get("attributes"))
        existing = self.state.things.get(thingName)
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
        self.state.things[thingName] = record
        if billingGroupName is not None:
            self.state.billing_groups[billingGroupName]["things"][thingName] = None
        return {"thingName": thingName, "thingArn": record["thingArn"], "thingId": record["thingId"]}

    def describe_thing(self, thingName: str) -> dict[str, Any]:
        record = self._thing_record(check_name(thingName, "thingName"))
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
        record = self._thing_record(check_name(thingName, "thingName"))
        if thingTypeName is not None and removeThingType:
            raise invalid_request("Cannot set a thing type and remove the thing type in the same request")
        self._check_version(record, expectedVersion, f"thing {thingName}")
        type_name = record["thingTypeName"]
        if removeThingType:
            type_name = None
        elif thingTypeName is not None:
            self._thing_type_for_assignment(thingTypeName)
            type_name = thingTypeName
        attributes = merged_attributes(record["attributes"], attributePayload)
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
        check_name(thingName, "thingName")
        record = self.state.things.get(thingName)
        if record is None:
            return {}  # AWS: deleting a thing that does not exist succeeds
        self._check_version(record, expectedVersion, f"thing {thingName}")
        if self.state.thing_principals.get(thingName) or self._still_propagating(f"thing:{thingName}"):
            raise invalid_request(
                f"Cannot delete. Thing {thingName} is still attached to one or more principals"
            )
        for group in self.state.thing_group_names.pop(thingName, {}):
            self.state.group_things[group].pop(thingName, None)
        if record["billingGroupName"]:
            self.state.billing_groups[record["billingGroupName"]]["things"].pop(thingName, None)
        self.state.thing_principals.pop(thingName, None)
        del self.state.things[thingName]
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
            for r in self.state.things.values()
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
        return page_result("things", things, "nextToken", token)

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
        check_name(thingTypeName, "thingTypeName")
        properties = dict(thingTypeProperties or {})
        check_description(properties.get("thingTypeDescription"), "thingTypeDescription")
        for name in properties.get("searchableAttributes") or []:
            check_name(name, "searchableAttributes", ATTRIBUTE_NAME)
        if len(properties.get("searchableAttributes") or []) > 3:
            raise invalid_request("A thing type can have at most 3 searchable attributes")
        existing = self.state.thing_types.get(thingTypeName)
        if existing is not None:
            if existing["thingTypeProperties"] != properties:
                raise already_exists(
                    f"Thing Type {thingTypeName} already exists with different properties",
                    existing["thingTypeId"],
                    existing["thingTypeArn"],
                )
        else:
            existing = self.state.thing_types[thingTypeName] = {
                "thingTypeName": thingTypeName,
                "thingTypeId": str(uuid.uuid4()),
                "thingTypeArn": self.arn(f"thingtype/{thingTypeName}"),
                "thingTypeProperties": properties,
                "thingTypeMetadata": {"deprecated": False, "creationDate": self.now()},
                "tags": list(tags or []),
            }
        return {k: existing[k] for k in ("thingTypeName", "thingTypeArn", "thingTypeId")}

    def _thing_type_record(self, name: str) -> dict[str, Any]:
        record = self.state.thing_types.get(check_name(name, "thingTypeName"))
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
            for r in self.state.thing_types.values()
            if thingTypeName is None or r["thingTypeName"] == thingTypeName
        ]
        page, token = paginate(records, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return page_result("thingTypes", [self._thing_type_definition(r) for r in page], "nextToken", token)

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
        if any(t["thingTypeName"] == thingTypeName for t in self.state.things.values()):
            raise invalid_request(f"Thing type {thingTypeName} is still associated with one or more things")
        del self.state.thing_types[thingTypeName]
        return {}

    def _resolve_thing(self, name: str | None, arn: str | None) -> str:
        if name is None and arn is None:
            raise invalid_request(
                "Both thingArn and thingName are empty. Need to specify at least one of them"
            )
        if name is not None:
            record = self._thing_record(check_name(name, "thingName"))
            if arn is not None and record["thingArn"] != arn:
                raise invalid_request("thingArn does not match the specified thingName")
            return name
        prefix = self.arn("thing/")
        if not arn.startswith(prefix) or arn[len(prefix) :] not in self.state.things:  # type: ignore[union-attr]
            raise not_found(f"Thing {arn} cannot be found.")
        return arn[len(prefix) :]  # type: ignore[index]
