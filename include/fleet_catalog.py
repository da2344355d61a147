"""Claim-based products of the catalog (`provisioning: fleet`): devices that provision themselves by claim."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from include.catalog import (
    ATTRIBUTE_NAME_PATTERN,
    MAX_GROUPS_PER_THING,
    MAX_VALIDITY_DAYS,
    NAME_PATTERN,
    POLICY_NAME_PATTERN,
    load_catalog,
)
from include.errors import CatalogError

FLEET = "fleet"
# Parameters every fleet template declares: the device sends its serial number, AWS supplies the id of
# the certificate the device just got over MQTT.
SERIAL_PARAMETER = "SerialNumber"
CERTIFICATE_ID_PARAMETER = "AWS::IoT::Certificate::Id"
# Attributes every fleet template stamps on the things it makes: reconcile lists the things by the
# template's name and reads the serial number back (include.fleet_reconcile).
SERIAL_ATTRIBUTE = "serialNumber"
MODEL_ATTRIBUTE = "model"
TEMPLATE_ATTRIBUTE = "provisioningTemplate"
FIXED_ATTRIBUTES = (SERIAL_ATTRIBUTE, MODEL_ATTRIBUTE, TEMPLATE_ATTRIBUTE)
# Fields a thing name pattern may use: the product's model and the serial number the device sends.
NAME_FIELDS = ("model", "serial_number")
DEFAULT_CLAIM_VALIDITY_DAYS = 365
DEFAULT_CLAIM_POLICY_TEMPLATE = "templates/fleet-claim-policy.json.j2"
# CreateProvisioningTemplate.templateName: [0-9A-Za-z_-]+, 1 to 36 characters (botocore model).
TEMPLATE_NAME_PATTERN = re.compile(r"^[0-9A-Za-z_-]{1,36}$")
PARAMETER_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,127}$")
HOOK_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_-]+(:[\w$-]+)?$")
DEVICE_CONFIGURATION_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
KNOWN_FIELDS = {
    "provisioning",
    "description",
    "template",
    "template_name",
    "thing_name",
    "thing_type",
    "thing_groups",
    "policy",
    "extra_policies",
    "claim_policy",
    "claim_policy_template",
    "claim_validity_days",
    "pre_provisioning_hook",
    "device_configuration",
    "attributes",
}
# Fields of bulk products that mean nothing here: said precisely rather than "unknown field".
BULK_ONLY = {
    "certificate_mode": "fleet devices get their certificates from AWS IoT over MQTT",
    "key_algorithm": "fleet devices make their own keys (or AWS makes them over MQTT)",
    "validity_days": "AWS IoT issues fleet devices' certificates; set claim_validity_days for the claim",
}


@dataclass(frozen=True)
class FleetAttribute:
    """A RegisterThing parameter the device sends, kept as a thing attribute."""

    parameter: str
    name: str


@dataclass(frozen=True)
class FleetProduct:
    """A claim-based catalog entry: its fleet provisioning template, claim policy and device resources."""

    model: str
    template: Path
    template_name: str
    thing_name: str
    policy: str
    claim_policy: str
    claim_policy_template: Path
    thing_type: str | None = None
    thing_groups: tuple[str, ...] = ()
    extra_policies: tuple[str, ...] = ()
    attributes: tuple[FleetAttribute, ...] = ()
    device_configuration: Mapping[str, str] = field(default_factory=dict)
    pre_provisioning_hook: str | None = None
    claim_validity_days: int = DEFAULT_CLAIM_VALIDITY_DAYS
    description: str = ""

    @property
    def policies(self) -> tuple[str, ...]:
        """The policies the template attaches to each device's certificate."""
        return (self.policy, *self.extra_policies)

    def thing_name_join(self) -> dict[str, Any]:
        """The thing name pattern as the template's Fn::Join of literals and the SerialNumber parameter."""
        parts: list[Any] = []
        for literal, name, _, _ in string.Formatter().parse(self.thing_name):
            if literal:
                parts.append(literal)
            if name == "model":
                parts.append(self.model)
            elif name == "serial_number":
                parts.append({"Ref": SERIAL_PARAMETER})
        return {"Fn::Join": ["", parts]}

    def template_context(self) -> dict[str, Any]:
        """What the fleet template may use."""
        return {
            "product": {
                "model": self.model,
                "template_name": self.template_name,
                "thing_type": self.thing_type,
                "thing_groups": list(self.thing_groups),
                "policy": self.policy,
                "extra_policies": list(self.extra_policies),
                "device_configuration": dict(self.device_configuration),
            },
            "thing_name": self.thing_name_join(),
            "attributes": [{"parameter": a.parameter, "name": a.name} for a in self.attributes],
        }


