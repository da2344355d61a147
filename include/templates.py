"""Provisioning template bodies from catalog templates (jinja2 sandbox, undefined variables are errors)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from include.catalog import Product
from include.errors import TemplateError

MAX_TEMPLATE_BODY = 10240  # characters, StartThingRegistrationTask.templateBody


@functools.lru_cache(maxsize=16)
def _environment(directory: str) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def render_template(product: Product, ca_certificate_pem: str | None) -> str:
    """The template body for one product: compact JSON, at most 10240 characters, parameters checked.

    `ca_certificate_pem` is the CA that signs the product's certificates in IoT (none for modes whose
    template names no CA: aws_issued, without_ca).
    """
    template_path = Path(product.template)
    environment = _environment(str(template_path.parent))
    context: dict[str, Any] = {**product.template_context(), "ca_certificate_pem": ca_certificate_pem or ""}
    try:
        text = environment.get_template(template_path.name).render(**context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {template_path.name} for {product.model}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"template {template_path.name} for {product.model}: line {exc.lineno}: {exc.message}"
        ) from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {template_path.name} for {product.model}: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(
            f"template {template_path.name} for {product.model} does not render to JSON: {exc.msg} "
            f"at line {exc.lineno} column {exc.colno}"
        ) from None
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    if len(body) > MAX_TEMPLATE_BODY:
        raise TemplateError(
            f"template {template_path.name} for {product.model} renders to {len(body)} characters; "
            f"AWS IoT accepts at most {MAX_TEMPLATE_BODY}"
        )
    check_parameters(product, document)
    return body


def template_parameters(document: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(required, optional) parameter names a template declares: optional ones have a Default."""
    parameters = document.get("Parameters") or {}
    required = {
        name for name, spec in parameters.items() if not (isinstance(spec, dict) and "Default" in spec)
    }
    return required, set(parameters) - required


def line_parameters(product: Product) -> set[str]:
    """The keys every parameter-file line of this product carries."""
    return {"ThingName", product.certificate_parameter} | {a.parameter for a in product.attributes}


def check_parameters(product: Product, document: dict[str, Any]) -> None:
    """Every required template parameter is on every line, and every line key is a declared parameter."""
    required, optional = template_parameters(document)
    provided = line_parameters(product)
    missing = sorted(required - provided)
    undeclared = sorted(provided - required - optional)
    problems = []
    if missing:
        problems.append(f"parameters {missing} have no Default and are not on the parameter lines")
    if undeclared:
        problems.append(f"parameter lines carry {undeclared}, which the template does not declare")
    if problems:
        raise TemplateError(
            f"template {Path(product.template).name} for {product.model}: " + "; ".join(problems)
        )
