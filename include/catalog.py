"""The product catalog (catalog/products.yaml): per model, how its devices become things with certificates."""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

from include.errors import CatalogError

if TYPE_CHECKING:
    from include.fleet_catalog import FleetProduct

# How a product's devices get certificates (README "Certificate modes"):
#   own_ca_key  the pipeline makes the key, the factory CA (registered in IoT) signs it
#   device_csr  the device made its key; the factory CA signs the manifest's CSR
#   aws_issued  the pipeline makes the key and a CSR; AWS signs it during bulk registration
#   acm_pca     the pipeline makes the key and a CSR; ACM Private CA signs it (its CA registered in IoT)
#   without_ca  the factory CA signs, but it is not registered: each certificate is registered on its own
#               (RegisterCertificateWithoutCA), then referenced by id in bulk
#   acm_pca_without_ca  ACM Private CA signs and its CA is not registered: each certificate registered on its
#               own, as without_ca (CDF's acmpca REGISTER_WITHOUT_CA)
CERTIFICATE_MODES = ("own_ca_key", "device_csr", "aws_issued", "acm_pca", "without_ca", "acm_pca_without_ca")
# The template parameter that carries each mode's certificate on a parameter line.
CERTIFICATE_PARAMETERS = {
    "own_ca_key": "CertificatePem",
    "device_csr": "CertificatePem",
    "aws_issued": "CSR",
    "acm_pca": "CertificatePem",
    "without_ca": "CertificateId",
    "acm_pca_without_ca": "CertificateId",
}
# How a product's devices come to exist in IoT: bulk (batches of manifest rows, the default) or fleet (each
# device provisions itself by claim over MQTT: include.fleet_catalog).
PROVISIONING_KINDS = ("bulk", "fleet")
DEFAULT_VALIDITY_DAYS = 3650
MAX_VALIDITY_DAYS = 36500
KEY_ALGORITHMS = ("ec-p256", "rsa-2048")
# AWS IoT limits and name patterns (botocore model; aws-iot-facts.md 4.7).
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9:_-]+$")
POLICY_NAME_PATTERN = re.compile(r"^[\w+=,.@-]+$")
ATTRIBUTE_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_.,@/:#-]{1,128}$")
MAX_GROUPS_PER_THING = 10
RESERVED_PARAMETERS = ("ThingName", "CertificatePem", "CSR", "CertificateId")


@dataclass(frozen=True)
class Attribute:
    """One thing attribute fed from a manifest column through a template parameter."""

    column: str
    name: str

    @property
    def parameter(self) -> str:
        return self.name[:1].upper() + self.name[1:]


