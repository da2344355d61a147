"""Policies, their targets, and the principals (certificates, Cognito identities) attached to things.

A policy record's ``policyDocument`` is its default version's; every version is in ``versions``
(include.policy_versions has the version operations).
"""

from __future__ import annotations

import hashlib
from typing import Any

from iot_emulator.errors import IotError, already_exists, invalid_request, limit_exceeded, not_found
from iot_emulator.limits import JsonTooDeep, parse_json
from iot_emulator.names import COGNITO_IDENTITY, POLICY_NAME, check_name
from iot_emulator.paging import MARKER_PAGE_SIZE, REGISTRY_PAGE_SIZE, page_result, paginate
from iot_emulator.service_base import ServiceBase

MAX_POLICIES_PER_TARGET = 10
MAX_POLICY_CHARS = 2048  # excluding whitespace


def check_policy_document(document: Any) -> None:
    if not isinstance(document, str):
        raise IotError("MalformedPolicyException", "Policy document must be a JSON string")
    if len("".join(document.split())) > MAX_POLICY_CHARS:
        raise IotError(
            "MalformedPolicyException",
            f"Policy document is too large: at most {MAX_POLICY_CHARS} characters excluding whitespace",
        )
    try:
        policy = parse_json(document)  # 2048 characters could nest 1024 levels: too deep for json.loads
    except JsonTooDeep as exc:
        raise IotError("MalformedPolicyException", f"Policy document {exc}") from None
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


