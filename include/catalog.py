"""The product catalog (catalog/products.yaml): per model, how its devices become things with certificates."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from include.errors import CatalogError

CERTIFICATE_MODES = ("own_ca_key", "device_csr")
KEY_ALGORITHMS = ("ec-p256", "rsa-2048")
# AWS IoT limits and name patterns (botocore model; aws-iot-facts.md 4.7).
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9:_-]+$")
POLICY_NAME_PATTERN = re.compile(r"^[\w+=,.@-]+$")
ATTRIBUTE_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_.,@/:#-]{1,128}$")
MAX_GROUPS_PER_THING = 10
RESERVED_PARAMETERS = ("ThingName", "CertificatePem")


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

    @property
    def group(self) -> str:
        """Registration group: one parameter file and one registration task per product per run."""
        return self.model

    @property
    def max_attributes(self) -> int:
        return 50 if self.thing_type else 3

    def thing_name_for(self, row: Mapping[str, str]) -> str:
        return self.thing_name.format_map({name: row.get(name, "") for name in self.name_fields})

    def template_context(self) -> dict[str, Any]:
        """What a template may use besides the CA certificate: product fields and attribute parameters."""
        return {
            "product": {
                "model": self.model,
                "thing_type": self.thing_type,
                "thing_groups": list(self.thing_groups),
                "policy": self.policy,
                "certificate_mode": self.certificate_mode,
                "key_algorithm": self.key_algorithm,
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

    def get(self, model: str) -> Product | None:
        return self.products.get(model)

    def __contains__(self, model: object) -> bool:
        return model in self.products

    @property
    def mapped_columns(self) -> set[str]:
        return {a.column for p in self.products.values() for a in p.attributes}


def load_catalog(path: str | Path) -> Catalog:
    """Read and check the catalog; every problem is reported with the product and field it concerns."""
    path = Path(path)
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
    products = {}
    problems: list[str] = []
    for model, entry in document["products"].items():
        try:
            products[str(model)] = _product(str(model), entry, path.parent)
        except CatalogError as exc:
            problems.append(str(exc))
    if problems:
        raise CatalogError(f"product catalog {path}: " + "; ".join(problems))
    if not products:
        raise CatalogError(f"product catalog {path} defines no products")
    return Catalog(products=products, path=path)


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
    }
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
    )
