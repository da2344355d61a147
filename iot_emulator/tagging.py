"""Tags on the taggable IoT resources, by ARN: TagResource, UntagResource, ListTagsForResource."""

from __future__ import annotations

from typing import Any

from iot_emulator.errors import invalid_request, limit_exceeded, not_found
from iot_emulator.paging import page_result, paginate
from iot_emulator.service_base import ServiceBase

MAX_TAGS = 50  # tags per resource (AWS's limit for every taggable resource type)
TAGS_PAGE_SIZE = 50
# ARN resource type -> the state collection holding its records (by the name or id after the '/').
# Things and device certificates are not taggable in AWS IoT.
TAGGABLE = {
    "thingtype": "thing_types",
    "thinggroup": "thing_groups",
    "billinggroup": "billing_groups",
    "policy": "policies",
    "cacert": "ca_certificates",
    "provisioningtemplate": "provisioning_templates",
}


class TaggingMixin(ServiceBase):
    """Tags kept as a list of {Key, Value} on each taggable record (the form Create* calls take)."""

    def _tagged_record(self, arn: str) -> dict[str, Any]:
        prefix = self.arn("")
        kind, _, name = arn[len(prefix) :].partition("/") if arn.startswith(prefix) else ("", "", "")
        collection = TAGGABLE.get(kind)
        if collection is None or not name:
            raise invalid_request(f"{arn} is not the ARN of a taggable resource of this account and region")
        record = getattr(self.state, collection).get(name)
        if record is None:
            raise not_found(f"The resource {arn} does not exist")
        return record

    def tag_resource(self, resourceArn: str, tags: list[dict[str, str]]) -> dict[str, Any]:
        record = self._tagged_record(resourceArn)
        merged = {tag["Key"]: tag.get("Value", "") for tag in record.get("tags", [])}
        merged.update({tag["Key"]: tag.get("Value", "") for tag in tags})
        if len(merged) > MAX_TAGS:
            raise limit_exceeded(f"A resource can have at most {MAX_TAGS} tags ({resourceArn})")
        record["tags"] = [{"Key": key, "Value": value} for key, value in merged.items()]
        return {}

    def untag_resource(self, resourceArn: str, tagKeys: list[str]) -> dict[str, Any]:
        record = self._tagged_record(resourceArn)
        removed = set(tagKeys)
        record["tags"] = [tag for tag in record.get("tags", []) if tag["Key"] not in removed]
        return {}

    def list_tags_for_resource(self, resourceArn: str, nextToken: str | None = None) -> dict[str, Any]:
        record = self._tagged_record(resourceArn)
        page, token = paginate(list(record.get("tags", [])), nextToken, None, TAGS_PAGE_SIZE)
        return page_result("tags", page, "nextToken", token)
