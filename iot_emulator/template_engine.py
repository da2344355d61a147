"""The provisioning template engine shared by RegisterThing, bulk registration tasks and fleet provisioning.

A template is parsed and checked once (``compile_template``) into closures; each device line is then
evaluated (``Template.evaluate``) and applied to the registry (``provision``) without re-reading the JSON.
Every error names the place in the template it comes from, e.g.
``Resources.thing.Properties.ThingName: Ref 'Name' is not a declared parameter``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from iot_emulator.errors import IotError, invalid_request

MAX_TEMPLATE_BODY = 10240
THING, CERTIFICATE, POLICY = "AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy"
CERT_PSEUDO_PREFIX = "AWS::IoT::Certificate::"
CERT_PSEUDO_PARAMETERS = frozenset(
    CERT_PSEUDO_PREFIX + name
    for name in (
        "Id",
        "CommonName",
        "Country",
        "Organization",
        "OrganizationalUnit",
        "DistinguishedNameQualifier",
        "StateName",
        "SerialNumber",
    )
)
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
# Undocumented default when OverrideSettings is absent (see README divergences): leave an existing thing's
# properties alone, but apply a certificate's Status (fleet provisioning relies on it to activate certs).
DEFAULT_OVERRIDE = {
    "AttributePayload": "DO_NOTHING",
    "ThingTypeName": "DO_NOTHING",
    "ThingGroups": "DO_NOTHING",
}
DEFAULT_CERT_STATUS_OVERRIDE = "REPLACE"

_MISSING = object()
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")

Evaluator = Callable[["LineContext"], Any]


def template_error(path: str, message: str) -> IotError:
    return invalid_request(f"{path}: {message}" if path else message)


def registration_failure(reason: str) -> IotError:
    """The error AWS raises when a resource of the template cannot be registered (aws-iot-facts.md 1.7)."""
    return IotError(
        "ResourceRegistrationFailureException",
        f"Register thing workflow execution terminates due to: {reason}",
    )


class LineContext:
    """What one device line is evaluated with: its parameters and the certificate pseudo-parameters."""

    __slots__ = ("values", "pseudo")

    def __init__(self, values: Mapping[str, Any], pseudo: Callable[[str, str], str]) -> None:
        self.values = values
        self.pseudo = pseudo


# ---------------------------------------------------------------- compiling values and intrinsic functions


@dataclass(frozen=True)
class _Const:
    value: Any


Compiled = _Const | Evaluator


def _run(node: Compiled) -> Evaluator:
    if isinstance(node, _Const):
        value = node.value
        return lambda ctx: value
    return node


def _as_string(value: Any, path: str, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    raise template_error(path, f"{what} must be a string, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class _Compiler:
    def __init__(self, parameters: Mapping[str, Any], mappings: Mapping[str, Any]) -> None:
        self.parameters = parameters
        self.mappings = mappings
        self.uses_cert_pseudo = False

    def value(self, node: Any, path: str) -> Compiled:
        if isinstance(node, dict):
            intrinsic = [k for k in node if k == "Ref" or k.startswith("Fn::")]
            if intrinsic:
                if len(node) != 1:
                    raise template_error(path, f"{intrinsic[0]} must be the only key of its object")
                name, args = next(iter(node.items()))
                handler = self._INTRINSICS.get(name)
                if handler is None:
                    raise template_error(
                        path,
                        f"unsupported intrinsic function '{name}' "
                        "(supported: Ref, Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap, Fn::Sub)",
                    )
                return handler(self, args, path if name == "Ref" else f"{path}.{name}")
            items = {k: self.value(v, f"{path}.{k}") for k, v in node.items()}
            if all(isinstance(v, _Const) for v in items.values()):
                return _Const({k: v.value for k, v in items.items()})
            funcs = [(k, _run(v)) for k, v in items.items()]
            return lambda ctx: {k: f(ctx) for k, f in funcs}
        if isinstance(node, list):
            elements = [self.value(v, f"{path}[{i}]") for i, v in enumerate(node)]
            if all(isinstance(v, _Const) for v in elements):
                return _Const([v.value for v in elements])
            funcs = [_run(v) for v in elements]
            return lambda ctx: [f(ctx) for f in funcs]
        return _Const(node)

    def _ref(self, name: Any, path: str) -> Compiled:
        if not isinstance(name, str):
            raise template_error(path, f"Ref takes a parameter name, got {_json_type(name)}")
        if name in CERT_PSEUDO_PARAMETERS:
            self.uses_cert_pseudo = True
            return lambda ctx: ctx.pseudo(name, path)
        if name not in self.parameters:
            if name.startswith("AWS::"):
                raise template_error(
                    path,
                    f"Ref '{name}' is not a supported pseudo-parameter "
                    f"(supported: {', '.join(sorted(CERT_PSEUDO_PARAMETERS))})",
                )
            raise template_error(path, f"Ref '{name}' is not a declared parameter")

        def ref(ctx: LineContext) -> Any:
            value = ctx.values.get(name, _MISSING)
            if value is _MISSING:
                raise template_error(path, f"parameter '{name}' has no value in the input and no Default")
            return _as_string(value, path, f"parameter '{name}'")

        return ref

    def _join(self, args: Any, path: str) -> Compiled:
        if not (isinstance(args, list) and len(args) == 2 and isinstance(args[0], str)):
            raise template_error(path, "Fn::Join takes [delimiter, [values...]] with a string delimiter")
        delimiter = args[0]
        values = self.value(args[1], f"{path}[1]")
        if isinstance(values, _Const) and not isinstance(values.value, list):
            raise template_error(
                f"{path}[1]", f"Fn::Join needs a list of values, got {_json_type(values.value)}"
            )
        get_values = _run(values)

        def join(ctx: LineContext) -> str:
            items = get_values(ctx)
            if not isinstance(items, list):
                raise template_error(
                    f"{path}[1]", f"Fn::Join needs a list of values, got {_json_type(items)}"
                )
            return delimiter.join(
                _as_string(v, f"{path}[1][{i}]", "a joined value") for i, v in enumerate(items)
            )

        return join

    def _select(self, args: Any, path: str) -> Compiled:
        if not (isinstance(args, list) and len(args) == 2):
            raise template_error(path, "Fn::Select takes [index, list]")
        get_index = _run(self.value(args[0], f"{path}[0]"))
        get_items = _run(self.value(args[1], f"{path}[1]"))

        def select(ctx: LineContext) -> Any:
            raw = get_index(ctx)
            try:
                index = int(raw)
            except (TypeError, ValueError):
                raise template_error(f"{path}[0]", f"index {raw!r} is not an integer") from None
            items = get_items(ctx)
            if not isinstance(items, list):
                raise template_error(f"{path}[1]", f"Fn::Select needs a list, got {_json_type(items)}")
            if not 0 <= index < len(items):
                raise template_error(
                    path, f"index {index} is out of range for a list of {len(items)} elements"
                )
            if items[index] is None:
                raise template_error(path, f"element {index} is null")
            return items[index]

        return select

    def _split(self, args: Any, path: str) -> Compiled:
        if not (isinstance(args, list) and len(args) == 2 and isinstance(args[0], str) and args[0]):
            raise template_error(
                path, "Fn::Split takes [delimiter, string] with a non-empty string delimiter"
            )
        delimiter = args[0]
        get_source = _run(self.value(args[1], f"{path}[1]"))
        return lambda ctx: _as_string(get_source(ctx), f"{path}[1]", "the string to split").split(delimiter)

    def _find_in_map(self, args: Any, path: str) -> Compiled:
        if not (isinstance(args, list) and len(args) == 3):
            raise template_error(path, "Fn::FindInMap takes [MapName, TopLevelKey, SecondLevelKey]")
        if isinstance(args[0], str) and args[0] not in self.mappings:
            raise template_error(f"{path}[0]", f"mapping '{args[0]}' is not declared in Mappings")
        keys = [_run(self.value(arg, f"{path}[{i}]")) for i, arg in enumerate(args)]
        mappings = self.mappings

        def find_in_map(ctx: LineContext) -> Any:
            map_name, top, second = (
                _as_string(k(ctx), f"{path}[{i}]", "a map key") for i, k in enumerate(keys)
            )
            table = mappings.get(map_name)
            if table is None:
                raise template_error(f"{path}[0]", f"mapping '{map_name}' is not declared in Mappings")
            if top not in table:
                raise template_error(f"{path}[1]", f"key '{top}' is not in mapping '{map_name}'")
            if second not in table[top]:
                raise template_error(f"{path}[2]", f"key '{second}' is not in mapping '{map_name}'.'{top}'")
            return table[top][second]

        return find_in_map

    def _sub(self, args: Any, path: str) -> Compiled:
        if isinstance(args, str):
            text, variables = args, {}
        elif (
            isinstance(args, list)
            and len(args) == 2
            and isinstance(args[0], str)
            and isinstance(args[1], dict)
        ):
            text, variables = args
        else:
            raise template_error(path, "Fn::Sub takes a string or [string, {variable: value}]")
        local = {k: _run(self.value(v, f"{path}[1].{k}")) for k, v in variables.items()}
        parts: list[str | Evaluator] = []
        position = 0
        for match in _SUB_VARIABLE.finditer(text):
            parts.append(text[position : match.start()])
            position = match.end()
            name = match.group(1)
            if name.startswith("!"):
                parts.append("${" + name[1:] + "}")
            elif name in local:
                get = local[name]
                parts.append(lambda ctx, get=get, name=name: _as_string(get(ctx), path, f"variable '{name}'"))
            else:
                parts.append(_run(self._ref(name, path)))
        parts.append(text[position:])
        if all(isinstance(p, str) for p in parts):
            return _Const("".join(parts))  # type: ignore[arg-type]
        return lambda ctx: "".join(p if isinstance(p, str) else p(ctx) for p in parts)

    _INTRINSICS: dict[str, Callable[[_Compiler, Any, str], Compiled]] = {
        "Ref": _ref,
        "Fn::Join": _join,
        "Fn::Select": _select,
        "Fn::Split": _split,
        "Fn::FindInMap": _find_in_map,
        "Fn::Sub": _sub,
    }


# ---------------------------------------------------------------- the compiled template


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
        raise template_error("Mappings", f"must be an object, got {_json_type(mappings)}")
    for map_name, table in mappings.items():
        if not isinstance(table, dict):
            raise template_error(f"Mappings.{map_name}", f"must be an object, got {_json_type(table)}")
        for top, second in table.items():
            if not isinstance(second, dict):
                raise template_error(
                    f"Mappings.{map_name}.{top}", f"must be an object, got {_json_type(second)}"
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
        raise template_error("Parameters", f"must be an object, got {_json_type(parameters)}")
    defaults: dict[str, Any] = {}
    for name, spec in parameters.items():
        where = f"Parameters.{name}"
        if not isinstance(spec, dict):
            raise template_error(where, f"must be an object with Type, got {_json_type(spec)}")
        unknown = set(spec) - {"Type", "Default", "Description"}
        if unknown:
            raise template_error(
                where, f"unknown key(s) {sorted(unknown)} (allowed: Type, Default, Description)"
            )
        if spec.get("Type") != "String":
            raise template_error(f"{where}.Type", f"must be 'String', got {spec.get('Type')!r}")
        if "Default" in spec:
            defaults[name] = _as_string(spec["Default"], f"{where}.Default", "Default")
    return defaults


def _compile_resource(compiler: _Compiler, logical_id: str, spec: Any) -> Resource:
    where = f"Resources.{logical_id}"
    if not isinstance(spec, dict):
        raise template_error(where, f"must be an object with Type and Properties, got {_json_type(spec)}")
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
        raise template_error(f"{where}.Properties", f"must be an object, got {_json_type(properties)}")
    for name in properties:
        if name not in PROPERTIES[kind]:
            raise template_error(
                f"{where}.Properties.{name}",
                f"unknown property for {kind} (allowed: {', '.join(PROPERTIES[kind])})",
            )
    compiled = {name: _run(compiler.value(v, f"{where}.Properties.{name}")) for name, v in properties.items()}
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
        raise template_error(where, f"must be an object, got {_json_type(settings)}")
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
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise template_error(
            "templateBody", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise template_error("templateBody", f"must be a JSON object, got {_json_type(document)}")
    unknown = [k for k in document if k not in SECTIONS]
    if unknown:
        raise template_error(unknown[0], f"unknown template section (allowed: {', '.join(SECTIONS)})")
    parameters = document.get("Parameters", {})
    defaults = _check_parameters(parameters)
    mappings = _check_mappings(document.get("Mappings", {}))
    resources = document.get("Resources")
    if not isinstance(resources, dict) or not resources:
        raise template_error("Resources", "must be a non-empty object of logical id to resource")
    compiler = _Compiler(parameters, mappings)
    compiled = tuple(_compile_resource(compiler, logical_id, spec) for logical_id, spec in resources.items())
    for kind in (THING, CERTIFICATE):
        ids = [r.logical_id for r in compiled if r.type == kind]
        if len(ids) > 1:
            raise template_error("Resources", f"a template declares at most one {kind}, got {', '.join(ids)}")
    configuration = document.get("DeviceConfiguration", {})
    if not isinstance(configuration, dict):
        raise template_error("DeviceConfiguration", f"must be an object, got {_json_type(configuration)}")
    device_configuration = []
    for key, value in configuration.items():
        node = compiler.value(value, f"DeviceConfiguration.{key}")
        if isinstance(node, _Const) and isinstance(node.value, dict | list):
            raise template_error(f"DeviceConfiguration.{key}", "nested objects are not supported")
        device_configuration.append((key, _run(node)))
    return Template(defaults, compiled, tuple(device_configuration), compiler.uses_cert_pseudo)


def policy_name_for_document(document: str) -> str:
    """Name AWS gives a template policy declared only by its document: a hash of it (40 upper-case hex)."""
    return hashlib.sha1(document.encode(), usedforsecurity=False).hexdigest().upper()


# ---------------------------------------------------------------- applying a template to the registry

_SUBJECT_PSEUDO_OIDS = {
    "CommonName": "2.5.4.3",
    "Country": "2.5.4.6",
    "Organization": "2.5.4.10",
    "OrganizationalUnit": "2.5.4.11",
    "DistinguishedNameQualifier": "2.5.4.46",
    "StateName": "2.5.4.8",
    "SerialNumber": "2.5.4.5",
}


@dataclass
class ProvisionResult:
    """What one template run registered; RegisterThing's output and bulk RESULTS lines come from it."""

    resource_arns: dict[str, str]
    certificate_pem: str | None = None
    certificate_id: str | None = None
    thing_name: str | None = None
    device_configuration: dict[str, Any] = field(default_factory=dict)


