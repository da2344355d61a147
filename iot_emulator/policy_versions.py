"""Policy versions: create, list, get, delete them and choose the default, with AWS's five-version limit."""

from __future__ import annotations

import hashlib
from typing import Any

from iot_emulator.errors import IotError, delete_conflict, not_found
from iot_emulator.policies import PoliciesMixin, check_policy_document

MAX_POLICY_VERSIONS = 5  # "5 named policy versions" (aws-iot-facts.md 4.7)


class PolicyVersionsMixin(PoliciesMixin):
    """The versions of a policy; its record's policyDocument always follows the default version."""

    def _policy_version(self, policyName: str, policyVersionId: str) -> tuple[dict[str, Any], dict[str, Any]]:
        record = self._policy_record(policyName)
        version = record["versions"].get(str(policyVersionId))
        if version is None:
            raise not_found(f"Policy {policyName} has no version {policyVersionId}.")
        return record, version

    def create_policy_version(
        self, policyName: str, policyDocument: str, setAsDefault: bool = False
    ) -> dict[str, Any]:
        record = self._policy_record(policyName)
        check_policy_document(policyDocument)
        if len(record["versions"]) >= MAX_POLICY_VERSIONS:
            raise IotError(
                "VersionsLimitExceededException",
                f"The policy {policyName} already has the maximum number of versions "
                f"({MAX_POLICY_VERSIONS}); delete one first",
            )
        version_id = str(record["nextVersionId"])
        record["nextVersionId"] += 1
        record["versions"][version_id] = {"policyDocument": policyDocument, "creationDate": self.now()}
        if setAsDefault:
            self._make_default(record, version_id)
        return {
            "policyArn": record["policyArn"],
            "policyDocument": policyDocument,
            "policyVersionId": version_id,
            "isDefaultVersion": bool(setAsDefault),
        }

    def _make_default(self, record: dict[str, Any], version_id: str) -> None:
        now = self.now()
        record["defaultVersionId"] = version_id
        record["policyDocument"] = record["versions"][version_id]["policyDocument"]
        record["lastModifiedDate"] = now
        seed = f"{record['policyName']}:{version_id}:{now}".encode()
        record["generationId"] = hashlib.sha256(seed).hexdigest()

    def list_policy_versions(self, policyName: str) -> dict[str, Any]:
        record = self._policy_record(policyName)
        newest_first = sorted(record["versions"].items(), key=lambda item: int(item[0]), reverse=True)
        return {
            "policyVersions": [
                {
                    "versionId": version_id,
                    "isDefaultVersion": version_id == record["defaultVersionId"],
                    "createDate": version["creationDate"],
                }
                for version_id, version in newest_first
            ]
        }

    def get_policy_version(self, policyName: str, policyVersionId: str) -> dict[str, Any]:
        record, version = self._policy_version(policyName, policyVersionId)
        return {
            "policyArn": record["policyArn"],
            "policyName": policyName,
            "policyDocument": version["policyDocument"],
            "policyVersionId": str(policyVersionId),
            "isDefaultVersion": str(policyVersionId) == record["defaultVersionId"],
            "creationDate": version["creationDate"],
            "lastModifiedDate": version["creationDate"],
            "generationId": record["generationId"],
        }

    def set_default_policy_version(self, policyName: str, policyVersionId: str) -> dict[str, Any]:
        record, _ = self._policy_version(policyName, policyVersionId)
        if str(policyVersionId) != record["defaultVersionId"]:
            self._make_default(record, str(policyVersionId))
        return {}

    def delete_policy_version(self, policyName: str, policyVersionId: str) -> dict[str, Any]:
        record, _ = self._policy_version(policyName, policyVersionId)
        if str(policyVersionId) == record["defaultVersionId"]:
            raise delete_conflict(
                f"Cannot delete the default version {policyVersionId} of policy {policyName}; "
                "make another version the default first (SetDefaultPolicyVersion)"
            )
        del record["versions"][str(policyVersionId)]
        return {}
