"""Provisioning templates as documents: sections, Parameters, Mappings, Resources, OverrideSettings.

``compile_template`` parses and checks a body once (cached) into a ``Template``, whose values are compiled
by ``template_functions``; RegisterThing, bulk registration tasks and fleet provisioning all run the same
compiled templates through ``template_provisioning``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from iot_emulator.limits import MAX_TEMPLATE_DEPTH, JsonTooDeep, nests_deeper_than
from iot_emulator.template_functions import (
    Const,
    Evaluator,
    LineContext,
    ValueCompiler,
    as_string,
    json_type,
    run,
    template_error,
)

MAX_TEMPLATE_BODY = 10240
THING, CERTIFICATE, POLICY = "AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy"
SECTIONS = ("Parameters", "Mappings", "Resources", "DeviceConfiguration")
PROPERTIES = {
    THING: ("ThingName", "AttributePayload", "ThingTypeName", "ThingGroups", "BillingGroup"),
    CERTIFICATE: (
        "CertificateId",
        "CertificatePem",
        "CACertificatePem",
        "CertificateSigningRequest",
        "Status",
    ),
    POLICY: ("PolicyName", "PolicyDocument"),
}
# OverrideSettings keys per resource type; the docs' prose spells thing keys UPPER_SNAKE, examples Pascal.
OVERRIDABLE = {
    THING: {
        "AttributePayload": "AttributePayload",
        "ATTRIBUTE_PAYLOAD": "AttributePayload",
        "ThingTypeName": "ThingTypeName",
        "THING_TYPE_NAME": "ThingTypeName",
        "ThingGroups": "ThingGroups",
        "THING_GROUPS": "ThingGroups",
    },
    CERTIFICATE: {"Status": "Status", "STATUS": "Status"},
}
OVERRIDE_ACTIONS = ("DO_NOTHING", "REPLACE", "FAIL", "MERGE")
MERGEABLE = ("AttributePayload", "ThingGroups")


@dataclass(frozen=True)
class Resource:
    logical_id: str
    type: str
    properties: dict[str, Evaluator]
    overrides: dict[str, str]


@dataclass(frozen=True)
class Template:
    """A parsed and checked provisioning template; ``evaluate`` runs it for one device's parameters."""

    defaults: dict[str, Any]
    resources: tuple[Resource, ...]
    device_configuration: tuple[tuple[str, Evaluator], ...]
    uses_cert_pseudo: bool

    @property
    def certificate_resource(self) -> Resource | None:
        return next((r for r in self.resources if r.type == CERTIFICATE), None)

    @property
    def thing_resource(self) -> Resource | None:
        return next((r for r in self.resources if r.type == THING), None)

    def line_context(self, parameters: Mapping[str, Any], pseudo: Callable[[str, str], str]) -> LineContext:
        values = {**self.defaults, **parameters} if self.defaults else parameters
        return LineContext(values, pseudo)

    def evaluate_resource(self, resource: Resource, ctx: LineContext) -> dict[str, Any]:
        return {name: get(ctx) for name, get in resource.properties.items()}

    def evaluate_device_configuration(self, ctx: LineContext) -> dict[str, Any]:
        return {key: get(ctx) for key, get in self.device_configuration}


def _check_mappings(mappings: Any) -> dict[str, Any]:
    if not isinstance(mappings, dict):
        raise template_error("Mappings", f"must be an object, got {json_type(mappings)}")
    for map_name, table in mappings.items():
        if not isinstance(table, dict):
            raise template_error(f"Mappings.{map_name}", f"must be an object, got {json_type(table)}")
        for top, second in table.items():
            if not isinstance(second, dict):
                raise template_error(
                    f"Mappings.{map_name}.{top}", f"must be an object, got {json_type(second)}"
                )
            for key, value in second.items():
                where = f"Mappings.{map_name}.{top}.{key}"
                if isinstance(value, dict):
                    raise template_error(
                        where, "Mappings hold plain values; intrinsic functions are not allowed"
                    )
                if isinstance(value, list) and not all(isinstance(v, str | int | float) for v in value):
                    raise template_error(where, "a list in Mappings may hold only plain values")
    return mappings


def _check_parameters(parameters: Any) -> dict[str, Any]:
    if not isinstance(parameters, dict):
        raise template_error("Parameters", f"must be an object, got {json_type(parameters)}")
    defaults: dict[str, Any] = {}
    for name, spec in parameters.items():
        where = f"Parameters.{name}"
        if not isinstance(spec, dict):
            raise template_error(where, f"must be an object with Type, got {json_type(spec)}")
        unknown = set(spec) - {"Type", "Default", "Description"}
        if unknown:
            raise template_error(
                where, f"unknown key(s) {sorted(unknown)} (allowed: Type, Default, Description)"
            )
        if spec.get("Type") != "String":
            raise template_error(f"{where}.Type", f"must be 'String', got {spec.get('Type')!r}")
        if "Default" in spec:
            defaults[name] = as_string(spec["Default"], f"{where}.Default", "Default")
    return defaults


