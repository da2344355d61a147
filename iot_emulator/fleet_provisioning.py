"""Fleet provisioning's device operations: who may connect, certificates with ownership tokens, RegisterThing.

The MQTT front door (``fleet_mqtt``) calls these under the region's lock, as the HTTP one calls the
control-plane operations; errors are ``IotError``s whose code and status are those of the MQTT
``rejected`` payloads (``errorCode``, ``statusCode``). RegisterThing is split in two around the
pre-provisioning hook, which must not run under the lock (it may take seconds, or call the emulator).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from iot_emulator import x509_util
from iot_emulator.errors import IotError, invalid_request
from iot_emulator.service_base import ServiceBase
from iot_emulator.template_language import compile_template
from iot_emulator.template_provisioning import provision

OWNERSHIP_TOKEN_LIFETIME = 3600  # "expires after one hour" (aws-iot-facts.md 3.4)
ENDPOINT_TYPES = ("iot:Data-ATS", "iot:Data", "iot:CredentialProvider", "iot:Jobs")
SERVED_ENDPOINT_TYPES = ("iot:Data-ATS", "iot:Data")  # the MQTT device endpoint; the others are not served
# AWS's words (aws-iot-facts.md 3.5)
EMPTY_TOKEN_MESSAGE = "Certificate ownership token cannot be empty."  # noqa: S105 - not a secret


def rejected(status: int, code: str, message: str) -> IotError:
    """An error as the fleet provisioning topics report it: ``{statusCode, errorCode, errorMessage}``."""
    return IotError(code, message, status=status)


def invalid_token(message: str = "The certificate ownership token is not valid or has expired.") -> IotError:
    return rejected(400, "InvalidCertificateOwnershipToken", message)


def invalid_parameters(message: str) -> IotError:
    return rejected(400, "InvalidParameters", message)


def access_denied(message: str) -> IotError:
    return rejected(403, "AccessDenied", message)


@dataclass(frozen=True)
class DevicePrincipal:
    """Who a connection is: the certificate it presented, a claim (bound to one template) or not."""

    certificate_id: str
    claim_template: str | None = None  # set for claim certificates from CreateProvisioningClaim

    @property
    def is_claim(self) -> bool:
        return self.claim_template is not None


@dataclass
class FleetRegistration:
    """A RegisterThing request checked under the lock, waiting for its hook (if any) to decide."""

    template_name: str
    template_arn: str
    template_body: str
    hook: dict[str, Any] | None
    certificate_id: str
    certificate_pem: str
    token_key: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def hook_event(self, claim_certificate_id: str, client_id: str) -> dict[str, Any]:
        """The pre-provisioning hook's input, as AWS IoT sends it to the Lambda function."""
        return {
            "claimCertificateId": claim_certificate_id,
            "certificateId": self.certificate_id,
            "certificatePem": self.certificate_pem,
            "templateArn": self.template_arn,
            "clientId": client_id,
            "parameters": dict(self.parameters),
        }


