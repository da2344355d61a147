"""A bulk request's CDF template as a catalog product of the pipeline: the entry, its template, its rows.

The template stays the user's: only its certificate resource is rewritten into the pipeline's form for the
mode (a PEM signed by a CA registered in IoT, a CSR AWS signs, or the id of a certificate registered without
a CA), its parameters are renamed to the pipeline's line keys (the thing's name parameter becomes ThingName,
the others capitalised attribute parameters), an inline policy document becomes a named policy created
first, and the additional policies become policy resources. The CDF mode becomes the catalog's
certificate_mode (MODE_OF); the pipeline then validates, issues, registers and reconciles as for any batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from include.catalog import ATTRIBUTE_NAME_PATTERN, RESERVED_PARAMETERS
from include.cdf.errors import BadRequest
from include.cdf.modes import FILLED
from include.cdf.parameters import ACMPCA, CdfBlock

# CDF mode (acmpca split by its sub-mode) -> the pipeline's certificate_mode.
MODE_OF = {
    "createDeviceCertificate": "own_ca_key",
    "createDeviceAWSCertificate": "aws_issued",
    "registerDeviceCertificateWithoutCA": "without_ca",
    "acmpca:REGISTER_WITH_CA": "acm_pca",
    "acmpca:REGISTER_WITHOUT_CA": "acm_pca_without_ca",
}
CERTIFICATE_PROPERTIES = {
    "own_ca_key": {"CertificatePem": {"Ref": "CertificatePem"}, "CACertificatePem": "__CDF_CA_PEM__"},
    "acm_pca": {"CertificatePem": {"Ref": "CertificatePem"}, "CACertificatePem": "__CDF_CA_PEM__"},
    # As without_ca: each certificate registered on its own, the line carrying its id.
    "acm_pca_without_ca": {"CertificateId": {"Ref": "CertificateId"}},
    "aws_issued": {"CertificateSigningRequest": {"Ref": "CSR"}},
    "without_ca": {"CertificateId": {"Ref": "CertificateId"}},
}
# The line key of each mode's certificate (include.catalog.CERTIFICATE_PARAMETERS); the rest: CertificatePem.
LINE_KEY = {"aws_issued": "CSR", "without_ca": "CertificateId", "acm_pca_without_ca": "CertificateId"}
THING_NAME_COLUMN = "thingname"
SERIAL_KEYS = ("serialnumber", "serial_number", "serial")
RESERVED_COLUMNS = ("model", "csr", "row", "thing_name", THING_NAME_COLUMN)


def pipeline_mode(block: CdfBlock) -> str:
    mode = block.mode
    if mode is None:
        raise BadRequest(
            "bulk provisioning needs a CDF certificate mode in the template (createDeviceCertificate, "
            "createDeviceAWSCertificate, registerDeviceCertificateWithoutCA or acmpca): the pipeline makes "
            "every certificate; rows that bring their own are not a pipeline mode yet"
        )
    if mode == ACMPCA:
        assert block.acmpca is not None
        return MODE_OF[f"acmpca:{block.acmpca.mode}"]
    return MODE_OF[mode]


@dataclass
class Derived:
    """The product a bulk request becomes: its catalog entry (less the template path) and template text."""

    model: str
    mode: str
    entry: dict[str, Any]
    template_text: str
    columns: dict[str, str]  # template parameter (as the caller names it) -> manifest column
    thing_parameter: str
    filled: tuple[str, ...]  # parameters the pipeline fills: a row must not give them
    inline_policies: dict[str, str] = field(default_factory=dict)  # name -> document, to create first

    @property
    def digest(self) -> str:
        text = json.dumps([self.entry, self.template_text], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_id(template_id: str) -> str:
    """A catalog model name for a CDF template ([a-zA-Z0-9:_-], as the catalog requires)."""
    return "cdf-" + re.sub(r"[^A-Za-z0-9_-]", "-", template_id)[:100]


def _rename(value: Any, names: Mapping[str, str]) -> Any:
    """Every Ref to a renamed parameter, and every ${name} in an Fn::Sub string, renamed."""
    if isinstance(value, dict):
        if set(value) == {"Ref"} and value["Ref"] in names:
            return {"Ref": names[value["Ref"]]}
        renamed = {key: _rename(item, names) for key, item in value.items()}
        if "Fn::Sub" in renamed:
            renamed["Fn::Sub"] = _sub(renamed["Fn::Sub"], names)
        return renamed
    if isinstance(value, list):
        return [_rename(item, names) for item in value]
    return value


def _sub(value: Any, names: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\$\{([^}!]+)\}", lambda m: "${" + names.get(m.group(1), m.group(1)) + "}", value)
    if isinstance(value, list) and value:
        return [_sub(value[0], names), *value[1:]]
    return value


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["Ref"]} if isinstance(value.get("Ref"), str) else set()
        if isinstance(value.get("Fn::Sub"), str | list):
            text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else str(value["Fn::Sub"][0])
            found |= set(re.findall(r"\$\{([^}!.]+)\}", text))
        return found.union(*(_refs(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_refs(item) for item in value)) if value else set()
    return set()


def _resource(document: dict[str, Any], kind: str, template_id: str) -> tuple[str, dict[str, Any]]:
    found = [
        (n, r) for n, r in document["Resources"].items() if isinstance(r, dict) and r.get("Type") == kind
    ]
    if len(found) != 1:
        raise BadRequest(
            f"template {template_id}: bulk needs exactly one {kind} resource, it has {len(found)}"
        )
    return found[0]


def derive(
    template_id: str,
    document: Mapping[str, Any],
    block: CdfBlock,
    *,
    validity_days: int,
    extra_policies: Sequence[str],
) -> Derived:
    """The catalog entry and template of a CDF template, or BadRequest naming what cannot be mapped."""
    mode = pipeline_mode(block)
    if block.clientIdMustMatchThingName:
        raise BadRequest(
            f"template {template_id}: clientIdMustMatchThingName makes one policy per thing, which bulk "
            "cannot; use a policy on ${iot:Connection.Thing.ThingName} instead"
        )
    doc = copy.deepcopy(dict(document))
    where = f"template {template_id}"
    _, thing = _resource(doc, "AWS::IoT::Thing", template_id)
    properties = thing.get("Properties") or {}
    thing_ref = properties.get("ThingName")
    if not (isinstance(thing_ref, dict) and isinstance(thing_ref.get("Ref"), str)):
        raise BadRequest(f'{where}: bulk needs the thing\'s ThingName to be {{"Ref": <parameter>}}')
    thing_parameter = thing_ref["Ref"]
    declared = dict(doc.get("Parameters") or {})
    if thing_parameter not in declared:
        raise BadRequest(f"{where}: ThingName refers to {thing_parameter}, which Parameters does not declare")
    certificate_id, certificate = _resource(doc, "AWS::IoT::Certificate", template_id)
    status = (certificate.get("Properties") or {}).get("Status", "ACTIVE")
    certificate["Properties"] = {**CERTIFICATE_PROPERTIES[mode], "Status": status}
    filled = tuple(name for name in FILLED.get(block.mode or "", ()) if name in declared)
    names = {thing_parameter: "ThingName"}
    columns = {thing_parameter: THING_NAME_COLUMN}
    attributes: dict[str, str] = {}
    for name in declared:
        if name in names or name in filled:
            continue
        canonical = name[:1].upper() + name[1:]
        column = "serial_number" if name.lower() in SERIAL_KEYS else canonical.lower()
        if not name[:1].isalpha() or not ATTRIBUTE_NAME_PATTERN.match(canonical):
            raise BadRequest(
                f"{where}: parameter {name!r} cannot be a line key of the pipeline (letters, digits and "
                "_.,@/:#-, starting with a letter)"
            )
        if canonical in RESERVED_PARAMETERS or column in RESERVED_COLUMNS or column in attributes:
            raise BadRequest(
                f"{where}: parameter {name!r} clashes with a key the pipeline uses ({canonical}/{column})"
            )
        names[name], columns[name], attributes[column] = canonical, column, canonical
    line_key = LINE_KEY.get(mode, "CertificatePem")
    doc["Parameters"] = {
        "ThingName": {"Type": "String"},
        line_key: {"Type": "String"},
        **{names[n]: spec for n, spec in declared.items() if n in names and names[n] != "ThingName"},
    }
    doc["Resources"] = _rename(doc["Resources"], names)
    others = {name: r for name, r in doc["Resources"].items() if name != certificate_id}
    left = sorted(_refs(others) & set(filled))
    if left:
        raise BadRequest(
            f"{where}: refers to {left[0]} outside its certificate resource; bulk cannot fill it"
        )
    inline, policy = _policies(doc, where)
    extra = [name for name in extra_policies if name != policy]
    policy = policy or (extra.pop(0) if extra else None)
    if policy is None:
        raise BadRequest(f"{where}: bulk needs a policy (a policy resource or attachAdditionalPolicies)")
    for index, name in enumerate(extra, start=1):
        doc["Resources"][f"cdfAdditionalPolicy{index}"] = {
            "Type": "AWS::IoT::Policy",
            "Properties": {"PolicyName": name},
        }
    entry: dict[str, Any] = {
        "description": f"CDF template {template_id} ({block.mode})",
        "thing_name": "{" + THING_NAME_COLUMN + "}",
        "policy": policy,
        "certificate_mode": mode,
        "key_algorithm": block.keyAlgorithm,
        "attributes": attributes,
        "validity_days": validity_days,
    }
    if extra:
        entry["extra_policies"] = extra
    thing_type = properties.get("ThingTypeName")
    if isinstance(thing_type, str):
        entry["thing_type"] = thing_type
    groups = properties.get("ThingGroups")
    if isinstance(groups, list) and all(isinstance(g, str) for g in groups):
        entry["thing_groups"] = groups
    return Derived(
        model_id(template_id), mode, entry, jinja_text(doc), columns, thing_parameter, filled, inline
    )


def _policies(doc: dict[str, Any], where: str) -> tuple[dict[str, str], str | None]:
    """Inline policy documents turned into named policies (created before the run); the first name."""
    inline: dict[str, str] = {}
    first = None
    for logical, resource in doc["Resources"].items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::IoT::Policy":
            continue
        props = resource.get("Properties") or {}
        if isinstance(props.get("PolicyDocument"), str):
            text = props["PolicyDocument"]
            name = "cdf_" + hashlib.sha1(text.encode()).hexdigest().upper()  # noqa: S324 (a name, not security)
            inline[name] = text
            resource["Properties"] = {"PolicyName": name}
        elif not isinstance(props.get("PolicyName"), str):
            raise BadRequest(
                f"{where}: policy resource {logical} needs a literal PolicyName or PolicyDocument in bulk"
            )
        first = first or resource["Properties"]["PolicyName"]
    return inline, first


def jinja_text(document: Mapping[str, Any]) -> str:
    """The template as the catalog's jinja2 file: verbatim JSON, the signing CA's PEM filled in at render.

    `{%` can only occur inside JSON strings, where `{\\u0025` means the same: so nothing in the user's
    template can end the raw block.
    """
    text = json.dumps(document, indent=1, ensure_ascii=False).replace("{%", "{\\u0025")
    ca = "{% endraw %}{{ ca_certificate_pem | tojson }}{% raw %}"
    return "{% raw %}" + text.replace('"__CDF_CA_PEM__"', ca) + "{% endraw %}\n"


def entry_row(derived: Derived, entry: Any, where: str) -> dict[str, str]:
    """One parameters object as a manifest row of the derived product."""
    if not isinstance(entry, Mapping):
        raise BadRequest(f"{where}: must be an object of parameter names to string values")
    row = {"model": derived.model}
    for key, value in entry.items():
        if not isinstance(value, str):
            raise BadRequest(f"{where}.{key}: must be a string")
        if key in derived.filled:
            raise BadRequest(
                f"{where}.{key}: is filled by the pipeline's {derived.mode} certificates; leave it out"
            )
        column = derived.columns.get(key)
        if column is None:
            raise BadRequest(f"{where}.{key}: the template declares no such parameter")
        row[column] = value
    if not row.get(THING_NAME_COLUMN):
        raise BadRequest(f"{where}.{derived.thing_parameter}: is required (it names the thing)")
    row.setdefault("serial_number", row[THING_NAME_COLUMN])
    return row