def is_fleet_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("provisioning") == FLEET


def form_models(catalog_path: str | Path, *, fleet: bool) -> list[str]:
    """The catalog's fleet (or bulk) product names, read without checking the entries (for DAG forms at
    parse time); [] when the file cannot be read: the tasks report a broken catalog precisely."""
    import yaml

    try:
        document = yaml.safe_load(Path(catalog_path).read_text(encoding="utf-8"))
        products = document["products"].items()
        return sorted(str(model) for model, entry in products if is_fleet_entry(entry) == fleet)
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return []


def fleet_product_of(catalog_path: str | Path, model: str) -> FleetProduct:
    """The catalog's fleet product `model`, or a CatalogError naming the fleet products there are."""
    catalog = load_catalog(catalog_path)
    product = catalog.fleet_products.get(model)
    if product is None:
        kind = "a bulk product" if model in catalog else "not in the catalog"
        fleet = sorted(catalog.fleet_products)
        raise CatalogError(f"product {model!r} is {kind}; fleet products (provisioning: fleet): {fleet}")
    return product


def fleet_product(model: str, entry: dict[str, Any], base: Path) -> FleetProduct:
    """One `provisioning: fleet` entry, checked; every problem names the product and the field."""
    where = f"product {model}"
    for name, why in BULK_ONLY.items():
        if name in entry:
            raise CatalogError(f"{where}: {name} does not apply to a fleet product ({why})")
    unknown = sorted(set(entry) - KNOWN_FIELDS)
    if unknown:
        raise CatalogError(f"{where} has unknown field(s) {unknown}")
    for required in ("template", "thing_name", "policy", "claim_policy"):
        if not entry.get(required):
            raise CatalogError(f"{where} needs '{required}'")
    if not NAME_PATTERN.match(model) or len(model) > 128:
        raise CatalogError(f"{where}: the model name must match [a-zA-Z0-9:_-]+")
    template = _file(base, entry["template"], where, "template")
    policy_template = entry.get("claim_policy_template") or DEFAULT_CLAIM_POLICY_TEMPLATE
    claim_policy_template = _file(base, policy_template, where, "claim_policy_template")
    template_name = str(entry.get("template_name") or f"fleet-{model}")
    if not TEMPLATE_NAME_PATTERN.match(template_name):
        raise CatalogError(
            f"{where}: template_name {template_name!r} must be 1 to 36 characters of [0-9A-Za-z_-]"
            + ("" if "template_name" in entry else " (the default is fleet-<model>: set template_name)")
        )
    thing_type = entry.get("thing_type")
    if thing_type is not None and not NAME_PATTERN.match(str(thing_type)):
        raise CatalogError(f"{where}: thing_type {thing_type!r} must match [a-zA-Z0-9:_-]+")
    groups = _names(entry, "thing_groups", NAME_PATTERN, where, "thing group names matching [a-zA-Z0-9:_-]+")
    if len(groups) > MAX_GROUPS_PER_THING:
        raise CatalogError(f"{where}: {len(groups)} thing_groups, a thing may be in at most 10")
    policy, claim_policy = str(entry["policy"]), str(entry["claim_policy"])
    for name, value in (("policy", policy), ("claim_policy", claim_policy)):
        if not POLICY_NAME_PATTERN.match(value):
            raise CatalogError(f"{where}: {name} {value!r} is not a valid IoT policy name")
    extra = _names(entry, "extra_policies", POLICY_NAME_PATTERN, where, "IoT policy names")
    if len({policy, *extra}) != len(extra) + 1:
        raise CatalogError(f"{where}: extra_policies repeats a policy")
    if claim_policy in (policy, *extra):
        # The claim may only reach the provisioning topics: the devices' own policy must be another one.
        raise CatalogError(f"{where}: claim_policy {claim_policy!r} is also a device policy")
    validity = entry.get("claim_validity_days", DEFAULT_CLAIM_VALIDITY_DAYS)
    if isinstance(validity, bool) or not isinstance(validity, int) or not 1 <= validity <= MAX_VALIDITY_DAYS:
        raise CatalogError(
            f"{where}: claim_validity_days must be a whole number of days from 1 to {MAX_VALIDITY_DAYS}"
        )
    hook = entry.get("pre_provisioning_hook")
    if hook is not None and not (isinstance(hook, str) and HOOK_ARN_PATTERN.match(hook)):
        raise CatalogError(f"{where}: pre_provisioning_hook {hook!r} is not a Lambda function ARN")
    attributes = _attributes(entry.get("attributes") or {}, where, thing_type is not None)
    return FleetProduct(
        model=model,
        template=template,
        template_name=template_name,
        thing_name=_thing_name(str(entry["thing_name"]), where),
        policy=policy,
        claim_policy=claim_policy,
        claim_policy_template=claim_policy_template,
        thing_type=thing_type,
        thing_groups=tuple(groups),
        extra_policies=tuple(extra),
        attributes=attributes,
        device_configuration=_device_configuration(entry.get("device_configuration") or {}, where),
        pre_provisioning_hook=hook,
        claim_validity_days=validity,
        description=str(entry.get("description", "")),
    )


