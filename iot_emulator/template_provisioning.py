"""What a template does to the registry: one device's things, certificate, policies and attachments.

The same ``provision`` serves RegisterThing, every line of a bulk registration task and fleet provisioning
(where the device's claim-issued certificate feeds the pseudo-parameters). Prerequisites are checked before
anything is created, so the documented failures leave nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iot_emulator.errors import IotError, registration_failure
from iot_emulator.template_certificates import (
    LineCertificate,
    certificate_pseudo_parameters,
    obtain_certificate,
)
from iot_emulator.template_functions import as_string, json_type, template_error
from iot_emulator.template_language import POLICY, Resource, Template, policy_name_for_document

if TYPE_CHECKING:
    from iot_emulator.service import IotService

# Undocumented default when OverrideSettings is absent (see README divergences): leave an existing thing's
# properties alone on a re-run.
DEFAULT_OVERRIDE = {
    "AttributePayload": "DO_NOTHING",
    "ThingTypeName": "DO_NOTHING",
    "ThingGroups": "DO_NOTHING",
}


@dataclass
class ProvisionResult:
    """What one template run registered; RegisterThing's output and bulk RESULTS lines come from it."""

    resource_arns: dict[str, str]
    certificate_pem: str | None = None
    certificate_id: str | None = None
    thing_name: str | None = None
    device_configuration: dict[str, Any] = field(default_factory=dict)


