"""POST /things: one thing through RegisterThing, with the template's CDF extensions before and after it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from include.catalog import Catalog, Product
from include.cdf import modes
from include.cdf.aws import aws_errors
from include.cdf.certificates import Material, delete_certificate
from include.cdf.config import CdfConfig
from include.cdf.errors import BadRequest, CdfError
from include.cdf.inventory_records import record_single
from include.cdf.manifest_rows import single_row
from include.cdf.parameters import AdditionalPolicy, CdfBlock, parse_parameters
from include.cdf.template_store import CdfTemplate, load_template
from include.inventory import Inventory
from include.outcomes import FAILED, PROVISIONED
from include.templates import render_template

SOURCE = "cdf-api POST /things"
MAX_PARAMETERS = 100  # RegisterThing's limit on the parameters map


@dataclass(frozen=True)
class Provisioned:
    """The response of POST /things. The private key is only ever in this object and the HTTP body."""

    thing_name: str
    certificate_pem: str | None
    private_key_pem: str | None
    public_key_pem: str | None
    resource_arns: dict[str, str]

    def __repr__(self) -> str:
        return f"Provisioned(thing_name={self.thing_name!r}, resource_arns={self.resource_arns!r})"


@dataclass(frozen=True)
class ThingServices:
    """What one request needs: AWS clients, the pipeline's catalog and inventory, the factory CA."""

    iot: Any
    s3: Any
    acm_pca: Any
    config: CdfConfig
    catalog: Callable[[], Catalog]
    inventory: Callable[[], Inventory]
    factory_ca: Callable[[], Any]

    @property
    def signers(self) -> modes.Signers:
        return modes.Signers(self.iot, self.acm_pca, self.factory_ca, self.config)


def check_parameters(parameters: Any) -> dict[str, str]:
    if not isinstance(parameters, Mapping):
        raise BadRequest("parameters: is required and must be an object of parameter names to string values")
    if len(parameters) > MAX_PARAMETERS:
        raise BadRequest(
            f"parameters: has {len(parameters)} entries; RegisterThing takes at most {MAX_PARAMETERS}"
        )
    for key, value in parameters.items():
        if not isinstance(value, str):
            raise BadRequest(f"parameters.{key}: must be a string")
    return dict(parameters)


def _thing_hint(template: CdfTemplate, parameters: Mapping[str, str]) -> str:
    """The thing's name before RegisterThing says it: the thing resource's ThingName, resolved if a Ref."""
    found = template.resource("AWS::IoT::Thing")
    name = (found[1].get("Properties") or {}).get("ThingName") if found else None
    if isinstance(name, dict) and isinstance(name.get("Ref"), str):
        name = parameters.get(name["Ref"])
    return name if isinstance(name, str) and name else "device"


def _serial(parameters: Mapping[str, str], thing_name: str) -> str:
    for key, value in parameters.items():
        if key.replace("_", "").lower() in ("serialnumber", "serial") and value:
            return value
    return thing_name


def provision_thing(
    services: ThingServices, template_id: str, parameters: Any, cdf_parameters: Any
) -> Provisioned:
    """Resolve the template, make the certificate its mode asks for, RegisterThing, then the post-steps."""
    given = check_parameters(parameters)
    catalog = services.catalog()
    template = load_template(services.s3, services.config, catalog, template_id)
    if template.product is not None:
        return _provision_product(services, catalog, template.product, given, cdf_parameters)
    block = template.block
    options = parse_parameters(cdf_parameters, block.mode)
    declared = template.parameters
    undeclared = sorted(set(given) - set(declared))
    if undeclared:
        raise BadRequest(f"parameters.{undeclared[0]}: template {template_id} declares no such parameter")
    modes.check_declared(block.mode, declared, given, template_id)
    hint = _thing_hint(template, given)
    material = modes.cdf_material(services.signers, block, options, declared, hint, _serial(given, hint))
    registered = _register(services, template.body, {**given, **material.parameters}, material)
    _policy_arns(services.iot, template.document, registered)
    thing_name = _name_of(registered, hint)
    _post_steps(services, block, template_id, thing_name, registered)
    return _done(services, f"cdf:{template_id}", thing_name, _serial(given, thing_name), material, registered)


def _provision_product(
    services: ThingServices, catalog: Catalog, product: Product, given: dict[str, str], cdf_parameters: Any
) -> Provisioned:
    """A catalog product: the manifest contract checks the device, its mode makes the certificate."""
    parse_parameters(cdf_parameters, None, what=f"cdfProvisioningParameters (product {product.model})")
    row = single_row(catalog, product, given)
    pca_arn = getattr(services.config.settings, "acm_pca_arn", None)
    material = modes.product_material(services.signers, product, row, pca_arn)
    signer_pem = None
    if product.certificate_mode in ("own_ca_key", "device_csr"):
        signer_pem = services.factory_ca().certificate_pem
    elif product.certificate_mode == "acm_pca":
        with aws_errors(f"ACM PCA {pca_arn}"):
            signer_pem = services.acm_pca.get_certificate_authority_certificate(
                CertificateAuthorityArn=pca_arn
            )["Certificate"]
    body = render_template(product, signer_pem)
    values = {"ThingName": row["thing_name"], **material.parameters}
    values |= {a.parameter: str(row.get(a.column) or "") for a in product.attributes}
    registered = _register(services, body, values, material)
    _policy_arns(services.iot, json.loads(body), registered)
    thing_name = _name_of(registered, row["thing_name"])
    return _done(services, product.model, thing_name, str(row["serial_number"]), material, registered)


