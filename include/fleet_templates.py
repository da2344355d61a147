"""A fleet product's provisioning template and claim policy, rendered from the catalog and checked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2

from include.errors import TemplateError
from include.fleet_catalog import (
    CERTIFICATE_ID_PARAMETER,
    SERIAL_ATTRIBUTE,
    SERIAL_PARAMETER,
    TEMPLATE_ATTRIBUTE,
    FleetProduct,
)
from include.templates import MAX_TEMPLATE_BODY, _environment

MAX_POLICY_DOCUMENT = 2048  # characters without whitespace (AWS IoT's policy document limit)
# What a claim may do: connect, and use fleet provisioning's MQTT API for its own template.
CLAIM_ACTIONS = {"iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"}
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:iot:[^:]*:[^:]*:(?P<kind>topic|topicfilter|client)/(?P<name>.+)$")


def claim_topics(template_name: str) -> tuple[str, ...]:
    """Topic prefixes of fleet provisioning's MQTT API for this template (requests and their answers)."""
    return (
        "$aws/certificates/create/",
        "$aws/certificates/create-from-csr/",
        f"$aws/provisioning-templates/{template_name}/provision/",
    )


def _render(path: Path, context: dict[str, Any], what: str) -> dict[str, Any]:
    """The template rendered (the catalog's jinja2 sandbox) and parsed as a JSON object."""
    try:
        text = _environment(str(path.parent)).get_template(path.name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{what} {path.name}: line {exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{what} {path.name}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{what} {path.name}: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(
            f"{what} {path.name} does not render to JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise TemplateError(f"{what} {path.name} must render to a JSON object")
    return document


def render_fleet_template(product: FleetProduct) -> str:
    """The fleet provisioning template body: compact JSON, at most 10240 characters, contract checked."""
    what = f"fleet template for {product.model}"
    document = _render(product.template, product.template_context(), what)
    problems = check_fleet_template(product, document)
    if problems:
        raise TemplateError(f"{what} {product.template.name}: " + "; ".join(problems))
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    if len(body) > MAX_TEMPLATE_BODY:
        raise TemplateError(
            f"{what} renders to {len(body)} characters; AWS IoT accepts at most {MAX_TEMPLATE_BODY}"
        )
    return body


def check_fleet_template(product: FleetProduct, document: dict[str, Any]) -> list[str]:
    """What a fleet template must do for the pipeline: every problem, in words."""
    problems = []
    parameters = document.get("Parameters") or {}
    for name in (SERIAL_PARAMETER, CERTIFICATE_ID_PARAMETER):
        if name not in parameters:
            problems.append(f"Parameters must declare {name}")
    sent = {SERIAL_PARAMETER, *(a.parameter for a in product.attributes)}
    required = {
        name
        for name, spec in parameters.items()
        if not name.startswith("AWS::") and not (isinstance(spec, dict) and "Default" in spec)
    }
    if required - sent:
        missing = sorted(required - sent)
        problems.append(f"parameters {missing} have no Default and the device does not send them")
    resources = document.get("Resources") or {}
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources.values():
        if isinstance(resource, dict):
            by_type.setdefault(str(resource.get("Type")), []).append(resource.get("Properties") or {})
    certificates, things = by_type.get("AWS::IoT::Certificate", []), by_type.get("AWS::IoT::Thing", [])
    if len(certificates) != 1 or certificates[0].get("CertificateId") != {"Ref": CERTIFICATE_ID_PARAMETER}:
        problems.append(
            "it must have one AWS::IoT::Certificate whose CertificateId is "
            f'{{"Ref": "{CERTIFICATE_ID_PARAMETER}"}} (the certificate the device was just given)'
        )
    if len(things) != 1:
        problems.append("it must have one AWS::IoT::Thing")
    else:
        attributes = things[0].get("AttributePayload") or {}
        if attributes.get(SERIAL_ATTRIBUTE) != {"Ref": SERIAL_PARAMETER}:
            reference = json.dumps({"Ref": SERIAL_PARAMETER})
            problems.append(f"the thing's attribute {SERIAL_ATTRIBUTE} must be {reference}")
        if attributes.get(TEMPLATE_ATTRIBUTE) != product.template_name:
            problems.append(f"the thing's attribute {TEMPLATE_ATTRIBUTE} must be {product.template_name!r}")
    named = {p.get("PolicyName") for p in by_type.get("AWS::IoT::Policy", [])}
    if product.claim_policy in named:
        problems.append(f"the devices' certificates must not get the claim policy {product.claim_policy}")
    return problems


def render_claim_policy(product: FleetProduct) -> str:
    """The claim policy document (compact JSON), checked to reach only the template's provisioning topics."""
    what = f"claim policy for {product.model}"
    document = _render(product.claim_policy_template, {"template_name": product.template_name}, what)
    problems = check_claim_policy(product.template_name, document)
    if problems:
        raise TemplateError(f"{what} {product.claim_policy_template.name}: " + "; ".join(problems))
    text = json.dumps(document, separators=(",", ":"))
    if len(re.sub(r"\s", "", text)) > MAX_POLICY_DOCUMENT:
        raise TemplateError(f"{what} is longer than AWS IoT's {MAX_POLICY_DOCUMENT} characters")
    return text


def check_claim_policy(template_name: str, document: dict[str, Any]) -> list[str]:
    """Every Allow of the claim policy stays within fleet provisioning's topics of this template."""
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        return ["it must have a Statement list"]
    topics = claim_topics(template_name)
    problems = []
    for index, statement in enumerate(statements, start=1):
        if not isinstance(statement, dict):
            problems.append(f"statement {index} is not an object")
            continue
        if statement.get("Effect") == "Deny":
            continue  # a Deny only narrows what the claim may do
        actions = set(_listed(statement.get("Action")))
        if not actions or actions - CLAIM_ACTIONS:
            problems.append(
                f"statement {index} allows {sorted(actions - CLAIM_ACTIONS) or 'no action'}; a claim may "
                f"only be allowed {sorted(CLAIM_ACTIONS)}"
            )
        for resource in _listed(statement.get("Resource")):
            problem = _resource_problem(resource, actions, topics)
            if problem:
                problems.append(f"statement {index}: {problem}")
    return problems


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _resource_problem(resource: str, actions: set[str], topics: tuple[str, ...]) -> str | None:
    if actions == {"iot:Connect"}:
        return None  # any client id: one claim serves every device of the product
    found = _TOPIC_ARN.match(resource)
    if found is None or found["kind"] == "client":
        return f"resource {resource!r} is not a topic or topic filter ARN"
    if not found["name"].startswith(topics):
        return f"resource {resource!r} is outside fleet provisioning's topics ({', '.join(topics)})"
    return None
