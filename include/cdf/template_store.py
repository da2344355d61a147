"""CDF provisioning templates as CDF users keep them: JSON objects in S3, or a catalog product by its model.

`s3://<templates bucket>/<prefix><id><suffix>` (default `templates/<id>.json`, CDF's layout) holds an AWS
provisioning template with an optional `CDF` block; it is read on every request (CDF does the same), so an
upload takes effect at once. An id with no such object may name a catalog product instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from include.aws_errors import is_not_found
from include.catalog import Catalog, Product
from include.cdf.aws import aws_errors
from include.cdf.config import CdfConfig
from include.cdf.errors import BadRequest, NotFound
from include.cdf.parameters import CdfBlock, parse_block
from include.templates import MAX_TEMPLATE_BODY

TEMPLATE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_TEMPLATE_OBJECT = 1024 * 1024


@dataclass(frozen=True)
class CdfTemplate:
    """A resolved template: the AWS part, its CDF block, and the catalog product it came from (if any)."""

    template_id: str
    source: str
    document: dict[str, Any]  # the AWS provisioning template, CDF block removed
    block: CdfBlock
    product: Product | None = None

    @property
    def body(self) -> str:
        return json.dumps(self.document, separators=(",", ":"), ensure_ascii=False)

    @property
    def parameters(self) -> dict[str, Any]:
        found = self.document.get("Parameters") or {}
        return found if isinstance(found, dict) else {}

    def resource(self, resource_type: str) -> tuple[str, dict[str, Any]] | None:
        """(logical id, resource) of the first resource of this type, if any."""
        for name, resource in (self.document.get("Resources") or {}).items():
            if isinstance(resource, dict) and resource.get("Type") == resource_type:
                return name, resource
        return None


def check_template_id(template_id: Any) -> str:
    if not isinstance(template_id, str) or not template_id.strip():
        raise BadRequest("provisioningTemplateId: is required and must be a non-empty string")
    if not TEMPLATE_ID.match(template_id):
        raise BadRequest(
            f"provisioningTemplateId {template_id[:60]!r}: may hold letters, digits, '.', '_', ':' and '-' "
            "(1 to 128 characters, starting with a letter or digit)"
        )
    return template_id


def parse_template(text: bytes | str, template_id: str, source: str) -> CdfTemplate:
    """A template document: a JSON object with Resources, an optional CDF block, within AWS's size limit."""
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"template {template_id} ({source}) is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise BadRequest(f"template {template_id} ({source}) must be a JSON object with a Resources object")
    block = parse_block(document.pop("CDF", None), template_id)
    template = CdfTemplate(template_id, source, document, block)
    if len(template.body) > MAX_TEMPLATE_BODY:
        raise BadRequest(
            f"template {template_id} ({source}) is {len(template.body)} characters without its CDF block; "
            f"AWS IoT accepts at most {MAX_TEMPLATE_BODY}"
        )
    return template


def load_template(s3: Any, config: CdfConfig, catalog: Catalog, template_id: str) -> CdfTemplate:
    """The S3 template of this id, else the catalog product of this model; NotFound naming both places."""
    check_template_id(template_id)
    key = config.template_key(template_id)
    source = f"s3://{config.templates_bucket}/{key}"
    data = None
    with aws_errors(f"reading template {source}"):
        try:
            found = s3.get_object(Bucket=config.templates_bucket, Key=key)
        except Exception as exc:
            if not is_not_found(exc) and "NoSuchBucket" not in str(type(exc)):
                raise
        else:
            if int(found.get("ContentLength") or 0) > MAX_TEMPLATE_OBJECT:
                raise BadRequest(f"template {source} is larger than {MAX_TEMPLATE_OBJECT} bytes")
            data = found["Body"].read()
    if data is not None:
        return parse_template(data, template_id, source)
    product = catalog.get(template_id)
    if product is None:
        raise NotFound(
            f"provisioningTemplateId {template_id}: no template {source} and no catalog product {template_id}"
        )
    return CdfTemplate(template_id, f"catalog:{template_id}", {}, CdfBlock(), product)
