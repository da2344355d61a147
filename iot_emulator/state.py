"""Plain IoT state of one account and region, saved as versioned JSON and upgraded when loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"

# Bump on every change of the saved shape and add the step from the previous version to _UPGRADES, so a
# newer emulator keeps loading what older ones saved. Version 1 is the first JSON format (before it the
# state was pickled, which is never loaded: unpickling runs code from the file).
STATE_VERSION = 3


def _policy_versions(document: dict[str, Any]) -> dict[str, Any]:
    """3: policy versions; a policy saved before had exactly one, its default."""
    policies = {}
    for name, record in document.get("policies", {}).items():
        default = record.get("defaultVersionId", "1")
        version = {"policyDocument": record["policyDocument"], "creationDate": record.get("creationDate")}
        policies[name] = {**record, "versions": {default: version}, "nextVersionId": int(default) + 1}
    return {**document, "policies": policies}


_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    # 2: fleet provisioning's certificate ownership tokens (none were issued before)
    1: lambda document: {**document, "certificate_ownership_tokens": {}},
    2: _policy_versions,
}

Records = dict[str, dict[str, Any]]
OrderedSet = dict[str, None]  # insertion-ordered set that JSON can hold: {"name": null}


class StateFormatError(ValueError):
    """A state document this emulator cannot load."""


class StateTooNew(StateFormatError):
    """A state document of a version newer than this emulator knows."""


@dataclass
class IotState:
    """Everything IoT remembers for one account and region: JSON-ready values only, no runtime objects.

    Records are the dicts the operations return parts of; the paired maps keep both directions of each
    relation in the order AWS lists them.
    """

    account_id: str = DEFAULT_ACCOUNT
    region: str = DEFAULT_REGION
    things: Records = field(default_factory=dict)
    thing_types: Records = field(default_factory=dict)
    thing_groups: Records = field(default_factory=dict)
    billing_groups: Records = field(default_factory=dict)
    group_things: dict[str, OrderedSet] = field(default_factory=dict)
    thing_group_names: dict[str, OrderedSet] = field(default_factory=dict)
    policies: Records = field(default_factory=dict)
    policy_targets: dict[str, OrderedSet] = field(default_factory=dict)
    target_policies: dict[str, OrderedSet] = field(default_factory=dict)
    # thing name -> principal -> thingPrincipalType, and principal -> thing names
    thing_principals: dict[str, dict[str, str]] = field(default_factory=dict)
    principal_things: dict[str, OrderedSet] = field(default_factory=dict)
    ca_certificates: Records = field(default_factory=dict)
    ca_ids_by_subject: dict[str, list[str]] = field(default_factory=dict)  # subject DER (hex) -> CA ids
    certificates: Records = field(default_factory=dict)  # insertion order is creation order
    provisioning_templates: Records = field(default_factory=dict)
    provisioning_claims: Records = field(default_factory=dict)
    # SHA-256 of a token (never the token) -> {certificateId, expiration}, in creation order
    certificate_ownership_tokens: Records = field(default_factory=dict)
    bulk_tasks: Records = field(default_factory=dict)

    def to_document(self) -> dict[str, Any]:
        """The state as a JSON document (shallow: serialise it before the state changes again)."""
        return {"version": STATE_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_document(cls, document: Any) -> IotState:
        """Load a document of this or an older version; StateFormatError for anything else."""
        if not isinstance(document, dict):
            raise StateFormatError("the state document is not a JSON object")
        version = document.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise StateFormatError(f"the state document has no valid version (got {version!r})")
        if version > STATE_VERSION:
            raise StateTooNew(
                f"the state document has version {version}; this emulator reads versions up to "
                f"{STATE_VERSION}: use a newer emulator"
            )
        while version < STATE_VERSION:
            document = _UPGRADES[version](document)
            version += 1
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in document.items() if k in known})
