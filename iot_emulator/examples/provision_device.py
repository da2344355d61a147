r"""One device provisions itself by claim with the AWS IoT Device SDK (awsiotsdk), against the emulator.

    .venv/bin/python iot_emulator/examples/provision_device.py --template-name SensorFleet \
        --parameters '{"SerialNumber": "42"}'

What a factory device does: connect over mutual TLS with the claim certificate, get a certificate
(CreateKeysAndCertificate, or CreateCertificateFromCsr with ``--csr`` for a key made on the device),
RegisterThing with the template, then reconnect with its own certificate. Without ``--claim-cert`` the
script first asks the control plane for a claim (CreateProvisioningClaim, what a trusted user's app does).
The endpoint host comes from DescribeEndpoint; the MQTT port and root CA default to what the emulator's
health route reports (on AWS: port 8883 and Amazon's root CA). Prints one JSON line: the thing, the
certificate id, the device configuration and where the certificate and key were written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import boto3
from awscrt import mqtt, mqtt5, mqtt_request_response
from awsiot import iotidentity, mqtt5_client_builder, mqtt_connection_builder
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

TIMEOUT = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--template-name", required=True, help="the fleet provisioning template")
    parser.add_argument("--parameters", default="{}", help="RegisterThing parameters as a JSON object")
    parser.add_argument(
        "--emulator-url",
        default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        help="the control plane (default $AWS_ENDPOINT_URL, else make emulator's)",
    )
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--endpoint", help="MQTT host (default: DescribeEndpoint iot:Data-ATS)")
    parser.add_argument("--port", type=int, help="MQTT port (default: the emulator's, from its health route)")
    parser.add_argument(
        "--root-ca", help="CA file the server certificate chains to (default: the emulator's)"
    )
    parser.add_argument("--claim-cert", help="claim certificate PEM (default: CreateProvisioningClaim)")
    parser.add_argument("--claim-key", help="claim private key PEM")
    parser.add_argument(
        "--client-id", default="provisioning-device", help="MQTT client id while provisioning"
    )
    parser.add_argument(
        "--csr", action="store_true", help="make the key on the device: CreateCertificateFromCsr"
    )
    parser.add_argument("--mqtt", choices=("3", "5"), default="5", help="MQTT 3.1.1 or 5 (default 5)")
    parser.add_argument("--out-dir", default=".", help="where the device's certificate and key are written")
    return parser.parse_args(argv)


class Connection:
    """An SDK connection, MQTT 3.1.1 (``mqtt.Connection``) or 5 (``mqtt5.Client``), opened and closed."""

    def __init__(self, args: argparse.Namespace, cert: bytes, key: bytes, client_id: str) -> None:
        options = {
            "endpoint": args.endpoint,
            "port": args.port,  # always give it: without it the SDK picks 443 with ALPN
            "cert_bytes": cert,
            "pri_key_bytes": key,
            "ca_filepath": args.root_ca,
            "client_id": client_id,
        }
        self.mqtt5 = args.mqtt == "5"
        if self.mqtt5:
            self._connected: Future[None] = Future()
            self._stopped: Future[None] = Future()
            self.client: Any = mqtt5_client_builder.mtls_from_bytes(
                **options,
                on_lifecycle_connection_success=lambda _: self._connected.set_result(None),
                on_lifecycle_connection_failure=lambda data: (
                    self._connected.done()
                    or self._connected.set_exception(RuntimeError(f"connection refused: {data.exception}"))
                ),
                on_lifecycle_stopped=lambda _: self._stopped.set_result(None),
            )
        else:
            self.client = mqtt_connection_builder.mtls_from_bytes(**options, clean_session=True)

    def __enter__(self) -> Any:
        if self.mqtt5:
            self.client.start()
            try:
                self._connected.result(TIMEOUT)
            except BaseException:
                self.client.stop()  # the client would retry forever
                raise
        else:
            self.client.connect().result(TIMEOUT)
        return self.client

    def __exit__(self, *exc: Any) -> None:
        if self.mqtt5:
            self.client.stop()
            self._stopped.result(TIMEOUT)
        else:
            self.client.disconnect().result(TIMEOUT)


def fill_in_defaults(args: argparse.Namespace) -> None:
    """Ask the control plane (and the emulator's health route) for what was not given."""
    iot = boto3.client(
        "iot",
        endpoint_url=args.emulator_url,
        region_name=args.region,
        # the emulator takes any key; on AWS, leave these to the usual credential chain
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    if args.endpoint is None:
        args.endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    if args.port is None or args.root_ca is None:
        with urllib.request.urlopen(f"{args.emulator_url}/_emulator/health", timeout=10) as response:  # noqa: S310
            mqtt_info = json.load(response).get("mqtt") or {}
        if not mqtt_info:
            sys.exit("the emulator serves no MQTT endpoint: start it with --mqtt-port (make emulator does)")
        args.port = args.port or mqtt_info["port"]
        args.root_ca = args.root_ca or mqtt_info["rootCa"]
    if args.claim_cert is None:
        claim = iot.create_provisioning_claim(templateName=args.template_name)
        args.claim_cert_pem = claim["certificatePem"].encode()
        args.claim_key_pem = claim["keyPair"]["PrivateKey"].encode()
    else:
        args.claim_cert_pem = Path(args.claim_cert).read_bytes()
        args.claim_key_pem = Path(args.claim_key).read_bytes()


def new_key_and_csr() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private.decode(), csr.public_bytes(serialization.Encoding.PEM).decode()


def provision(args: argparse.Namespace) -> dict[str, Any]:
    with Connection(args, args.claim_cert_pem, args.claim_key_pem, args.client_id) as client:
        identity = iotidentity.IotIdentityClientV2(client, mqtt_request_response.ClientOptions(2, 0, TIMEOUT))
        if args.csr:
            private_key, csr = new_key_and_csr()
            request = iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)
            created = identity.create_certificate_from_csr(request).result(TIMEOUT)
        else:
            created = identity.create_keys_and_certificate(
                iotidentity.CreateKeysAndCertificateRequest()
            ).result(TIMEOUT)
            private_key = created.private_key
        registered = identity.register_thing(
            iotidentity.RegisterThingRequest(
                template_name=args.template_name,
                certificate_ownership_token=created.certificate_ownership_token,
                parameters=json.loads(args.parameters),
            )
        ).result(TIMEOUT)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = (
        out / f"{registered.thing_name}.cert.pem",
        out / f"{registered.thing_name}.private.key",
    )
    cert_path.write_text(created.certificate_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the device's secret
    with os.fdopen(fd, "w") as f:
        f.write(private_key)
    # The device's own identity from now on: connect with it and say hello.
    with Connection(
        args, created.certificate_pem.encode(), private_key.encode(), registered.thing_name
    ) as client:
        topic, payload = f"devices/{registered.thing_name}/hello", b'{"provisioned": true}'
        if args.mqtt == "5":
            client.publish(
                mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
            ).result(TIMEOUT)
        else:
            client.publish(topic, payload, mqtt.QoS.AT_LEAST_ONCE)[0].result(TIMEOUT)
    return {
        "thingName": registered.thing_name,
        "certificateId": created.certificate_id,
        "deviceConfiguration": registered.device_configuration,
        "certificate": str(cert_path),
        "privateKey": str(key_path),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fill_in_defaults(args)
    print(json.dumps(provision(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
