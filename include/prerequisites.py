"""Pre-flight's questions to AWS IoT: do the thing types, groups, policies and the factory CA exist?"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from include.aws_errors import is_not_found
from include.catalog import Catalog
from include.certificate_authority import certificate_id_from_pem
from include.errors import CatalogError
from include.templates import render_template

# Template size check before the CA is known: a P-256 CA certificate PEM is about 700 characters.
PLACEHOLDER_CA_PEM = "-----BEGIN CERTIFICATE-----\n" + "A" * 1200 + "\n-----END CERTIFICATE-----\n"


def _described(call: Callable[..., Any], **kwargs: Any) -> dict | None:
    """The response of a Describe/Get call, or None when AWS says the resource does not exist."""
    try:
        return call(**kwargs)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


def check_prerequisites(
    iot: Any, catalog: Catalog, models: Sequence[str], ca_certificate_pem: str | None
) -> tuple[list[str], dict[str, str]]:
    """(every problem found, the rendered template body per registration group) for these products.

    With the factory CA certificate, exactly that CA must be registered and ACTIVE; without, any ACTIVE CA.
    """
    problems: list[str] = []
    templates: dict[str, str] = {}
    checked: set[tuple[str, str]] = set()

    def check(kind: str, name: str, model: str, call: Callable[..., Any], **kwargs: Any) -> dict | None:
        if (kind, name) in checked:
            return None
        checked.add((kind, name))
        found = _described(call, **kwargs)
        if found is None:
            problems.append(f"{kind} {name} (product {model}) does not exist in AWS IoT")
        return found

    for model in models:
        product = catalog.products[model]
        if product.thing_type:
            found = check(
                "thing type",
                product.thing_type,
                model,
                iot.describe_thing_type,
                thingTypeName=product.thing_type,
            )
            if found and (found.get("thingTypeMetadata") or {}).get("deprecated"):
                problems.append(f"thing type {product.thing_type} (product {model}) is deprecated")
        for group in product.thing_groups:
            check("thing group", group, model, iot.describe_thing_group, thingGroupName=group)
        check("policy", product.policy, model, iot.get_policy, policyName=product.policy)
        try:
            templates[product.group] = render_template(product, ca_certificate_pem or PLACEHOLDER_CA_PEM)
        except CatalogError as exc:  # TemplateError too: reported with the rest
            problems.append(str(exc))
    problems += _ca_problems(iot, ca_certificate_pem)
    return problems, templates


def _ca_problems(iot: Any, ca_certificate_pem: str | None) -> list[str]:
    if not ca_certificate_pem:
        listed = iot.list_ca_certificates(pageSize=250).get("certificates", [])
        if any(c.get("status") == "ACTIVE" for c in listed):
            return []
        return ["no ACTIVE CA certificate is registered in AWS IoT"]
    ca_id = certificate_id_from_pem(ca_certificate_pem)
    described = _described(iot.describe_ca_certificate, certificateId=ca_id)
    if described is None:
        return [f"the factory CA (certificate id {ca_id}) is not registered in AWS IoT"]
    status = described["certificateDescription"]["status"]
    if status != "ACTIVE":
        return [f"the factory CA (certificate id {ca_id}) is {status}, not ACTIVE"]
    return []
