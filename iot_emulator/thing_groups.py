"""Thing groups (static, nested) and billing groups, with their membership limits."""

from __future__ import annotations

import json
import uuid
from typing import Any

from iot_emulator.errors import already_exists, invalid_request, not_found
from iot_emulator.names import check_description, check_name, checked_attributes, merged_attributes
from iot_emulator.paging import REGISTRY_PAGE_SIZE, page_result, paginate
from iot_emulator.service_base import ServiceBase

MAX_GROUPS_PER_THING = 10
MAX_GROUP_DEPTH = 7
MAX_CHILD_GROUPS = 100


class ThingGroupsMixin(ServiceBase):
    """Thing groups and billing groups; things themselves live in ThingsMixin."""

    # ---- thing groups ----

    def _group_record(self, name: str) -> dict[str, Any]:
        record = self.state.thing_groups.get(check_name(name, "thingGroupName"))
        if record is None:
            raise not_found(f"Thing Group {name} cannot be found.")
        return record

    def _group_ancestors(self, name: str) -> list[str]:
        """Names from the root down to the parent of ``name``."""
        chain: list[str] = []
        parent = self.state.thing_groups[name]["parentGroupName"]
        while parent is not None:
            chain.append(parent)
            parent = self.state.thing_groups[parent]["parentGroupName"]
        return chain[::-1]

    def _group_descendants(self, name: str) -> list[str]:
        found: list[str] = []
        frontier = [name]
        while frontier:
            children = [g for g, r in self.state.thing_groups.items() if r["parentGroupName"] in frontier]
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
        check_name(thingGroupName, "thingGroupName")
        properties = dict(thingGroupProperties or {})
        check_description(properties.get("thingGroupDescription"), "thingGroupDescription")
        if "attributePayload" in properties:
            properties["attributePayload"] = {
                "attributes": checked_attributes(properties["attributePayload"].get("attributes"))
            }
        existing = self.state.thing_groups.get(thingGroupName)
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
            children = sum(
                1 for r in self.state.thing_groups.values() if r["parentGroupName"] == parentGroupName
            )
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
        self.state.thing_groups[thingGroupName] = record
        self.state.group_things[thingGroupName] = {}
        return {k: record[k] for k in ("thingGroupName", "thingGroupArn", "thingGroupId")}

    def describe_thing_group(self, thingGroupName: str) -> dict[str, Any]:
        record = self._group_record(thingGroupName)
        metadata: dict[str, Any] = {"creationDate": record["creationDate"]}
        if record["parentGroupName"] is not None:
            metadata["parentGroupName"] = record["parentGroupName"]
            metadata["rootToParentThingGroups"] = [
                {"groupName": g, "groupArn": self.state.thing_groups[g]["thingGroupArn"]}
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
        check_description(thingGroupProperties.get("thingGroupDescription"), "thingGroupDescription")
        properties = record["thingGroupProperties"]
        if "thingGroupDescription" in thingGroupProperties:
            properties["thingGroupDescription"] = thingGroupProperties["thingGroupDescription"]
        if "attributePayload" in thingGroupProperties:
            current = properties.get("attributePayload", {}).get("attributes", {})
            properties["attributePayload"] = {
                "attributes": merged_attributes(current, thingGroupProperties["attributePayload"])
            }
        record["version"] += 1
        return {"version": record["version"]}

    def delete_thing_group(self, thingGroupName: str, expectedVersion: int | None = None) -> dict[str, Any]:
        record = self.state.thing_groups.get(check_name(thingGroupName, "thingGroupName"))
        if record is None:
            return {}  # ResourceNotFound is not modeled for DeleteThingGroup: deleting nothing succeeds
        self._check_version(record, expectedVersion, f"thing group {thingGroupName}")
        if any(r["parentGroupName"] == thingGroupName for r in self.state.thing_groups.values()):
            raise invalid_request(
                f"Cannot delete thing group : {thingGroupName} "
                "when there are still child groups attached to it"
            )
        for thing in self.state.group_things.pop(thingGroupName, {}):
            self.state.thing_group_names[thing].pop(thingGroupName, None)
        for policy in self.state.target_policies.pop(record["thingGroupArn"], {}):
            self.state.policy_targets[policy].pop(record["thingGroupArn"], None)
        del self.state.thing_groups[thingGroupName]
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
                names = [g for g, r in self.state.thing_groups.items() if r["parentGroupName"] == parentGroup]
        elif recursive is False:
            names = [g for g, r in self.state.thing_groups.items() if r["parentGroupName"] is None]
        else:
            names = list(self.state.thing_groups)
        if namePrefixFilter:
            names = [g for g in names if g.startswith(namePrefixFilter)]
        page, token = paginate(names, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return page_result("thingGroups", [self._name_and_arn(g) for g in page], "nextToken", token)

    def _name_and_arn(self, group: str) -> dict[str, str]:
        return {"groupName": group, "groupArn": self.state.thing_groups[group]["thingGroupArn"]}

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
        if not arn.startswith(prefix) or arn[len(prefix) :] not in self.state.thing_groups:  # type: ignore[union-attr]
            raise not_found(f"Thing Group {arn} cannot be found.")
        return arn[len(prefix) :]  # type: ignore[index]

    def _add_to_group(self, thing: str, group: str) -> None:
        current = self.state.thing_group_names.setdefault(thing, {})
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
        self.state.group_things[group][thing] = None

    def _remove_from_group(self, thing: str, group: str) -> None:
        self.state.thing_group_names.get(thing, {}).pop(group, None)
        self.state.group_things[group].pop(thing, None)

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
        self._thing_record(check_name(thingName, "thingName"))
        page, token = paginate(
            list(self.state.thing_group_names.get(thingName, ())), nextToken, maxResults, REGISTRY_PAGE_SIZE
        )
        return page_result("thingGroups", [self._name_and_arn(g) for g in page], "nextToken", token)

    def list_things_in_thing_group(
        self,
        thingGroupName: str,
        recursive: bool = False,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        self._group_record(thingGroupName)
        groups = [thingGroupName, *(self._group_descendants(thingGroupName) if recursive else [])]
        things = list(dict.fromkeys(t for g in groups for t in self.state.group_things[g]))
        page, token = paginate(things, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return page_result("things", page, "nextToken", token)

    # ---- billing groups (enough for CreateThing's billingGroupName and templates' BillingGroup) ----

    def _billing_group_record(self, name: str) -> dict[str, Any]:
        record = self.state.billing_groups.get(check_name(name, "billingGroupName"))
        if record is None:
            raise not_found(f"Billing Group {name} cannot be found.")
        return record

    def create_billing_group(
        self,
        billingGroupName: str,
        billingGroupProperties: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        check_name(billingGroupName, "billingGroupName")
        properties = dict(billingGroupProperties or {})
        check_description(properties.get("billingGroupDescription"), "billingGroupDescription")
        existing = self.state.billing_groups.get(billingGroupName)
        if existing is not None and existing["billingGroupProperties"] != properties:
            raise already_exists(
                f"Billing Group {billingGroupName} already exists with different properties",
                existing["billingGroupId"],
                existing["billingGroupArn"],
            )
        if existing is None:
            existing = self.state.billing_groups[billingGroupName] = {
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
        record = self.state.billing_groups.get(check_name(billingGroupName, "billingGroupName"))
        if record is None:
            return {}
        self._check_version(record, expectedVersion, f"billing group {billingGroupName}")
        for thing in record["things"]:
            self.state.things[thing]["billingGroupName"] = None
        del self.state.billing_groups[billingGroupName]
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
            self.state.billing_groups[previous]["things"].pop(thing["thingName"], None)
        thing["billingGroupName"] = billingGroupName
        group["things"][thing["thingName"]] = None
        return {}
