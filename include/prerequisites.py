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
    iot: Any,
    catalog: Catalog,
    models: Sequence[str],
    ca_certificate_pem: str | None,
    pca_certificate_pem: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(every problem found, the rendered template body per registration group) for these products.

    Products whose certificates the registered factory CA signs need it registered and ACTIVE (exactly that
    CA when its certificate is given, else any ACTIVE CA); acm_pca products need the PCA's CA certificate
    registered and ACTIVE. aws_issued and without_ca products name no CA in IoT.
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
        for policy in (product.policy, *product.extra_policies):
            check("policy", policy, model, iot.get_policy, policyName=policy)
        signer = pca_certificate_pem if product.certificate_mode == "acm_pca" else ca_certificate_pem
        try:
            templates[product.group] = render_template(product, signer or PLACEHOLDER_CA_PEM)
        except CatalogError as exc:  # TemplateError too: reported with the rest
            problems.append(str(exc))
    modes = {catalog.products[model].certificate_mode for model in models}
    if modes & {"own_ca_key", "device_csr"}:
        problems += _ca_problems(iot, ca_certificate_pem)
    # (acm_pca_without_ca needs the PCA, checked by the caller, but not its CA certificate in IoT.)
    if "acm_pca" in modes and pca_certificate_pem is not None:
        problems += _ca_problems(iot, pca_certificate_pem, "the ACM Private CA's CA certificate")
    return problems, templates


def _ca_problems(iot: Any, ca_certificate_pem: str | None, what: str = "the factory CA") -> list[str]:
    if not ca_certificate_pem:
        listed = iot.list_ca_certificates(pageSize=250).get("certificates", [])
        if any(c.get("status") == "ACTIVE" for c in listed):
            return []
        return ["no ACTIVE CA certificate is registered in AWS IoT"]
    ca_id = certificate_id_from_pem(ca_certificate_pem)
    described = _described(iot.describe_ca_certificate, certificateId=ca_id)
    if described is None:
        return [f"{what} (certificate id {ca_id}) is not registered in AWS IoT"]
    status = described["certificateDescription"]["status"]
    if status != "ACTIVE":
        return [f"{what} (certificate id {ca_id}) is {status}, not ACTIVE"]
    return []


def pca_ca_certificate(acm_pca: Any, pca_arn: str) -> tuple[str | None, list[str]]:
    """(the ACM Private CA's CA certificate PEM, problems): it must exist and be ACTIVE."""
    try:
        described = acm_pca.describe_certificate_authority(CertificateAuthorityArn=pca_arn)
    except Exception as exc:
        if is_not_found(exc):
            return None, [f"ACM Private CA {pca_arn} does not exist"]
        raise
    status = described["CertificateAuthority"]["Status"]
    if status != "ACTIVE":
        return None, [f"ACM Private CA {pca_arn} is {status}, not ACTIVE"]
    found = acm_pca.get_certificate_authority_certificate(CertificateAuthorityArn=pca_arn)
    return found["Certificate"], []