@dataclass(frozen=True)
class Product:
    """One catalog entry."""

    model: str
    template: Path
    thing_name: str
    policy: str
    certificate_mode: str
    key_algorithm: str = "ec-p256"
    thing_type: str | None = None
    thing_groups: tuple[str, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    description: str = ""
    name_fields: tuple[str, ...] = field(default=())
    validity_days: int = DEFAULT_VALIDITY_DAYS
    extra_policies: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """Registration group: one parameter file and one registration task per product per run."""
        return self.model

    @property
    def max_attributes(self) -> int:
        return 50 if self.thing_type else 3

    @property
    def certificate_parameter(self) -> str:
        """The parameter-line key of the device's certificate (its PEM, its CSR or its id)."""
        return CERTIFICATE_PARAMETERS[self.certificate_mode]

    @property
    def pipeline_makes_key(self) -> bool:
        return self.certificate_mode != "device_csr"

    @property
    def signed_by_pca(self) -> bool:
        return self.certificate_mode in ("acm_pca", "acm_pca_without_ca")

    @property
    def uses_factory_ca(self) -> bool:
        """Its certificates are signed by the factory CA (registered in IoT or not)."""
        return self.certificate_mode in ("own_ca_key", "device_csr", "without_ca")

    def template_context(self) -> dict[str, Any]:
        """What a template may use besides the CA certificate: product fields and attribute parameters."""
        return {
            "product": {
                "model": self.model,
                "thing_type": self.thing_type,
                "thing_groups": list(self.thing_groups),
                "policy": self.policy,
                "certificate_mode": self.certificate_mode,
                "certificate_parameter": self.certificate_parameter,
                "key_algorithm": self.key_algorithm,
                "validity_days": self.validity_days,
                "extra_policies": list(self.extra_policies),
            },
            "attributes": [
                {"column": a.column, "name": a.name, "parameter": a.parameter} for a in self.attributes
            ],
        }


@dataclass(frozen=True)
class Catalog:
    """All products by model."""

    products: Mapping[str, Product]
    path: Path
    # Claim-based products (provisioning: fleet) apart: batches, bulk templates and re-keys never see them.
    fleet_products: Mapping[str, FleetProduct] = field(default_factory=dict)

    def get(self, model: str) -> Product | None:
        return self.products.get(model)

    def __contains__(self, model: object) -> bool:
        return model in self.products

    @property
    def mapped_columns(self) -> set[str]:
        return {a.column for p in self.products.values() for a in p.attributes}


def load_catalog(path: str | Path) -> Catalog:
    """Read and check the catalog; every problem is reported with the product and field it concerns.

    Parsed once per process and file version (path, size, mtime): every credentials chunk and every stage
    of a run asks for it, and parsing the YAML costs milliseconds each time. The catalog is immutable.
    """
    path = Path(path)
    try:
        status = path.stat()
    except OSError as exc:
        raise CatalogError(f"cannot read the product catalog {path}: {exc.strerror}") from None
    return _parsed_catalog(path, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _parsed_catalog(path: Path, _size: int, _mtime_ns: int) -> Catalog:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"cannot read the product catalog {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"product catalog {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("products"), dict):
        raise CatalogError(f"product catalog {path} must be a mapping with a 'products' mapping")
    if document.get("version", 1) != 1:
        raise CatalogError(
            f"product catalog {path} has version {document.get('version')!r}; this pipeline reads 1"
        )
    from include.fleet_catalog import fleet_product, is_fleet_entry  # it builds on this module's checks

    products = {}
    fleet_products = {}
    problems: list[str] = []
    for model, entry in document["products"].items():
        try:
            if is_fleet_entry(entry):
                fleet_products[str(model)] = fleet_product(str(model), entry, path.parent)
            else:
                products[str(model)] = _product(str(model), entry, path.parent)
        except CatalogError as exc:
            problems.append(str(exc))
    if problems:
        raise CatalogError(f"product catalog {path}: " + "; ".join(problems))
    if not products and not fleet_products:
        raise CatalogError(f"product catalog {path} defines no products")
    return Catalog(
        products=MappingProxyType(products), path=path, fleet_products=MappingProxyType(fleet_products)
    )


def _product(model: str, entry: Any, base: Path) -> Product:
    where = f"product {model}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where} must be a mapping")
    known = {
        "template",
        "thing_name",
        "policy",
        "certificate_mode",
        "key_algorithm",
        "thing_type",
        "thing_groups",
        "attributes",
        "description",
        "validity_days",
        "extra_policies",
        "provisioning",
    }
    if entry.get("provisioning", "bulk") not in PROVISIONING_KINDS:
        raise CatalogError(
            f"{where}: provisioning {entry['provisioning']!r} is not one of {list(PROVISIONING_KINDS)}"
        )
    unknown = sorted(set(entry) - known)
    if unknown:
        raise CatalogError(f"{where} has unknown field(s) {unknown}")
    for required in ("template", "thing_name", "policy", "certificate_mode"):
        if not entry.get(required):
            raise CatalogError(f"{where} needs '{required}'")
    if not NAME_PATTERN.match(model) or len(model) > 128:
        raise CatalogError(f"{where}: the model name must match [a-zA-Z0-9:_-]+")
    mode = entry["certificate_mode"]
    if mode not in CERTIFICATE_MODES:
        raise CatalogError(f"{where}: certificate_mode {mode!r} is not one of {list(CERTIFICATE_MODES)}")
    algorithm = entry.get("key_algorithm", "ec-p256")
    if algorithm not in KEY_ALGORITHMS:
        raise CatalogError(f"{where}: key_algorithm {algorithm!r} is not one of {list(KEY_ALGORITHMS)}")
    template = (base / entry["template"]).resolve()
    if not template.is_file():
        raise CatalogError(f"{where}: template {entry['template']} not found next to the catalog")
    thing_type = entry.get("thing_type")
    if thing_type is not None and not NAME_PATTERN.match(str(thing_type)):
        raise CatalogError(f"{where}: thing_type {thing_type!r} must match [a-zA-Z0-9:_-]+")
    groups = entry.get("thing_groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and NAME_PATTERN.match(g) for g in groups):
        raise CatalogError(f"{where}: thing_groups must be a list of names matching [a-zA-Z0-9:_-]+")
    if len(groups) > MAX_GROUPS_PER_THING:
        raise CatalogError(f"{where}: {len(groups)} thing_groups, a thing may be in at most 10")
    if not POLICY_NAME_PATTERN.match(str(entry["policy"])):
        raise CatalogError(f"{where}: policy {entry['policy']!r} is not a valid IoT policy name")
    extra = entry.get("extra_policies") or []
    if not isinstance(extra, list) or not all(
        isinstance(p, str) and POLICY_NAME_PATTERN.match(p) for p in extra
    ):
        raise CatalogError(f"{where}: extra_policies must be a list of IoT policy names")
    if entry["policy"] in extra or len(set(extra)) != len(extra):
        raise CatalogError(f"{where}: extra_policies repeats a policy")
    validity = entry.get("validity_days", DEFAULT_VALIDITY_DAYS)
    if isinstance(validity, bool) or not isinstance(validity, int) or not 1 <= validity <= MAX_VALIDITY_DAYS:
        raise CatalogError(
            f"{where}: validity_days must be a whole number of days from 1 to {MAX_VALIDITY_DAYS}"
        )
    mapping = entry.get("attributes") or {}
    if not isinstance(mapping, dict):
        raise CatalogError(f"{where}: attributes must map manifest columns to attribute names")
    attributes = []
    for column, name in mapping.items():
        if not isinstance(name, str) or not ATTRIBUTE_NAME_PATTERN.match(name):
            raise CatalogError(f"{where}: attribute name {name!r} (column {column}) is not a valid IoT name")
        attribute = Attribute(column=str(column).strip().lower(), name=name)
        if attribute.parameter in RESERVED_PARAMETERS:
            raise CatalogError(
                f"{where}: attribute {name!r} clashes with template parameter {attribute.parameter}"
            )
        if attribute.column == "csr":
            raise CatalogError(f"{where}: the csr column cannot be a thing attribute")
        attributes.append(attribute)
    pattern = str(entry["thing_name"])
    try:
        name_fields = tuple(
            name for _, name, spec, conv in string.Formatter().parse(pattern) if name is not None
        )
    except ValueError as exc:
        raise CatalogError(f"{where}: thing_name pattern {pattern!r} is malformed: {exc}") from None
    if not name_fields or any(not n.isidentifier() for n in name_fields):
        raise CatalogError(f"{where}: thing_name pattern {pattern!r} must use plain {{column}} fields")
    return Product(
        model=model,
        template=template,
        thing_name=pattern,
        policy=str(entry["policy"]),
        certificate_mode=mode,
        key_algorithm=algorithm,
        thing_type=thing_type,
        thing_groups=tuple(groups),
        attributes=tuple(attributes),
        description=str(entry.get("description", "")),
        name_fields=name_fields,
        validity_days=validity,
        extra_policies=tuple(extra),
    )