def _compile_resource(compiler: ValueCompiler, logical_id: str, spec: Any) -> Resource:
    where = f"Resources.{logical_id}"
    if not isinstance(spec, dict):
        raise template_error(where, f"must be an object with Type and Properties, got {json_type(spec)}")
    unknown = set(spec) - {"Type", "Properties", "OverrideSettings"}
    if unknown:
        raise template_error(
            where, f"unknown key(s) {sorted(unknown)} (allowed: Type, Properties, OverrideSettings)"
        )
    kind = spec.get("Type")
    if kind not in PROPERTIES:
        raise template_error(f"{where}.Type", f"must be one of {', '.join(PROPERTIES)}, got {kind!r}")
    properties = spec.get("Properties", {})
    if not isinstance(properties, dict):
        raise template_error(f"{where}.Properties", f"must be an object, got {json_type(properties)}")
    for name in properties:
        if name not in PROPERTIES[kind]:
            raise template_error(
                f"{where}.Properties.{name}",
                f"unknown property for {kind} (allowed: {', '.join(PROPERTIES[kind])})",
            )
    compiled = {name: run(compiler.value(v, f"{where}.Properties.{name}")) for name, v in properties.items()}
    _check_resource_shape(kind, properties, f"{where}.Properties")
    return Resource(logical_id, kind, compiled, _compile_overrides(kind, spec.get("OverrideSettings"), where))


def _check_resource_shape(kind: str, properties: dict[str, Any], where: str) -> None:
    if kind == THING:
        if "ThingName" not in properties:
            raise template_error(where, "ThingName is required for AWS::IoT::Thing")
        payload = properties.get("AttributePayload")
        if payload is not None and not isinstance(payload, dict):
            raise template_error(f"{where}.AttributePayload", "must be an object of attribute name to value")
    elif kind == CERTIFICATE:
        sources = [
            p for p in ("CertificateSigningRequest", "CertificateId", "CertificatePem") if p in properties
        ]
        if len(sources) != 1:
            raise template_error(
                where,
                "exactly one of CertificateSigningRequest, CertificateId or CertificatePem is required, got "
                + (", ".join(sources) or "none"),
            )
        if "CACertificatePem" in properties and sources != ["CertificatePem"]:
            raise template_error(f"{where}.CACertificatePem", "is only allowed together with CertificatePem")
        status = properties.get("Status")
        if isinstance(status, str) and status.upper() not in ("ACTIVE", "INACTIVE"):
            raise template_error(f"{where}.Status", f"must be ACTIVE or INACTIVE, got {status!r}")
    elif kind == POLICY:
        given = [p for p in ("PolicyName", "PolicyDocument") if p in properties]
        if len(given) != 1:
            raise template_error(
                where,
                "exactly one of PolicyName (an existing policy) or PolicyDocument is required, got "
                + (", ".join(given) or "none"),
            )


def _compile_overrides(kind: str, settings: Any, where: str) -> dict[str, str]:
    if settings is None:
        return {}
    where = f"{where}.OverrideSettings"
    if kind not in OVERRIDABLE:
        raise template_error(where, f"OverrideSettings are not available for {kind}")
    if not isinstance(settings, dict):
        raise template_error(where, f"must be an object, got {json_type(settings)}")
    overrides: dict[str, str] = {}
    for key, action in settings.items():
        prop = OVERRIDABLE[kind].get(key)
        if prop is None:
            allowed = sorted({v for v in OVERRIDABLE[kind].values()})
            raise template_error(f"{where}.{key}", f"cannot be overridden (allowed: {', '.join(allowed)})")
        if action not in OVERRIDE_ACTIONS:
            raise template_error(
                f"{where}.{key}", f"must be one of {', '.join(OVERRIDE_ACTIONS)}, got {action!r}"
            )
        if action == "MERGE" and prop not in MERGEABLE:
            raise template_error(f"{where}.{key}", "MERGE is valid only for ThingGroups and AttributePayload")
        overrides[prop] = action
    return overrides


@lru_cache(maxsize=64)
def compile_template(body: str) -> Template:
    """Parse and check a template body once; raises InvalidRequestException naming what and where."""
    if len(body) > MAX_TEMPLATE_BODY:
        raise template_error("templateBody", f"is {len(body)} characters, the limit is {MAX_TEMPLATE_BODY}")
    if nests_deeper_than(body, MAX_TEMPLATE_DEPTH):  # before the recursive parser and compiler see it
        raise template_error("templateBody", str(JsonTooDeep(MAX_TEMPLATE_DEPTH)))
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise template_error(
            "templateBody", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise template_error("templateBody", f"must be a JSON object, got {json_type(document)}")
    unknown = [k for k in document if k not in SECTIONS]
    if unknown:
        raise template_error(unknown[0], f"unknown template section (allowed: {', '.join(SECTIONS)})")
    parameters = document.get("Parameters", {})
    defaults = _check_parameters(parameters)
    mappings = _check_mappings(document.get("Mappings", {}))
    resources = document.get("Resources")
    if not isinstance(resources, dict) or not resources:
        raise template_error("Resources", "must be a non-empty object of logical id to resource")
    compiler = ValueCompiler(parameters, mappings)
    compiled = tuple(_compile_resource(compiler, logical_id, spec) for logical_id, spec in resources.items())
    for kind in (THING, CERTIFICATE):
        ids = [r.logical_id for r in compiled if r.type == kind]
        if len(ids) > 1:
            raise template_error("Resources", f"a template declares at most one {kind}, got {', '.join(ids)}")
    configuration = document.get("DeviceConfiguration", {})
    if not isinstance(configuration, dict):
        raise template_error("DeviceConfiguration", f"must be an object, got {json_type(configuration)}")
    device_configuration = []
    for key, value in configuration.items():
        node = compiler.value(value, f"DeviceConfiguration.{key}")
        if isinstance(node, Const) and isinstance(node.value, dict | list):
            raise template_error(f"DeviceConfiguration.{key}", "nested objects are not supported")
        device_configuration.append((key, run(node)))
    return Template(defaults, compiled, tuple(device_configuration), compiler.uses_cert_pseudo)


def policy_name_for_document(document: str) -> str:
    """Name AWS gives a template policy declared only by its document: a hash of it (40 upper-case hex)."""
    return hashlib.sha1(document.encode(), usedforsecurity=False).hexdigest().upper()