class PoliciesMixin(ServiceBase):
    """Policies and their attachments, thing principals."""

    def _principal_thing_names(self, principal_arn: str) -> list[str]:
        return list(self.state.principal_things.get(principal_arn, ()))

    def _principal_policy_names(self, principal_arn: str) -> list[str]:
        return list(self.state.target_policies.get(principal_arn, ()))

    def create_policy(
        self, policyName: str, policyDocument: str, tags: list[dict[str, str]] | None = None
    ) -> dict[str, Any]:
        check_name(policyName, "policyName", POLICY_NAME)
        existing = self.state.policies.get(policyName)
        if existing is not None:
            raise already_exists(
                f"Policy cannot be created - name already exists (name={policyName})",
                policyName,
                existing["policyArn"],
            )
        check_policy_document(policyDocument)
        now = self.now()
        record = self.state.policies[policyName] = {
            "policyName": policyName,
            "policyArn": self.arn(f"policy/{policyName}"),
            "policyDocument": policyDocument,
            "defaultVersionId": "1",
            "creationDate": now,
            "lastModifiedDate": now,
            "generationId": hashlib.sha256(f"{policyName}:{now}".encode()).hexdigest(),
            "tags": list(tags or []),
            "versions": {"1": {"policyDocument": policyDocument, "creationDate": now}},
            "nextVersionId": 2,
        }
        self.state.policy_targets[policyName] = {}
        return {
            "policyName": policyName,
            "policyArn": record["policyArn"],
            "policyDocument": policyDocument,
            "policyVersionId": "1",
        }

    def _policy_record(self, name: str) -> dict[str, Any]:
        record = self.state.policies.get(check_name(name, "policyName", POLICY_NAME))
        if record is None:
            raise not_found(f"Policy {name} cannot be found.")
        return record

    def get_policy(self, policyName: str) -> dict[str, Any]:
        record = self._policy_record(policyName)
        return {k: v for k, v in record.items() if k not in ("tags", "versions", "nextVersionId")}

    def delete_policy(self, policyName: str) -> dict[str, Any]:
        record = self._policy_record(policyName)
        if self.state.policy_targets.get(policyName):
            raise IotError(
                "DeleteConflictException",
                "The policy cannot be deleted as the policy is attached to one or more principals "
                f"(name={policyName})",
            )
        if len(record["versions"]) > 1:
            raise IotError(
                "DeleteConflictException",
                f"The policy cannot be deleted as it has versions other than its default (name={policyName});"
                " delete them first (DeletePolicyVersion)",
            )
        del self.state.policies[policyName]
        self.state.policy_targets.pop(policyName, None)
        return {}

    def list_policies(
        self, marker: str | None = None, pageSize: int | None = None, ascendingOrder: bool = False
    ) -> dict[str, Any]:
        records = list(self.state.policies.values())
        if not ascendingOrder:
            records.reverse()
        page, token = paginate(records, marker, pageSize, MARKER_PAGE_SIZE)
        return page_result(
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
        elif not COGNITO_IDENTITY.fullmatch(target):
            raise invalid_request(f"Invalid policy target: {target}")

    def attach_policy(self, policyName: str, target: str) -> dict[str, Any]:
        self._policy_record(policyName)
        self._check_policy_target(target)
        attached = self.state.target_policies.setdefault(target, {})
        if policyName in attached:
            return {}
        if len(attached) >= MAX_POLICIES_PER_TARGET:
            raise limit_exceeded(f"At most {MAX_POLICIES_PER_TARGET} policies can be attached to {target}")
        attached[policyName] = None
        self.state.policy_targets[policyName][target] = None
        return {}

    def detach_policy(self, policyName: str, target: str) -> dict[str, Any]:
        self._policy_record(policyName)
        attached = self.state.target_policies.get(target, {})
        if policyName in attached:
            del attached[policyName]
            self._note_detach(f"policies:{target}")
        self.state.policy_targets[policyName].pop(target, None)
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
        names = list(self.state.target_policies.get(target, ()))
        if recursive and target.startswith(self.arn("thinggroup/")):
            group = self._resolve_group(None, target)
            for ancestor in reversed(self._group_ancestors(group)):
                names.extend(
                    self.state.target_policies.get(self.state.thing_groups[ancestor]["thingGroupArn"], ())
                )
            names = list(dict.fromkeys(names))
        page, token = paginate(names, marker, pageSize, MARKER_PAGE_SIZE)
        policies = [{"policyName": n, "policyArn": self.state.policies[n]["policyArn"]} for n in page]
        return page_result("policies", policies, "nextMarker", token)

    def list_targets_for_policy(
        self, policyName: str, marker: str | None = None, pageSize: int | None = None
    ) -> dict[str, Any]:
        self._policy_record(policyName)
        page, token = paginate(
            list(self.state.policy_targets[policyName]), marker, pageSize, MARKER_PAGE_SIZE
        )
        return page_result("targets", page, "nextMarker", token)

    # ---- thing principals ----

    def _check_principal(self, principal: str) -> None:
        if not isinstance(principal, str) or not principal:
            raise invalid_request("principal must be a certificate ARN or a Cognito identity id")
        if principal.startswith("arn:"):
            if not principal.startswith(self.arn("cert/")):
                raise invalid_request(f"Invalid principal: {principal}")
            self._certificate_id_from_arn(principal)
        elif not COGNITO_IDENTITY.fullmatch(principal):
            raise invalid_request(f"Invalid principal: {principal}")

    def attach_thing_principal(
        self, thingName: str, principal: str, thingPrincipalType: str | None = None
    ) -> dict[str, Any]:
        self._thing_record(check_name(thingName, "thingName"))
        self._check_principal(principal)
        principal_type = thingPrincipalType or "NON_EXCLUSIVE_THING"
        if principal_type not in ("EXCLUSIVE_THING", "NON_EXCLUSIVE_THING"):
            raise invalid_request("thingPrincipalType must be EXCLUSIVE_THING or NON_EXCLUSIVE_THING")
        others = [t for t in self.state.principal_things.get(principal, ()) if t != thingName]
        if others and (
            principal_type == "EXCLUSIVE_THING"
            or any(self.state.thing_principals[t][principal] == "EXCLUSIVE_THING" for t in others)
        ):
            raise invalid_request(f"Principal {principal} is attached exclusively and cannot be shared")
        self.state.thing_principals.setdefault(thingName, {})[principal] = principal_type
        self.state.principal_things.setdefault(principal, {})[thingName] = None
        return {}

    def detach_thing_principal(self, thingName: str, principal: str) -> dict[str, Any]:
        self._thing_record(check_name(thingName, "thingName"))
        self._check_principal(principal)
        if principal in self.state.thing_principals.get(thingName, {}):
            del self.state.thing_principals[thingName][principal]
            self._note_detach(f"thing:{thingName}", f"things:{principal}")
        things = self.state.principal_things.get(principal)
        if things is not None:
            things.pop(thingName, None)
            if not things:
                del self.state.principal_things[principal]
        return {}

    def list_thing_principals(
        self, thingName: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        self._thing_record(check_name(thingName, "thingName"))
        principals = list(self.state.thing_principals.get(thingName, ()))
        page, token = paginate(principals, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return page_result("principals", page, "nextToken", token)

    def list_thing_principals_v2(
        self,
        thingName: str,
        nextToken: str | None = None,
        maxResults: int | None = None,
        thingPrincipalType: str | None = None,
    ) -> dict[str, Any]:
        """ListThingPrincipals with each attachment's type, optionally only one type."""
        self._thing_record(check_name(thingName, "thingName"))
        attached = self.state.thing_principals.get(thingName, {})
        objects = [
            {"principal": principal, "thingPrincipalType": kind}
            for principal, kind in attached.items()
            if thingPrincipalType is None or kind == thingPrincipalType
        ]
        page, token = paginate(objects, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return page_result("thingPrincipalObjects", page, "nextToken", token)

    def _principal_for_listing(self, principal: str) -> None:
        try:
            self._check_principal(principal)
        except IotError as exc:
            if exc.code != "InvalidRequestException":
                raise
            raise not_found(f"The principal {principal} does not exist") from None

    def list_principal_things(
        self, principal: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        self._principal_for_listing(principal)
        things = self._principal_thing_names(principal)
        page, token = paginate(things, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return page_result("things", page, "nextToken", token)

    def list_principal_things_v2(
        self,
        principal: str,
        nextToken: str | None = None,
        maxResults: int | None = None,
        thingPrincipalType: str | None = None,
    ) -> dict[str, Any]:
        """ListPrincipalThings with each attachment's type, optionally only one type."""
        self._principal_for_listing(principal)
        objects = [
            {"thingName": name, "thingPrincipalType": self.state.thing_principals[name][principal]}
            for name in self._principal_thing_names(principal)
        ]
        if thingPrincipalType is not None:
            objects = [o for o in objects if o["thingPrincipalType"] == thingPrincipalType]
        page, token = paginate(objects, nextToken, maxResults, REGISTRY_PAGE_SIZE)
        return page_result("principalThingObjects", page, "nextToken", token)