def certificate_pseudo_parameters(certificate_pem: str) -> dict[str, str]:
    """The AWS::IoT::Certificate::* values of a certificate: its id and the attributes of its subject."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise registration_failure("the certificate is not a valid PEM encoded X.509 certificate") from exc
    values = {CERT_PSEUDO_PREFIX + "Id": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()}
    for name, oid in _SUBJECT_PSEUDO_OIDS.items():
        attributes = [a for a in cert.subject if a.oid.dotted_string == oid]
        if attributes:
            values[CERT_PSEUDO_PREFIX + name] = str(attributes[0].value)
    return values


class _Registration:
    """One template run for one device; ``cache`` remembers prerequisites already seen in the same batch."""

    def __init__(
        self,
        backend: Any,
        template: Template,
        parameters: Mapping[str, Any],
        certificate_pem: str | None,
        cache: dict[str, set[str]] | None,
    ) -> None:
        self.backend = backend
        self.template = template
        self.cache = cache if cache is not None else {}
        self.context_pem = certificate_pem
        self.cert_props: dict[str, Any] | None = None
        self.cert_pem: str | None = None
        self.cert_id: str | None = None
        self.cert_arn: str | None = None
        self._pseudo: dict[str, str] | None = None
        self.ctx = template.line_context(parameters, self.pseudo)

    # pseudo-parameters come from the certificate of the line, resolved only if the template uses them
    def pseudo(self, name: str, path: str) -> str:
        if self._pseudo is None:
            pem = self.context_pem or self._certificate_pem_for_pseudo(name, path)
            self._pseudo = certificate_pseudo_parameters(pem)
        value = self._pseudo.get(name)
        if value is None:
            raise template_error(path, f"{name}: the certificate subject has no such attribute")
        return value

    def _certificate_pem_for_pseudo(self, name: str, path: str) -> str:
        props = self.cert_props
        if props is None:
            raise template_error(
                path, f"{name} cannot be resolved: the template's certificate is not known yet"
            )
        if "CertificatePem" in props:
            return _as_string(props["CertificatePem"], path, "CertificatePem")
        self._obtain_certificate()
        assert self.cert_pem is not None
        return self.cert_pem

    def run(self) -> ProvisionResult:
        template, ctx = self.template, self.ctx
        cert_res, thing_res = template.certificate_resource, template.thing_resource
        if cert_res is not None:
            self.cert_props = template.evaluate_resource(cert_res, ctx)
        thing = _thing_spec(thing_res, template.evaluate_resource(thing_res, ctx)) if thing_res else None
        policies = [
            (r.logical_id, _policy_spec(r, template.evaluate_resource(r, ctx)))
            for r in template.resources
            if r.type == POLICY
        ]
        device_configuration = template.evaluate_device_configuration(ctx)
        try:
            return self._register(thing, thing_res, policies, device_configuration)
        except IotError as exc:
            if exc.code == "ResourceRegistrationFailureException":
                raise
            raise registration_failure(exc.message) from None

    def _register(
        self,
        thing: dict[str, Any] | None,
        thing_res: Resource | None,
        policies: list[tuple[str, tuple[str, str | None]]],
        device_configuration: dict[str, Any],
    ) -> ProvisionResult:
        backend = self.backend
        existing_thing = self._check_prerequisites(thing, thing_res, policies)
        arns: dict[str, str] = {}
        if self.cert_props is not None:
            self._obtain_certificate()
            cert_res = self.template.certificate_resource
            assert cert_res is not None and self.cert_arn is not None
            arns[cert_res.logical_id] = self.cert_arn
        policy_names = []
        for logical_id, (name, document) in policies:
            policy_names.append(name)
            if document is not None:
                arns[logical_id] = self._ensure_policy(name, document)
        if thing is not None and thing_res is not None:
            arns[thing_res.logical_id] = self._apply_thing(thing, thing_res.overrides, existing_thing)
        if self.cert_arn is not None:
            for name in policy_names:
                backend.attach_policy(policyName=name, target=self.cert_arn)
            if thing is not None:
                backend.attach_thing_principal(thingName=thing["name"], principal=self.cert_arn)
        return ProvisionResult(
            resource_arns=arns,
            certificate_pem=self.cert_pem,
            certificate_id=self.cert_id,
            thing_name=thing["name"] if thing else None,
            device_configuration=device_configuration,
        )

    def _known(self, kind: str, name: str, check: Callable[[], Any], missing: str) -> None:
        seen = self.cache.setdefault(kind, set())
        if name in seen:
            return
        try:
            check()
        except IotError as exc:
            if exc.code == "ResourceNotFoundException":
                raise registration_failure(missing) from None
            raise
        seen.add(name)

    def _check_prerequisites(
        self,
        thing: dict[str, Any] | None,
        thing_res: Resource | None,
        policies: list[tuple[str, tuple[str, str | None]]],
    ) -> dict[str, Any] | None:
        """Everything that can make the line fail is checked before anything is created."""
        backend, account = self.backend, self.backend.account_id
        for _, (name, document) in policies:
            if document is None:
                self._known(
                    "policy",
                    name,
                    lambda n=name: backend.get_policy(policyName=n),
                    f"Policy {name} not found.",
                )
        if thing is None or thing_res is None:
            return None
        if thing["type"] is not None:
            t = thing["type"]
            self._known(
                "thing_type",
                t,
                lambda: backend.describe_thing_type(thingTypeName=t),
                f"Thing Type {account}:{t} not found.",
            )
        for group in thing["groups"]:
            self._known(
                "thing_group",
                group,
                lambda g=group: backend.describe_thing_group(thingGroupName=g),
                f"Thing Group {account}:{group} not found.",
            )
        if thing["billing_group"] is not None:
            billing = thing["billing_group"]
            if not hasattr(backend, "describe_billing_group"):
                raise registration_failure(
                    f"Billing Group {billing}: billing groups are not supported by this emulator."
                )
            self._known(
                "billing_group",
                billing,
                lambda: backend.describe_billing_group(billingGroupName=billing),
                f"Billing Group {account}:{billing} not found.",
            )
        try:
            existing = backend.describe_thing(thingName=thing["name"])
        except IotError as exc:
            if exc.code == "ResourceNotFoundException":
                return None
            raise
        overrides = {**DEFAULT_OVERRIDE, **thing_res.overrides}
        for prop, current, wanted in (
            ("AttributePayload", existing.get("attributes") or {}, thing["attributes"]),
            ("ThingTypeName", existing.get("thingTypeName"), thing["type"]),
            (
                "ThingGroups",
                self._groups_of(thing["name"]) if "ThingGroups" in thing["given"] else None,
                None,
            ),
        ):
            if overrides[prop] != "FAIL" or prop not in thing["given"]:
                continue
            if prop == "ThingGroups":
                current, wanted = set(current or ()), set(thing["groups"])
            if current != wanted:
                raise registration_failure(
                    f"ResourceConflictsException: thing {thing['name']} already exists with a different "
                    f"{prop} and the template's OverrideSettings say {prop}: FAIL."
                )
        return existing

    def _groups_of(self, thing_name: str) -> list[str]:
        groups: list[str] = []
        token = None
        while True:
            kwargs = {"thingName": thing_name, **({"nextToken": token} if token else {})}
            page = self.backend.list_thing_groups_for_thing(**kwargs)
            groups.extend(g["groupName"] for g in page.get("thingGroups", []))
            token = page.get("nextToken")
            if not token:
                return groups

    def _obtain_certificate(self) -> None:
        if self.cert_arn is not None:
            return
        props, backend = self.cert_props, self.backend
        assert props is not None
        cert_res = self.template.certificate_resource
        where = f"Resources.{cert_res.logical_id}.Properties" if cert_res else "Resources"
        status = _as_string(props.get("Status", "ACTIVE"), f"{where}.Status", "Status").upper()
        if status not in ("ACTIVE", "INACTIVE"):
            raise template_error(f"{where}.Status", f"must be ACTIVE or INACTIVE, got {status!r}")
        if "CertificateSigningRequest" in props:
            csr = _as_string(
                props["CertificateSigningRequest"], f"{where}.CertificateSigningRequest", "a CSR"
            )
            issued = backend.create_certificate_from_csr(
                certificateSigningRequest=csr, setAsActive=status == "ACTIVE"
            )
            self.cert_id, self.cert_arn, self.cert_pem = (
                issued["certificateId"],
                issued["certificateArn"],
                issued["certificatePem"],
            )
            return
        if "CertificatePem" in props:
            pem = _as_string(props["CertificatePem"], f"{where}.CertificatePem", "CertificatePem")
            ca_pem = props.get("CACertificatePem")
            kwargs: dict[str, Any] = {"certificatePem": pem, "status": status}
            if ca_pem:
                kwargs["caCertificatePem"] = _as_string(
                    ca_pem, f"{where}.CACertificatePem", "CACertificatePem"
                )
            try:
                registered = backend.register_certificate(**kwargs)
            except IotError as exc:
                if exc.code != "ResourceAlreadyExistsException":
                    raise
                cert_id = (
                    exc.fields.get("resourceId")
                    or certificate_pseudo_parameters(pem)[CERT_PSEUDO_PREFIX + "Id"]
                )
                self._apply_status(cert_id, status, props)
                self.cert_id, self.cert_arn, self.cert_pem = cert_id, backend.arn(f"cert/{cert_id}"), pem
                return
            self.cert_id, self.cert_arn, self.cert_pem = (
                registered["certificateId"],
                registered["certificateArn"],
                pem,
            )
            return
        cert_id = _as_string(props["CertificateId"], f"{where}.CertificateId", "CertificateId")
        description = self._apply_status(cert_id, status, props)
        self.cert_id, self.cert_arn = cert_id, description["certificateArn"]
        self.cert_pem = description["certificatePem"]

    def _apply_status(self, cert_id: str, status: str, props: dict[str, Any]) -> dict[str, Any]:
        """An existing certificate gets the template's Status unless OverrideSettings say otherwise."""
        description = self.backend.describe_certificate(certificateId=cert_id)["certificateDescription"]
        cert_res = self.template.certificate_resource
        action = (cert_res.overrides if cert_res else {}).get("Status", DEFAULT_CERT_STATUS_OVERRIDE)
        if description["status"] != status and action != "DO_NOTHING":
            if action == "FAIL":
                raise registration_failure(
                    f"ResourceConflictsException: certificate {cert_id} already exists with status "
                    f"{description['status']} and the template's OverrideSettings say Status: FAIL."
                )
            self.backend.update_certificate(certificateId=cert_id, newStatus=status)
        return description

    def _ensure_policy(self, name: str, document: str) -> str:
        seen = self.cache.setdefault("policy", set())
        arn = self.backend.arn(f"policy/{name}")
        if name in seen:
            return arn
        try:
            arn = self.backend.get_policy(policyName=name)["policyArn"]
        except IotError as exc:
            if exc.code != "ResourceNotFoundException":
                raise
            arn = self.backend.create_policy(policyName=name, policyDocument=document)["policyArn"]
        seen.add(name)
        return arn

    def _apply_thing(
        self, thing: dict[str, Any], overrides: dict[str, str], existing: dict[str, Any] | None
    ) -> str:
        backend, name = self.backend, thing["name"]
        if existing is None:
            kwargs: dict[str, Any] = {"thingName": name}
            if thing["type"] is not None:
                kwargs["thingTypeName"] = thing["type"]
            if thing["attributes"]:
                kwargs["attributePayload"] = {"attributes": thing["attributes"]}
            arn = backend.create_thing(**kwargs)["thingArn"]
            for group in thing["groups"]:
                backend.add_thing_to_thing_group(thingGroupName=group, thingName=name)
        else:
            arn = existing["thingArn"]
            overrides = {**DEFAULT_OVERRIDE, **overrides}
            given = thing["given"]
            if "AttributePayload" in given and overrides["AttributePayload"] in ("REPLACE", "MERGE"):
                merge = overrides["AttributePayload"] == "MERGE"
                backend.update_thing(
                    thingName=name, attributePayload={"attributes": thing["attributes"], "merge": merge}
                )
            if (
                "ThingTypeName" in given
                and overrides["ThingTypeName"] == "REPLACE"
                and thing["type"] != existing.get("thingTypeName")
            ):
                backend.update_thing(thingName=name, thingTypeName=thing["type"])
            if "ThingGroups" in given and overrides["ThingGroups"] in ("REPLACE", "MERGE"):
                current = set(self._groups_of(name))
                if overrides["ThingGroups"] == "REPLACE":
                    for group in current - set(thing["groups"]):
                        backend.remove_thing_from_thing_group(thingGroupName=group, thingName=name)
                for group in thing["groups"]:
                    if group not in current:
                        backend.add_thing_to_thing_group(thingGroupName=group, thingName=name)
        if thing["billing_group"] is not None:
            backend.add_thing_to_billing_group(billingGroupName=thing["billing_group"], thingName=name)
        return arn


