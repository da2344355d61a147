"""The MQTT front door of fleet provisioning: request topics to the service, each answer to its requester.

The broker hands every PUBLISH to a reserved topic here with the session that sent it. The request is
decoded (JSON or CBOR, as its topic says), the operation runs in a worker thread under the region's lock
(the same ``IotService`` the HTTP front door uses), and the ``accepted`` or ``rejected`` answer is
delivered to that session only, if it subscribed to it, as AWS IoT does ("through the same MQTT
connection used to publish the API request").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

import cbor2

from iot_emulator import x509_util
from iot_emulator.errors import IotError
from iot_emulator.fleet_provisioning import DevicePrincipal, access_denied, invalid_parameters
from iot_emulator.mqtt_broker import NOT_AUTHORIZED, UNSPECIFIED, Refused, Session
from iot_emulator.mqtt_codec import PAYLOAD_FORMAT, Publish
from iot_emulator.provisioning_hooks import ProvisioningHooks

if TYPE_CHECKING:
    from iot_emulator.service import IotService

log = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_TOPIC = re.compile(
    r"^\$aws/(?:certificates/(?P<create>create|create-from-csr)"
    r"|provisioning-templates/(?P<template>[0-9A-Za-z_-]{1,36})/provision)/(?P<format>json|cbor)$"
)
# What a claim certificate may subscribe to: the answers of the fleet provisioning API, nothing else.
CLAIM_FILTER_PREFIXES = ("$aws/certificates/", "$aws/provisioning-templates/")


def decode_request(payload: bytes, payload_format: str) -> dict[str, Any]:
    """A request payload as an object; an empty payload is an empty request (CreateKeysAndCertificate)."""
    if not payload.strip():
        return {}
    try:
        request = json.loads(payload) if payload_format == "json" else cbor2.loads(payload)
    except (ValueError, cbor2.CBORDecodeError):
        raise invalid_parameters(f"The request payload is not valid {payload_format.upper()}.") from None
    if not isinstance(request, dict):
        raise invalid_parameters("The request payload must be an object.")
    return request


def encode_response(response: dict[str, Any], payload_format: str) -> bytes:
    if payload_format == "json":
        return json.dumps(response, separators=(",", ":")).encode()
    return cbor2.dumps(response)


class FleetProvisioningResponder:
    """The broker's hooks: device authentication, what claims may do, and the fleet provisioning API."""

    def __init__(
        self, service: Callable[[], IotService], hooks: ProvisioningHooks, executor: Executor
    ) -> None:
        self._service = service  # the served region's service now (a reset replaces it)
        self._hooks = hooks
        self._executor = executor

    # ------------------------------------------------------------ broker hooks

    async def authenticate(self, peer_certificate: bytes | None, client_id: str) -> DevicePrincipal:
        if peer_certificate is None:
            raise Refused(NOT_AUTHORIZED, "no client certificate")
        try:
            return await self._run(lambda s: s.authenticate_device(peer_certificate), mutates=False)
        except IotError as exc:
            raise Refused(NOT_AUTHORIZED, exc.message) from None
        except Exception:
            log.exception("MQTT authentication of client %s failed", client_id)
            raise Refused(UNSPECIFIED, "internal error") from None

    def may_publish(self, principal: DevicePrincipal, topic: str) -> bool:
        # IoT policies are not evaluated (see README); a claim certificate may only call this API.
        return not principal.is_claim or REQUEST_TOPIC.match(topic) is not None

    def may_subscribe(self, principal: DevicePrincipal, topic_filter: str) -> bool:
        return not principal.is_claim or topic_filter.startswith(CLAIM_FILTER_PREFIXES)

    async def reserved_publish(self, session: Session, packet: Publish) -> None:
        found = REQUEST_TOPIC.match(packet.topic)
        if found is None:
            log.info("reserved topic %s is not served by the emulator; message dropped", packet.topic)
            return
        payload_format = found["format"]
        try:
            request = decode_request(packet.payload, payload_format)
            if found["create"] == "create":
                response = await self._create_keys_and_certificate()
            elif found["create"] == "create-from-csr":
                csr = request.get("certificateSigningRequest")
                response = await self._run(lambda s: s.fleet_create_certificate_from_csr(csr))
            else:
                response = await self._register_thing(session, found["template"], request)
            topic, body = f"{packet.topic}/accepted", response
        except IotError as exc:
            log.info("MQTT %s from client %s rejected: %s %s", packet.topic, session.client_id, exc.code, exc)
            topic = f"{packet.topic}/rejected"
            body = {"statusCode": exc.status, "errorCode": exc.code, "errorMessage": exc.message}
        except Exception:
            # The traceback names the topic only: payloads carry keys and tokens.
            log.exception("MQTT %s from client %s failed", packet.topic, session.client_id)
            topic = f"{packet.topic}/rejected"
            body = {
                "statusCode": 500,
                "errorCode": "InternalFailure",
                "errorMessage": "An internal error occurred.",
            }
        properties = {PAYLOAD_FORMAT: 1} if payload_format == "json" else {}  # MQTT 5: UTF-8 payload
        session.deliver(topic, encode_response(body, payload_format), 1, properties)

    # ------------------------------------------------------------ operations

    async def _create_keys_and_certificate(self) -> dict[str, Any]:
        # The RSA key (about 50 ms) is made outside the region's lock, so other requests go on meanwhile.
        key_pair = await asyncio.get_running_loop().run_in_executor(
            self._executor, x509_util.new_rsa_key_pair
        )
        return await self._run(lambda s: s.fleet_create_keys_and_certificate(key_pair))

    async def _register_thing(
        self, session: Session, template_name: str, request: dict[str, Any]
    ) -> dict[str, Any]:
        principal: DevicePrincipal = session.principal
        registration = await self._run(
            lambda s: s.fleet_register_thing_request(template_name, request, principal), mutates=False
        )
        if registration.hook is not None:
            event = registration.hook_event(principal.certificate_id, session.client_id)
            target_arn = registration.hook.get("targetArn", "")
            verdict = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._hooks.invoke, target_arn, event
            )
            if not verdict.allowed:
                raise access_denied(f"ACCESS_DENIED: the pre-provisioning hook refused: {verdict.reason}")
            registration.parameters.update(verdict.overrides)
        return await self._run(lambda s: s.fleet_register_thing(registration))

    async def _run(self, operation: Callable[[IotService], T], mutates: bool = True) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._locked, operation, mutates
        )

    def _locked(self, operation: Callable[[IotService], T], mutates: bool) -> T:
        service = self._service()
        try:
            with service.lock:
                return operation(service)
        finally:
            if mutates:
                service.on_change()  # the server saves the state dir soon (debounced)
