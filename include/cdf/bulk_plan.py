"""POST /bulkthings as one batch of the pipeline: a manifest (README "The manifest contract") and a product.

A catalog product is used as it is. A CDF template becomes a derived product (include.cdf.derived_product)
in a catalog file of its own, written once per content under CdfConfig.catalogs_dir; the run reads that
catalog instead of the pipeline's. Request-level `cdfProvisioningParameters` apply to every entry.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from include.catalog import load_catalog
from include.cdf import derived_product, manifest_rows
from include.cdf.aws import aws_errors
from include.cdf.certificates import iot_ca_certificate
from include.cdf.errors import BadRequest
from include.cdf.modes import pca_arns
from include.cdf.parameters import AdditionalPolicy, ProvisioningParameters, parse_parameters
from include.cdf.provision import ThingServices, ensure_policy
from include.cdf.template_store import CdfTemplate, load_template
from include.certificate_authority import certificate_id_from_pem
from include.errors import CatalogError
from include.prerequisites import PLACEHOLDER_CA_PEM
from include.templates import render_template

MAX_ENTRIES = 1_000_000
TEMPLATE_FILE = "template.json.j2"


@dataclass(frozen=True)
class BulkPlan:
    """What a bulk request runs: the manifest, the product, and the catalog the run reads."""

    template_id: str
    source: str
    model: str
    mode: str
    rows: int
    manifest: bytes
    catalog_path: str | None  # None: the pipeline's own catalog
    acm_pca_arn: str | None = None


def check_entries(entries: Any) -> list[Any]:
    if not isinstance(entries, list) or not entries:
        raise BadRequest("parameters: must be a non-empty list, one object of parameters per thing")
    if len(entries) > MAX_ENTRIES:
        raise BadRequest(f"parameters: has {len(entries)} entries; at most {MAX_ENTRIES} per request")
    return entries


def plan_bulk(services: ThingServices, template_id: str, entries: Any, cdf_parameters: Any) -> BulkPlan:
    entries = check_entries(entries)
    catalog = services.catalog()
    template = load_template(services.s3, services.config, catalog, template_id)
    if template.product is not None:
        product = template.product
        parse_parameters(cdf_parameters, None, what=f"cdfProvisioningParameters (product {product.model})")
        rows = [manifest_rows.entry_row(product, e, f"parameters[{i}]") for i, e in enumerate(entries)]
        data = manifest_rows.manifest_csv(rows)
        manifest_rows.check_thing_names(catalog, rows, data, "parameters")
        pca = getattr(services.config.settings, "acm_pca_arn", None)
        return BulkPlan(
            template_id, template.source, product.model, product.certificate_mode, len(rows), data, None, pca
        )
    return _plan_derived(services, template, entries, cdf_parameters)


def _bulk_options(
    services: ThingServices, template: CdfTemplate, options: ProvisioningParameters
) -> tuple[int, str | None]:
    """(validity days, ACM PCA ARN) from request-level cdfProvisioningParameters; what bulk cannot honour
    per device (a caller's certificate or CSR, a certInfo subject) is refused by name."""
    what = "cdfProvisioningParameters"
    for name in ("certificatePem", "certificateStatus", "csr"):
        if getattr(options, name) is not None:
            raise BadRequest(
                f"{what}.{name}: bulk makes every certificate in the pipeline; one {name} cannot apply to "
                "every entry"
            )
    if options.certInfo is not None and options.certInfo.subject_fields:
        first = sorted(options.certInfo.subject_fields)[0]
        raise BadRequest(
            f"{what}.certInfo.{first}: bulk certificates follow the pipeline's subject rule (commonName = "
            "thing name, serialNumber = serial); only certInfo.daysExpiry applies"
        )
    if options.caId is not None:
        own = certificate_id_from_pem(services.factory_ca().certificate_pem)
        if options.caId != own:
            raise BadRequest(
                f"{what}.caId {options.caId[:70]}: this service signs with the factory CA only (caId {own})"
            )
    days = (options.certInfo and options.certInfo.daysExpiry) or services.config.default_expiry_days
    pca = None
    block = template.block
    if block.acmpca is not None:
        pca, iot_ca = pca_arns(services.signers, options, block.acmpca.mode == "REGISTER_WITH_CA")
        if iot_ca is not None:
            _check_pca_ca(services, pca, iot_ca)
    return days, pca


def _check_pca_ca(services: ThingServices, pca_arn: str, iot_ca_arn: str) -> None:
    """Bulk registers the PCA's certificates under the PCA's own CA certificate: the given one must be it."""
    given = iot_ca_certificate(services.iot, iot_ca_arn, "cdfProvisioningParameters.awsiotCaArn")
    with aws_errors(
        f"ACM PCA {pca_arn}", not_found=f"cdfProvisioningParameters.acmpcaCaArn: no ACM Private CA {pca_arn}"
    ):
        own = services.acm_pca.get_certificate_authority_certificate(CertificateAuthorityArn=pca_arn)[
            "Certificate"
        ]
    if certificate_id_from_pem(given) != certificate_id_from_pem(own):
        raise BadRequest(
            f"cdfProvisioningParameters.awsiotCaArn {iot_ca_arn}: is not the CA certificate of ACM PCA "
            f"{pca_arn}"
        )


def _plan_derived(
    services: ThingServices, template: CdfTemplate, entries: Sequence[Any], cdf_parameters: Any
) -> BulkPlan:
    block = template.block
    options = parse_parameters(cdf_parameters, block.mode)
    derived_product.pipeline_mode(block)  # refuse a template without a mode before anything is created
    days, pca = _bulk_options(services, template, options)
    extra = [ensure_policy(services.iot, p, template.template_id) for p in block.attachAdditionalPolicies]
    derived = derived_product.derive(
        template.template_id, template.document, block, validity_days=days, extra_policies=extra
    )
    rows = [derived_product.entry_row(derived, e, f"parameters[{i}]") for i, e in enumerate(entries)]
    for name, document in derived.inline_policies.items():
        ensure_policy(services.iot, AdditionalPolicy(name=name[:100], document=document), "")
    catalog_path = write_catalog(services.config.catalogs_dir, derived)
    try:
        product = load_catalog(catalog_path).products[derived.model]
        render_template(product, PLACEHOLDER_CA_PEM)
    except CatalogError as error:
        if derived.mode in str(error) and "certificate_mode" in str(error):
            raise BadRequest(
                f"template {template.template_id}: bulk needs certificate mode {derived.mode} in the "
                "pipeline, which does not have it yet"
            ) from None
        raise BadRequest(f"template {template.template_id} as a bulk product: {error}") from None
    data = manifest_rows.manifest_csv(rows)
    return BulkPlan(
        template.template_id,
        template.source,
        derived.model,
        derived.mode,
        len(rows),
        data,
        str(catalog_path),
        pca,
    )


def write_catalog(directory: Path, derived: derived_product.Derived) -> Path:
    """products.yaml and the template in a folder named by their digest (written once; atomic renames)."""
    folder = directory / derived.digest
    catalog = folder / "products.yaml"
    if catalog.is_file():
        return catalog
    folder.mkdir(parents=True, exist_ok=True)
    document = {"version": 1, "products": {derived.model: {"template": TEMPLATE_FILE, **derived.entry}}}
    for name, text in (
        (TEMPLATE_FILE, derived.template_text),
        ("products.yaml", yaml.safe_dump(document, sort_keys=False)),
    ):
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, folder / name)
    return catalog
