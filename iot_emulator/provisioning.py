"""Provisioning templates and versions, provisioning claims and RegisterThing."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from iot_emulator.errors import IotError, already_exists, invalid_request, limit_exceeded, not_found
from iot_emulator.paging import paginate
from iot_emulator.service_base import ServiceBase
from iot_emulator.template_language import compile_template
from iot_emulator.template_provisioning import provision
from iot_emulator.x509_util import stand_in_claim_ca

MAX_TEMPLATES = 256  # "Maximum number of fleet provisioning templates per customer" (aws-iot-facts.md 3.1)
MAX_VERSIONS = 5  # versions per template, the commonly cited value of quota L-71FA7EC4
CLAIM_LIFETIME = 300  # claim certificates expire after 5 minutes (aws-iot-facts.md 3.2)
TEMPLATE_TYPES = ("FLEET_PROVISIONING", "JITP")


class ProvisioningMixin(ServiceBase):
    """Fleet provisioning templates and their versions, claim certificates, RegisterThing.

    Versions are kept by their id as a string (JSON object keys are strings), in creation order.
    """

    # ------------------------------------------------------------------ templates

    def _template_record(self, template_name: str) -> dict[str, Any]:
        record = self.state.provisioning_templates.get(template_name)
        if record is None:
            raise not_found(f"The provisioning template {template_name} does not exist.")
        return record

    def _check_hook(self, template_type: str, hook: dict[str, Any] | None) -> None:
        if hook is not None and template_type != "FLEET_PROVISIONING":
            raise invalid_request(
                "Pre-provisioning hooks are supported only by templates of type FLEET_PROVISIONING."
            )

    def create_provisioning_template(
        self,
        templateName: str,
        templateBody: str,
        provisioningRoleArn: str,
        description: str | None = None,
        enabled: bool | None = None,
        preProvisioningHook: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
        type: str | None = None,  # botocore's member name shadows the builtin here
    ) -> dict[str, Any]:
        template_type = type or "FLEET_PROVISIONING"
        if template_type not in TEMPLATE_TYPES:
            raise invalid_request(f"type must be one of {', '.join(TEMPLATE_TYPES)}")
        if templateName in self.state.provisioning_templates:
            raise already_exists(
                f"The provisioning template {templateName} already exists.",
                resource_id=templateName,
                resource_arn=self.arn(f"provisioningtemplate/{templateName}"),
            )
        if len(self.state.provisioning_templates) >= MAX_TEMPLATES:
            raise limit_exceeded(
                f"The limit of {MAX_TEMPLATES} provisioning templates per account has been reached."
            )
        self._check_hook(template_type, preProvisioningHook)
        compile_template(templateBody)
        now = self.now()
        self.state.provisioning_templates[templateName] = {
            "templateName": templateName,
            "templateArn": self.arn(f"provisioningtemplate/{templateName}"),
            "description": description,
            "creationDate": now,
            "lastModifiedDate": now,
            "defaultVersionId": 1,
            "enabled": bool(enabled),
            "provisioningRoleArn": provisioningRoleArn,
            "preProvisioningHook": preProvisioningHook,
            "type": template_type,
            "tags": list(tags or []),
            "versions": {"1": {"versionId": 1, "creationDate": now, "templateBody": templateBody}},
            "nextVersionId": 2,
        }
        record = self.state.provisioning_templates[templateName]
        return {"templateArn": record["templateArn"], "templateName": templateName, "defaultVersionId": 1}

    def describe_provisioning_template(self, templateName: str) -> dict[str, Any]:
        record = self._template_record(templateName)
        keys = (
            "templateArn",
            "templateName",
            "description",
            "creationDate",
            "lastModifiedDate",
            "defaultVersionId",
            "enabled",
            "provisioningRoleArn",
            "preProvisioningHook",
            "type",
        )
        out = {k: record[k] for k in keys if record[k] is not None}
        out["templateBody"] = record["versions"][str(record["defaultVersionId"])]["templateBody"]
        return out

    def list_provisioning_templates(
        self, maxResults: int | None = None, nextToken: str | None = None
    ) -> dict[str, Any]:
        keys = (
            "templateArn",
            "templateName",
            "description",
            "creationDate",
            "lastModifiedDate",
            "enabled",
            "type",
        )
        records = sorted(self.state.provisioning_templates.values(), key=lambda r: r["templateName"])
        page, token = paginate(records, nextToken, maxResults, 250)
        out: dict[str, Any] = {"templates": [{k: r[k] for k in keys if r[k] is not None} for r in page]}
        if token:
            out["nextToken"] = token
        return out

    def update_provisioning_template(
        self,
        templateName: str,
        description: str | None = None,
        enabled: bool | None = None,
        defaultVersionId: int | None = None,
        provisioningRoleArn: str | None = None,
        preProvisioningHook: dict[str, Any] | None = None,
        removePreProvisioningHook: bool | None = None,
    ) -> dict[str, Any]:
        record = self._template_record(templateName)
        if preProvisioningHook is not None and removePreProvisioningHook:
            raise invalid_request(
                "preProvisioningHook and removePreProvisioningHook cannot be used together."
            )
        self._check_hook(record["type"], preProvisioningHook)
        if defaultVersionId is not None and str(defaultVersionId) not in record["versions"]:
            raise not_found(
                f"Version {defaultVersionId} of provisioning template {templateName} does not exist."
            )
        updates = {
            "description": description,
            "enabled": enabled,
            "defaultVersionId": defaultVersionId,
            "provisioningRoleArn": provisioningRoleArn,
            "preProvisioningHook": preProvisioningHook,
        }
        record.update({k: v for k, v in updates.items() if v is not None})
        if removePreProvisioningHook:
            record["preProvisioningHook"] = None
        record["lastModifiedDate"] = self.now()
        return {}

    def delete_provisioning_template(self, templateName: str) -> dict[str, Any]:
        self._template_record(templateName)
        del self.state.provisioning_templates[templateName]
        return {}

    # ------------------------------------------------------------------ versions

    def create_provisioning_template_version(
        self, templateName: str, templateBody: str, setAsDefault: bool | None = None
    ) -> dict[str, Any]:
        record = self._template_record(templateName)
        if len(record["versions"]) >= MAX_VERSIONS:
            raise IotError(
                "VersionsLimitExceededException",
                f"The provisioning template {templateName} already has {MAX_VERSIONS} versions, the maximum; "
                "delete a version that is not the default first.",
            )
        compile_template(templateBody)
        version_id = record["nextVersionId"]
        now = self.now()
        record["versions"][str(version_id)] = {
            "versionId": version_id,
            "creationDate": now,
            "templateBody": templateBody,
        }
        record["nextVersionId"] = version_id + 1
        record["lastModifiedDate"] = now
        if setAsDefault:
            record["defaultVersionId"] = version_id
        return {
            "templateArn": record["templateArn"],
            "templateName": templateName,
            "versionId": version_id,
            "isDefaultVersion": bool(setAsDefault),
        }

    def _version_record(self, template_name: str, version_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
        record = self._template_record(template_name)
        version = record["versions"].get(str(int(version_id)))
        if version is None:
            raise not_found(f"Version {version_id} of provisioning template {template_name} does not exist.")
        return record, version

    def describe_provisioning_template_version(self, templateName: str, versionId: int) -> dict[str, Any]:
        record, version = self._version_record(templateName, versionId)
        return {**version, "isDefaultVersion": version["versionId"] == record["defaultVersionId"]}

    def list_provisioning_template_versions(
        self, templateName: str, maxResults: int | None = None, nextToken: str | None = None
    ) -> dict[str, Any]:
        record = self._template_record(templateName)
        versions = [
            {
                "versionId": v["versionId"],
                "creationDate": v["creationDate"],
                "isDefaultVersion": v["versionId"] == record["defaultVersionId"],
            }
            for v in sorted(record["versions"].values(), key=lambda v: v["versionId"])
        ]
        page, token = paginate(versions, nextToken, maxResults, 250)
        out: dict[str, Any] = {"versions": page}
        if token:
            out["nextToken"] = token
        return out

    def delete_provisioning_template_version(self, templateName: str, versionId: int) -> dict[str, Any]:
        record, version = self._version_record(templateName, versionId)
        if version["versionId"] == record["defaultVersionId"]:
            raise IotError(
                "DeleteConflictException",
                f"Version {versionId} is the default version of provisioning template {templateName} "
                "and cannot be deleted.",
            )
        del record["versions"][str(version["versionId"])]
        record["lastModifiedDate"] = self.now()
        return {}

    # ------------------------------------------------------------------ claims

    def create_provisioning_claim(self, templateName: str) -> dict[str, Any]:
        record = self._template_record(templateName)
        if record["type"] != "FLEET_PROVISIONING":
            raise invalid_request(
                f"The provisioning template {templateName} is not a fleet provisioning template."
            )
        from iot_emulator.x509_util import new_rsa_key_pair

        now = self.now()
        expiration = float(int(now) + CLAIM_LIFETIME)
        key, public_pem, private_pem = new_rsa_key_pair()
        certificate_pem, certificate_id = self._issue_claim_certificate(key.public_key(), expiration)
        self.state.provisioning_claims = {
            cid: c for cid, c in self.state.provisioning_claims.items() if c["expiration"] > now
        }  # expired claims are forgotten
        self.state.provisioning_claims[certificate_id] = {
            "certificateId": certificate_id,
            "certificatePem": certificate_pem,
            "templateName": templateName,
            "expiration": expiration,
        }
        return {
            "certificateId": certificate_id,
            "certificatePem": certificate_pem,
            "keyPair": {"PublicKey": public_pem, "PrivateKey": private_pem},
            "expiration": expiration,
        }

    def _claim_record(self, certificate_id: str) -> dict[str, Any]:
        """A live claim certificate (for fleet provisioning); expired or unknown claims raise."""
        claim = self.state.provisioning_claims.get(certificate_id)
        if claim is None or claim["expiration"] <= self.now():
            raise not_found(f"Claim certificate {certificate_id} does not exist or has expired.")
        return claim

    def _claim_ca(self) -> tuple[Any, Any]:
        """The stand-in claim CA (key, certificate), derived from the account id: nothing is stored."""
        if self._stand_in_claim_ca is None:
            self._stand_in_claim_ca = stand_in_claim_ca(self.account_id)
        return self._stand_in_claim_ca

    def _issue_claim_certificate(self, public_key: Any, expiration: float) -> tuple[str, str]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import NameOID

        ca_key, ca_cert = self._claim_ca()
        not_after = dt.datetime.fromtimestamp(expiration, tz=dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secrets.token_hex(32))]))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_after - dt.timedelta(minutes=7))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), hashlib.sha256(der).hexdigest()

    # ------------------------------------------------------------------ RegisterThing

    def register_thing(self, templateBody: str, parameters: dict[str, str] | None = None) -> dict[str, Any]:
        result = provision(self, compile_template(templateBody), parameters or {})
        out: dict[str, Any] = {"resourceArns": result.resource_arns}
        if result.certificate_pem is not None:
            out["certificatePem"] = result.certificate_pem
        return out