class FleetProvisioningMixin(ServiceBase):
    """The device side of fleet provisioning, over the same registry as the control plane."""

    # ------------------------------------------------------------ connecting

    def authenticate_device(self, certificate_der: bytes) -> DevicePrincipal:
        """The principal of a TLS client certificate, or ``UnauthorizedException`` saying why not."""
        certificate_id = hashlib.sha256(certificate_der).hexdigest()
        if certificate_id in self.state.provisioning_claims:
            claim = self.state.provisioning_claims[certificate_id]
            if claim["expiration"] <= self.now():
                raise IotError(
                    "UnauthorizedException", f"The claim certificate {certificate_id} has expired."
                )
            return DevicePrincipal(certificate_id, claim_template=claim["templateName"])
        record = self.state.certificates.get(certificate_id)
        if record is None:
            raise IotError("UnauthorizedException", f"The certificate {certificate_id} is not registered.")
        if record["status"] != "ACTIVE":
            raise IotError(
                "UnauthorizedException",
                f"The certificate {certificate_id} is {record['status']}, not ACTIVE.",
            )
        return DevicePrincipal(certificate_id)

    def device_trust_anchors(self) -> list[str]:
        """PEMs of every issuer a device certificate of this region may have, for the TLS trust store."""
        anchors = [x509_util.to_pem(self._amazon_ca()[1]), x509_util.to_pem(self._claim_ca()[1])]
        anchors += [r["certificatePem"] for r in self.state.ca_certificates.values()]
        anchors += [
            r["certificatePem"]
            for r in self.state.certificates.values()
            if r["caCertificateId"] is None and r["certificateMode"] == "SNI_ONLY"
        ]
        return anchors

    def describe_endpoint(self, endpointType: str | None = None) -> dict[str, Any]:
        """The device endpoint's host name: the one the MQTT server certificate is issued for."""
        endpoint_type = endpointType or "iot:Data"
        if endpoint_type not in ENDPOINT_TYPES:
            raise invalid_request(f"endpointType must be one of {', '.join(ENDPOINT_TYPES)}")
        if endpoint_type not in SERVED_ENDPOINT_TYPES:
            raise invalid_request(f"The emulator does not serve the {endpoint_type} endpoint.")
        return {"endpointAddress": self.device_endpoint_host}

    # ------------------------------------------------------------ certificates with ownership tokens

    def fleet_create_keys_and_certificate(
        self, key_pair: tuple[Any, str, str] | None = None
    ) -> dict[str, Any]:
        """CreateKeysAndCertificate over MQTT: a PENDING_ACTIVATION certificate, its key and a token.

        ``key_pair`` (key, public PEM, private PEM) may be made by the caller outside the region's lock:
        an RSA-2048 key costs about 50 ms.
        """
        key, _, private_pem = key_pair or x509_util.new_rsa_key_pair()
        issued = self._issue_certificate(key.public_key(), "PENDING_ACTIVATION")
        return {
            "certificateId": issued["certificateId"],
            "certificatePem": issued["certificatePem"],
            "privateKey": private_pem,
            "certificateOwnershipToken": self._ownership_token(issued["certificateId"]),
        }

    def fleet_create_certificate_from_csr(self, certificateSigningRequest: Any) -> dict[str, Any]:
        """CreateCertificateFromCsr over MQTT: a PENDING_ACTIVATION certificate for the CSR, and a token."""
        if not isinstance(certificateSigningRequest, str) or not certificateSigningRequest:
            raise invalid_parameters("certificateSigningRequest must be a PEM encoded CSR.")
        try:
            csr = x509_util.load_csr(certificateSigningRequest)
        except x509_util.X509Error as exc:
            raise invalid_parameters(str(exc)) from None
        issued = self._issue_certificate(csr.public_key(), "PENDING_ACTIVATION")
        return {
            "certificateOwnershipToken": self._ownership_token(issued["certificateId"]),
            "certificateId": issued["certificateId"],
            "certificatePem": issued["certificatePem"],
        }

    def _ownership_token(self, certificate_id: str) -> str:
        """A new token bound to ``certificate_id``; only its hash is kept (the token is a bearer secret)."""
        self._forget_expired_tokens()
        token = secrets.token_urlsafe(96)
        self.state.certificate_ownership_tokens[_token_key(token)] = {
            "certificateId": certificate_id,
            "expiration": self.now() + OWNERSHIP_TOKEN_LIFETIME,
        }
        return token

    def _forget_expired_tokens(self) -> None:
        """Drop expired tokens; their certificate goes too if still unused, as AWS IoT deletes it."""
        tokens = self.state.certificate_ownership_tokens
        now = self.now()
        # Tokens are kept in creation order, which is expiry order: stop at the first live one.
        for key in list(tokens):
            entry = tokens[key]
            if entry["expiration"] > now:
                break
            del tokens[key]
            record = self.state.certificates.get(entry["certificateId"])
            if record is not None and record["status"] == "PENDING_ACTIVATION":
                arn = record["certificateArn"]
                if not self._principal_thing_names(arn) and not self._principal_policy_names(arn):
                    del self.state.certificates[entry["certificateId"]]

    # ------------------------------------------------------------ RegisterThing

    def fleet_register_thing_request(
        self, templateName: str, request: Any, principal: DevicePrincipal
    ) -> FleetRegistration:
        """Check a RegisterThing payload: the template, the caller's claim, the token and the parameters."""
        record = self.state.provisioning_templates.get(templateName)
        if record is None or record["type"] != "FLEET_PROVISIONING":
            raise rejected(404, "ResourceNotFound", f"Template {templateName} not found")
        if principal.is_claim and principal.claim_template != templateName:
            raise access_denied(
                f"The claim certificate was issued for template {principal.claim_template}, "
                f"not {templateName}."
            )
        if not record["enabled"]:
            raise access_denied(f"The provisioning template {templateName} is disabled.")
        if not isinstance(request, dict):
            raise invalid_parameters("The request payload must be an object.")
        parameters = request.get("parameters") or {}
        if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
            raise invalid_parameters("parameters must be an object of parameter names to values.")
        token = request.get("certificateOwnershipToken")
        if not token:
            raise invalid_token(EMPTY_TOKEN_MESSAGE)
        if not isinstance(token, str):
            raise invalid_token()
        key = _token_key(token)
        certificate = self._token_certificate(key)
        return FleetRegistration(
            template_name=templateName,
            template_arn=record["templateArn"],
            template_body=record["versions"][str(record["defaultVersionId"])]["templateBody"],
            hook=record["preProvisioningHook"],
            certificate_id=certificate["certificateId"],
            certificate_pem=certificate["certificatePem"],
            token_key=key,
            parameters=dict(parameters),
        )

    def _token_certificate(self, key: str) -> dict[str, Any]:
        self._forget_expired_tokens()
        entry = self.state.certificate_ownership_tokens.get(key)
        if entry is None or entry["expiration"] <= self.now():
            raise invalid_token()
        record = self.state.certificates.get(entry["certificateId"])
        if record is None:
            raise invalid_token("The certificate of the ownership token no longer exists.")
        return record

    def fleet_register_thing(self, registration: FleetRegistration) -> dict[str, Any]:
        """Run the template for the token's certificate (after the hook allowed it); the token is spent."""
        certificate = self._token_certificate(registration.token_key)  # still valid after the hook?
        if certificate["certificateId"] != registration.certificate_id:
            raise invalid_token()
        try:
            template = compile_template(registration.template_body)
            result = provision(
                self,  # type: ignore[arg-type]
                template,
                registration.parameters,
                certificate_pem=registration.certificate_pem,
                owned_certificate_id=registration.certificate_id,
            )
        except IotError as exc:
            if exc.code == "InvalidRequestException":  # the template could not be evaluated
                raise invalid_parameters(exc.message) from None
            raise rejected(exc.status, exc.code.removesuffix("Exception"), exc.message) from None
        del self.state.certificate_ownership_tokens[registration.token_key]  # one RegisterThing per token
        out: dict[str, Any] = {"deviceConfiguration": result.device_configuration}
        if result.thing_name is not None:
            out["thingName"] = result.thing_name
        return out


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