def _thing_spec(resource: Resource, props: dict[str, Any]) -> dict[str, Any]:
    where = f"Resources.{resource.logical_id}.Properties"
    payload = props.get("AttributePayload") or {}
    if not isinstance(payload, dict):
        raise template_error(f"{where}.AttributePayload", f"must be an object, got {_json_type(payload)}")
    groups = props.get("ThingGroups") or []
    if not isinstance(groups, list):
        raise template_error(
            f"{where}.ThingGroups", f"must be a list of group names, got {_json_type(groups)}"
        )
    type_name = props.get("ThingTypeName")
    billing = props.get("BillingGroup")
    return {
        "name": _as_string(props["ThingName"], f"{where}.ThingName", "ThingName"),
        "attributes": {
            k: _as_string(v, f"{where}.AttributePayload.{k}", f"attribute '{k}'") for k, v in payload.items()
        },
        "type": _as_string(type_name, f"{where}.ThingTypeName", "ThingTypeName") if type_name else None,
        "groups": [
            _as_string(g, f"{where}.ThingGroups[{i}]", "a thing group name") for i, g in enumerate(groups)
        ],
        "billing_group": _as_string(billing, f"{where}.BillingGroup", "BillingGroup") if billing else None,
        "given": props.keys(),
    }


def _policy_spec(resource: Resource, props: dict[str, Any]) -> tuple[str, str | None]:
    """(policy name, document or None when the template names an existing policy)."""
    where = f"Resources.{resource.logical_id}.Properties"
    if "PolicyName" in props:
        return _as_string(props["PolicyName"], f"{where}.PolicyName", "PolicyName"), None
    document = props["PolicyDocument"]
    if isinstance(document, dict):
        document = json.dumps(document, separators=(",", ":"))
    document = _as_string(document, f"{where}.PolicyDocument", "PolicyDocument")
    return policy_name_for_document(document), document


def provision(
    backend: Any,
    template: Template,
    parameters: Mapping[str, Any],
    *,
    certificate_pem: str | None = None,
    cache: dict[str, set[str]] | None = None,
) -> ProvisionResult:
    """Run ``template`` for one device against ``backend`` (the caller holds the backend lock).

    ``certificate_pem`` is the certificate the device already holds (fleet provisioning): it feeds the
    AWS::IoT::Certificate::* pseudo-parameters. ``cache`` may be shared by the lines of one batch to skip
    re-checking prerequisites (thing types, groups, policies) already found.
    Raises InvalidRequestException for template/parameter errors and ResourceRegistrationFailureException when
    the registry refuses a resource.
    """
    return _Registration(backend, template, parameters, certificate_pem, cache).run()