def _file(base: Path, relative: Any, where: str, key: str) -> Path:
    path = (base / str(relative)).resolve()
    if not path.is_file():
        raise CatalogError(f"{where}: {key} {relative} not found next to the catalog")
    return path


def _names(entry: dict[str, Any], key: str, pattern: re.Pattern[str], where: str, what: str) -> list[str]:
    values = entry.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) and pattern.match(v) for v in values):
        raise CatalogError(f"{where}: {key} must be a list of {what}")
    return values


def _thing_name(pattern: str, where: str) -> str:
    try:
        fields = [(literal, name) for literal, name, _, _ in string.Formatter().parse(pattern)]
    except ValueError as exc:
        raise CatalogError(f"{where}: thing_name pattern {pattern!r} is malformed: {exc}") from None
    names = {name for _, name in fields if name is not None}
    if names - set(NAME_FIELDS):
        raise CatalogError(
            f"{where}: thing_name pattern {pattern!r} may use only {{model}} and {{serial_number}}, "
            f"not {sorted(names - set(NAME_FIELDS))}"
        )
    if "serial_number" not in names:
        # Without it every device would register the same thing.
        raise CatalogError(f"{where}: thing_name pattern {pattern!r} must use {{serial_number}}")
    literal = "".join(text for text, _ in fields)
    if literal and not NAME_PATTERN.match(literal):
        raise CatalogError(f"{where}: thing_name pattern {pattern!r} has characters a thing name cannot have")
    return pattern


def _attributes(mapping: Any, where: str, has_thing_type: bool) -> tuple[FleetAttribute, ...]:
    if not isinstance(mapping, dict):
        raise CatalogError(f"{where}: attributes must map RegisterThing parameters to attribute names")
    attributes = []
    for parameter, name in mapping.items():
        parameter = str(parameter)
        if not PARAMETER_PATTERN.match(parameter) or parameter == SERIAL_PARAMETER:
            raise CatalogError(
                f"{where}: attribute parameter {parameter!r} must be alphanumeric, start with a letter and "
                f"not be {SERIAL_PARAMETER} (always sent, kept as {SERIAL_ATTRIBUTE})"
            )
        if not isinstance(name, str) or not ATTRIBUTE_NAME_PATTERN.match(name) or name in FIXED_ATTRIBUTES:
            raise CatalogError(
                f"{where}: attribute name {name!r} (parameter {parameter}) is not a valid IoT attribute "
                f"name, or is one the template sets itself ({', '.join(FIXED_ATTRIBUTES)})"
            )
        attributes.append(FleetAttribute(parameter=parameter, name=name))
    limit = 50 if has_thing_type else 3
    if len(attributes) + len(FIXED_ATTRIBUTES) > limit:
        raise CatalogError(
            f"{where}: {len(attributes)} attributes plus the {len(FIXED_ATTRIBUTES)} the template sets; a "
            f"thing {'with' if has_thing_type else 'without'} a thing type may have at most {limit}"
        )
    return tuple(attributes)


def _device_configuration(mapping: Any, where: str) -> dict[str, str]:
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and DEVICE_CONFIGURATION_KEY.match(k) and isinstance(v, str)
        for k, v in mapping.items()
    ):
        raise CatalogError(
            f"{where}: device_configuration must map names ([A-Za-z0-9_.-]) to strings (what RegisterThing "
            "answers the device; never a secret)"
        )
    return dict(mapping)