def _register(
    services: ThingServices, body: str, parameters: dict[str, str], material: Material
) -> dict[str, Any]:
    """RegisterThing; a certificate this request registered first is deleted again when it fails."""
    try:
        with aws_errors("RegisterThing"):
            return services.iot.register_thing(templateBody=body, parameters=parameters)
    except CdfError as error:
        if material.registered and material.certificate_id:
            delete_certificate(services.iot, material.certificate_id)
        if error.status == 400:  # CDF's wording, which its clients may look for
            raise BadRequest(f"REGISTRATION_FAILED: {str(error).removeprefix('RegisterThing: ')}") from None
        raise


def _policy_arns(iot: Any, document: Mapping[str, Any], registered: dict[str, Any]) -> None:
    """RegisterThing may leave out a policy the template names (PolicyName): add it under its logical id."""
    arns = registered.setdefault("resourceArns", {})
    for logical, resource in (document.get("Resources") or {}).items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::IoT::Policy" or logical in arns:
            continue
        props = resource.get("Properties") or {}
        if isinstance(props.get("PolicyName"), str):
            with aws_errors(f"GetPolicy {props['PolicyName']}"):
                arns[logical] = iot.get_policy(policyName=props["PolicyName"])["policyArn"]


def _name_of(registered: Mapping[str, Any], hint: str) -> str:
    arn = (registered.get("resourceArns") or {}).get("thing") or ""
    return arn.rsplit("/", 1)[-1] if "/" in arn else hint


def _certificate_arn(registered: Mapping[str, Any]) -> str | None:
    arns = registered.get("resourceArns") or {}
    return arns.get("certificate") or next((a for a in arns.values() if ":cert/" in a), None)


def _post_steps(
    services: ThingServices, block: CdfBlock, template_id: str, thing_name: str, registered: Mapping[str, Any]
) -> None:
    """Additional policies (created when a document is given), CDF's client-id policy; after RegisterThing."""
    policies = list(block.attachAdditionalPolicies)
    if block.clientIdMustMatchThingName:
        policies.append(
            AdditionalPolicy(
                name=f"clientIdEnforcementPolicy_{thing_name}"[:128], document=client_id_policy(thing_name)
            )
        )
    if not policies:
        return
    target = _certificate_arn(registered)
    if target is None:
        raise BadRequest(
            f"thing {thing_name} was registered without a certificate: attachAdditionalPolicies has no target"
        )
    for policy in policies:
        name = ensure_policy(services.iot, policy, template_id)
        with aws_errors(
            f"thing {thing_name} was registered, but attaching policy {name}",
            not_found=(
                f"attachAdditionalPolicies: policy {name} does not exist in AWS IoT "
                f"(thing {thing_name} was registered)"
            ),
        ):
            services.iot.attach_policy(policyName=name, target=target)


def client_id_policy(thing_name: str) -> dict[str, Any]:
    """CDF's deprecated clientIdMustMatchThingName: connect only as the thing's own client id."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"arn:aws:iot:*:*:client/{thing_name}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}},
            }
        ],
    }


def policy_name(policy: AdditionalPolicy, scope: str) -> str:
    """CDF names a created policy `<name>_<shortid>`, one per request; ours is named by its template and
    document, so every thing of a template (single or bulk) shares the one policy, made once."""
    if policy.document is None or policy.name.startswith("clientIdEnforcementPolicy_"):
        return policy.name
    digest = hashlib.sha256(json.dumps([scope, policy.document], sort_keys=True).encode()).hexdigest()[:10]
    return f"{policy.name}_{digest}"[:128]


def ensure_policy(iot: Any, policy: AdditionalPolicy, scope: str) -> str:
    """The policy's name, created first when the policy comes with a document (an existing one is reused)."""
    name = policy_name(policy, scope)
    if policy.document is None:
        return name
    document = policy.document if isinstance(policy.document, str) else json.dumps(policy.document)
    try:
        with aws_errors(f"attachAdditionalPolicies: CreatePolicy {name}"):
            iot.create_policy(policyName=name, policyDocument=document)
    except CdfError as error:
        if "ResourceAlreadyExistsException" not in str(error):
            raise
    return name


def _done(
    services: ThingServices,
    model: str,
    thing_name: str,
    serial: str,
    material: Material,
    registered: Mapping[str, Any],
) -> Provisioned:
    arns = {str(k): str(v) for k, v in (registered.get("resourceArns") or {}).items()}
    certificate_pem = registered.get("certificatePem") or material.certificate_pem
    certificate_arn = _certificate_arn(registered)
    certificate_id = certificate_arn.rsplit("/", 1)[-1] if certificate_arn else material.certificate_id
    record_single(
        services.inventory(),
        source=SOURCE,
        model=model,
        thing_name=thing_name,
        serial_number=serial,
        outcome=PROVISIONED if arns.get("thing") else FAILED,
        thing_arn=arns.get("thing"),
        certificate_id=certificate_id,
        certificate_arn=certificate_arn,
        issuer=material.issuer,
    )
    return Provisioned(thing_name, certificate_pem, material.private_key_pem, material.public_key_pem, arns)
