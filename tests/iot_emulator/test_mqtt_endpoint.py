"""The MQTT endpoint's lifecycle: its root CA and certificate, state across restarts, the command line."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from awsiot import iotidentity
from cryptography import x509

from iot_emulator.server import EmulatorServer
from tests.iot_emulator.conftest import FLEET_TEMPLATE, ROLE_ARN
from tests.iot_emulator.fleet_devices import Credentials, DeviceConnection, Endpoint

ROOT = Path(__file__).resolve().parents[2]


def _iot(server: EmulatorServer) -> Any:
    return boto3.session.Session().client(
        "iot",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _names(certificate: x509.Certificate) -> set[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def _mqtt_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("iot-emulator-mqtt")]


def test_the_root_ca_lives_in_the_state_dir_and_signs_a_certificate_for_every_name(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    server = EmulatorServer(
        "127.0.0.1", 0, state_dir=state_dir, mqtt_port=0, mqtt_endpoint_host="iot.factory.test"
    ).start()
    try:
        root_ca = state_dir / "mqtt" / "root-ca.pem"
        assert server.mqtt_root_ca == root_ca
        assert (state_dir / "mqtt" / "root-ca.key").stat().st_mode & 0o077 == 0  # the owner's only
        root = x509.load_pem_x509_certificate(root_ca.read_bytes())
        leaf = x509.load_pem_x509_certificate((state_dir / "mqtt" / "server.pem").read_bytes())
        leaf.verify_directly_issued_by(root)
        assert _names(leaf) == {"iot.factory.test", "localhost", "127.0.0.1", "::1"}
        assert (
            _iot(server).describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
            == "iot.factory.test"
        )
        server.reset()  # forgets resources, not the CA devices trust
        assert root_ca.exists()
        health = json.loads(urllib.request.urlopen(server.endpoint_url + "/_emulator/health").read())
        assert health["mqtt"] == {
            "port": server.mqtt_port,
            "endpointHost": "iot.factory.test",
            "region": "us-east-1",
            "rootCa": str(root_ca),
        }
    finally:
        server.stop()
    again = EmulatorServer("127.0.0.1", 0, state_dir=state_dir, mqtt_port=0)
    try:
        assert again.mqtt_root_ca is not None and again.mqtt_root_ca.read_bytes() == root_ca.read_bytes()
    finally:
        again.stop()


def test_stopping_leaves_nothing_running(tmp_path: Path) -> None:
    before = len(_mqtt_threads())
    server = EmulatorServer("127.0.0.1", 0, mqtt_port=0).start()
    port, ca_dir = server.mqtt_port, server.mqtt_root_ca.parent if server.mqtt_root_ca else None
    assert port and ca_dir is not None and ca_dir.exists()
    socket.create_connection(("127.0.0.1", port), 5).close()
    server.stop()
    assert not ca_dir.exists()  # the temporary root CA is removed
    assert len(_mqtt_threads()) == before
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        raise AssertionError("the MQTT port still accepts connections")
    except OSError:
        pass


def test_ownership_tokens_and_pending_certificates_survive_a_restart(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"

    def start() -> EmulatorServer:
        return EmulatorServer("127.0.0.1", 0, state_dir=state_dir, mqtt_port=0).start()

    async def in_session(server: EmulatorServer, claim: Credentials, step: Any) -> Any:
        assert server.mqtt_port is not None and server.mqtt_root_ca is not None
        endpoint = Endpoint("localhost", server.mqtt_port, server.mqtt_root_ca.read_bytes())
        device = await DeviceConnection.open(endpoint, claim, "restarted", mqtt5_protocol=True)
        try:
            identity = device.identity_client()  # kept referenced: collected, it would shut down
            return await asyncio.wrap_future(step(identity))
        finally:
            await device.close()

    server = start()
    try:
        iot = _iot(server)
        iot.create_policy(policyName="SensorPolicy", policyDocument='{"Version":"2012-10-17","Statement":[]}')
        iot.create_thing_type(thingTypeName="sensor")
        for group in ("fleet", "line-a"):
            iot.create_thing_group(thingGroupName=group)
        iot.create_provisioning_template(
            templateName="SensorFleet",
            templateBody=json.dumps(FLEET_TEMPLATE),
            provisioningRoleArn=ROLE_ARN,
            enabled=True,
        )
        made = iot.create_provisioning_claim(templateName="SensorFleet")
        claim = Credentials(made["certificatePem"], made["keyPair"]["PrivateKey"])
        created = asyncio.run(
            in_session(
                server,
                claim,
                lambda c: c.create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest()),
            )
        )
    finally:
        server.stop()  # the final save
    server = start()
    try:
        request = iotidentity.RegisterThingRequest(
            template_name="SensorFleet",
            certificate_ownership_token=created.certificate_ownership_token,
            parameters={"SerialNumber": "after-restart"},
        )
        registered = asyncio.run(in_session(server, claim, lambda c: c.register_thing(request)))
        assert registered.thing_name == "sensor-after-restart"
        status = _iot(server).describe_certificate(certificateId=created.certificate_id)[
            "certificateDescription"
        ]
        assert status["status"] == "ACTIVE"
    finally:
        server.stop()


def test_the_command_line_opens_the_mqtt_port_and_names_the_root_ca(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iot_emulator",
            "--port",
            str(http_port),
            "--mqtt-port",
            "0",
            "--state-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and "MQTT device endpoint" not in line:
            line = process.stderr.readline()
        found = re.search(r"on localhost:(\d+); root CA (\S+)", line)
        assert found, line
        assert Path(found[2]) == tmp_path / "mqtt" / "root-ca.pem" and Path(found[2]).exists()
        socket.create_connection(("127.0.0.1", int(found[1])), 5).close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def test_an_unspecified_bind_address_is_not_a_certificate_name(tmp_path: Path) -> None:
    server = EmulatorServer("0.0.0.0", 0, state_dir=tmp_path, mqtt_port=0, mqtt_endpoint_host="emulator")  # noqa: S104
    try:
        leaf = x509.load_pem_x509_certificate((tmp_path / "mqtt" / "server.pem").read_bytes())
        names = _names(leaf)
        assert "emulator" in names and "0.0.0.0" not in names
        assert all(not ipaddress.ip_address(n).is_unspecified for n in names if n[0].isdigit() or ":" in n)
    finally:
        server.stop()