class _Registration:
    """One template run for one device; ``cache`` remembers prerequisites already seen in the same batch."""

    def __init__(
        self,
        registry: IotService,
        template: Template,
        parameters: Mapping[str, Any],
        certificate_pem: str | None,
        cache: dict[str, set[str]] | None,
        owned_certificate_id: str | None = None,
    ) -> None:
        self.registry = registry
        self.owned_certificate_id = owned_certificate_id
        self.template = template
        self.cache = cache if cache is not None else {}
        self.context_pem = certificate_pem
        self.cert_props: dict[str, Any] | None = None
        self.cert: LineCertificate | None = None
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
            return as_string(props["CertificatePem"], path, "CertificatePem")
        return self._obtain_certificate().pem

    def _obtain_certificate(self) -> LineCertificate:
        if self.cert is None:
            resource = self.template.certificate_resource
            assert resource is not None and self.cert_props is not None
            self.cert = obtain_certificate(self.registry, resource, self.cert_props)
        return self.cert

    def run(self) -> ProvisionResult:
        template, ctx = self.template, self.ctx
        cert_res, thing_res = template.certificate_resource, template.thing_resource
        if cert_res is not None:
            self.cert_props = template.evaluate_resource(cert_res, ctx)
            if self.owned_certificate_id is not None:
                _check_owned_certificate(cert_res, self.cert_props, self.owned_certificate_id)
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
        registry = self.registry
        existing_thing = self._check_prerequisites(thing, thing_res, policies)
        arns: dict[str, str] = {}
        cert_res = self.template.certificate_resource
        cert = None
        if cert_res is not None:
            cert = self._obtain_certificate()
            arns[cert_res.logical_id] = cert.arn
        policy_names = []
        for logical_id, (name, document) in policies:
            policy_names.append(name)
            if document is not None:
                arns[logical_id] = self._ensure_policy(name, document)
        if thing is not None and thing_res is not None:
            arns[thing_res.logical_id] = self._apply_thing(thing, thing_res.overrides, existing_thing)
        if cert is not None:
            for name in policy_names:
                registry.attach_policy(policyName=name, target=cert.arn)
            if thing is not None:
                registry.attach_thing_principal(thingName=thing["name"], principal=cert.arn)
        return ProvisionResult(
            resource_arns=arns,
            certificate_pem=cert.pem if cert else None,
            certificate_id=cert.id if cert else None,
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
        registry, account = self.registry, self.registry.account_id
        for _, (name, document) in policies:
            if document is None:
                self._known(
                    "policy",
                    name,
                    lambda n=name: registry.get_policy(policyName=n),
                    f"Policy {name} not found.",
                )
        if thing is None or thing_res is None:
            return None
        if thing["type"] is not None:
            t = thing["type"]
            self._known(
                "thing_type",
                t,
                lambda: registry.describe_thing_type(thingTypeName=t),
                f"Thing Type {account}:{t} not found.",
            )
        for group in thing["groups"]:
            self._known(
                "thing_group",
                group,
                lambda g=group: registry.describe_thing_group(thingGroupName=g),
                f"Thing Group {account}:{group} not found.",
            )
        if thing["billing_group"] is not None:
            billing = thing["billing_group"]
            self._known(
                "billing_group",
                billing,
                lambda: registry.describe_billing_group(billingGroupName=billing),
                f"Billing Group {account}:{billing} not found.",
            )
        try:
            existing = registry.describe_thing(thingName=thing["name"])
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
            page = self.registry.list_thing_groups_for_thing(**kwargs)
            groups.extend(g["groupName"] for g in page.get("thingGroups", []))
            token = page.get("nextToken")
            if not token:
                return groups

    def _ensure_policy(self, name: str, document: str) -> str:
        seen = self.cache.setdefault("policy", set())
        arn = self.registry.arn(f"policy/{name}")
        if name in seen:
            return arn
        try:
            arn = self.registry.get_policy(policyName=name)["policyArn"]
        except IotError as exc:
            if exc.code != "ResourceNotFoundException":
                raise
            arn = self.registry.create_policy(policyName=name, policyDocument=document)["policyArn"]
        seen.add(name)
        return arn

    def _apply_thing(
        self, thing: dict[str, Any], overrides: dict[str, str], existing: dict[str, Any] | None
    ) -> str:
        registry, name = self.registry, thing["name"]
        if existing is None:
            kwargs: dict[str, Any] = {"thingName": name}
            if thing["type"] is not None:
                kwargs["thingTypeName"] = thing["type"]
            if thing["attributes"]:
                kwargs["attributePayload"] = {"attributes": thing["attributes"]}
            arn = registry.create_thing(**kwargs)["thingArn"]
            for group in thing["groups"]:
                registry.add_thing_to_thing_group(thingGroupName=group, thingName=name)
        else:
            arn = existing["thingArn"]
            overrides = {**DEFAULT_OVERRIDE, **overrides}
            given = thing["given"]
            if "AttributePayload" in given and overrides["AttributePayload"] in ("REPLACE", "MERGE"):
                merge = overrides["AttributePayload"] == "MERGE"
                registry.update_thing(
                    thingName=name, attributePayload={"attributes": thing["attributes"], "merge": merge}
                )
            if (
                "ThingTypeName" in given
                and overrides["ThingTypeName"] == "REPLACE"
                and thing["type"] != existing.get("thingTypeName")
            ):
                registry.update_thing(thingName=name, thingTypeName=thing["type"])
            if "ThingGroups" in given and overrides["ThingGroups"] in ("REPLACE", "MERGE"):
                current = set(self._groups_of(name))
                if overrides["ThingGroups"] == "REPLACE":
                    for group in current - set(thing["groups"]):
                        registry.remove_thing_from_thing_group(thingGroupName=group, thingName=name)
                for group in thing["groups"]:
                    if group not in current:
                        registry.add_thing_to_thing_group(thingGroupName=group, thingName=name)
        if thing["billing_group"] is not None:
            registry.add_thing_to_billing_group(billingGroupName=thing["billing_group"], thingName=name)
        return arn


def _thing_spec(resource: Resource, props: dict[str, Any]) -> dict[str, Any]:
    where = f"Resources.{resource.logical_id}.Properties"
    payload = props.get("AttributePayload") or {}
    if not isinstance(payload, dict):
        raise template_error(f"{where}.AttributePayload", f"must be an object, got {json_type(payload)}")
    groups = props.get("ThingGroups") or []
    if not isinstance(groups, list):
        raise template_error(
            f"{where}.ThingGroups", f"must be a list of group names, got {json_type(groups)}"
        )
    type_name = props.get("ThingTypeName")
    billing = props.get("BillingGroup")
    return {
        "name": as_string(props["ThingName"], f"{where}.ThingName", "ThingName"),
        "attributes": {
            k: as_string(v, f"{where}.AttributePayload.{k}", f"attribute '{k}'") for k, v in payload.items()
        },
        "type": as_string(type_name, f"{where}.ThingTypeName", "ThingTypeName") if type_name else None,
        "groups": [
            as_string(g, f"{where}.ThingGroups[{i}]", "a thing group name") for i, g in enumerate(groups)
        ],
        "billing_group": as_string(billing, f"{where}.BillingGroup", "BillingGroup") if billing else None,
        "given": props.keys(),
    }


def _check_owned_certificate(resource: Resource, props: dict[str, Any], certificate_id: str) -> None:
    """Fleet provisioning: the template's certificate is the device's own, named by its id."""
    where = f"Resources.{resource.logical_id}.Properties"
    if "CertificateId" not in props:
        raise template_error(
            where,
            "a fleet provisioning template names the device's certificate by CertificateId "
            '({"Ref": "AWS::IoT::Certificate::Id"})',
        )
    if props["CertificateId"] != certificate_id:
        raise template_error(
            f"{where}.CertificateId",
            "must be the certificate of the ownership token (AWS::IoT::Certificate::Id)",
        )


def _policy_spec(resource: Resource, props: dict[str, Any]) -> tuple[str, str | None]:
    """(policy name, document or None when the template names an existing policy)."""
    where = f"Resources.{resource.logical_id}.Properties"
    if "PolicyName" in props:
        return as_string(props["PolicyName"], f"{where}.PolicyName", "PolicyName"), None
    document = props["PolicyDocument"]
    if isinstance(document, dict):
        document = json.dumps(document, separators=(",", ":"))
    document = as_string(document, f"{where}.PolicyDocument", "PolicyDocument")
    return policy_name_for_document(document), document


def provision(
    registry: IotService,
    template: Template,
    parameters: Mapping[str, Any],
    *,
    certificate_pem: str | None = None,
    cache: dict[str, set[str]] | None = None,
    owned_certificate_id: str | None = None,
) -> ProvisionResult:
    """Run ``template`` for one device against ``registry`` (the caller holds its lock).

    ``certificate_pem`` is the certificate the device already holds (fleet provisioning): it feeds the
    AWS::IoT::Certificate::* pseudo-parameters. ``cache`` may be shared by the lines of one batch to skip
    re-checking prerequisites (thing types, groups, policies) already found. ``owned_certificate_id``
    (fleet provisioning) is the certificate the device proved it owns: the template's certificate must be it.
    Raises InvalidRequestException for template/parameter errors and ResourceRegistrationFailureException when
    the registry refuses a resource.
    """
    return _Registration(registry, template, parameters, certificate_pem, cache, owned_certificate_id).run()
