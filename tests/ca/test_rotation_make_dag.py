"""`make dag DAG=manage_factory_ca` on the local state, as a user runs it (scripts.run_local processes).

A batch, a rotation, another batch: the second batch is signed by the new CA, the first batch's devices
still authenticate on the emulator's MQTT endpoint with their certificates (both CAs ACTIVE), and `report`
lists both CAs with their expiry and the devices each signed.
"""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fixtures.make_dag import run_local

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]


def manifest(path: Path, first: int) -> Path:
    rows = [f"TH{first + n:09d},TH-100,SZX-1" for n in range(8)]
    path.write_text("serial_number,model,factory\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def issuers(state: Path) -> dict[str, str]:
    engine = sa.create_engine(f"sqlite:///{state / 'inventory.db'}")
    try:
        with engine.connect() as connection:
            found = connection.execute(sa.text("select serial_number, issuer from devices"))
            return dict(found.tuples().all())
    finally:
        engine.dispose()


def mqtt_connects(port: int, root_ca: Path, certificate: bytes, key: bytes, workdir: Path) -> int:
    """The CONNACK return code of an MQTT 3.1.1 CONNECT over mutual TLS with this certificate."""
    (workdir / "device.cert.pem").write_bytes(certificate)
    (workdir / "device.key.pem").write_bytes(key)
    context = ssl.create_default_context(cafile=str(root_ca))
    context.load_cert_chain(workdir / "device.cert.pem", workdir / "device.key.pem")
    client_id = b"rotation-test"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol, level 4, clean session, keep-alive 60
    payload = struct.pack(">H", len(client_id)) + client_id
    packet = bytes([0x10, len(variable) + len(payload)]) + variable + payload
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(packet)
        connack = tls.recv(4)
    return connack[3]


def test_rotate_then_new_batches_use_the_new_ca_and_old_devices_still_connect(tmp_path):
    from include.key_bundle import open_bundle
    from iot_emulator.server import EmulatorServer

    state = tmp_path / "state"
    first = run_local(state, "--manifest", str(manifest(tmp_path / "one.csv", 60_000_000)))
    assert first["provisioned"] == 8
    before = run_local(state, "--dag", "manage_factory_ca", "--conf", '{"action": "report"}')
    (old,) = [ca["certificate_id"] for ca in before["cas"] if ca["current"]]
    planned = run_local(
        state, "--dag", "manage_factory_ca", "--conf", '{"action": "rotate", "dry_run": true}'
    )
    assert planned["dry_run"] and planned["old_certificate_id"] == old
    rotated = run_local(
        state, "--dag", "manage_factory_ca", "--conf", '{"action": "rotate", "common_name": "Factory CA 2"}'
    )
    new = rotated["new_certificate_id"]
    assert rotated["old_certificate_id"] == old != new

    second = run_local(state, "--manifest", str(manifest(tmp_path / "two.csv", 61_000_000)))
    assert second["provisioned"] == 8
    signed = issuers(state)
    assert {signed[f"TH{60_000_000 + n:09d}"] for n in range(8)} == {old}
    assert {signed[f"TH{61_000_000 + n:09d}"] for n in range(8)} == {new}

    after = run_local(state, "--dag", "manage_factory_ca", "--conf", '{"action": "report"}')
    by_id = {ca["certificate_id"]: ca for ca in after["cas"]}
    assert by_id[old]["status"] == by_id[new]["status"] == "ACTIVE"
    assert by_id[old]["devices"] >= 8 and by_id[new]["devices"] == 8
    assert by_id[new]["current"] and not by_id[old]["current"]
    assert by_id[old]["days_left"] > 90 and by_id[new]["days_left"] > 90

    # A device of the old CA still authenticates: its key from the first batch's bundle, its certificate.
    line = state / "factory-line"
    server = EmulatorServer("127.0.0.1", 0, state_dir=state / "emulator", mqtt_port=0).start()
    try:
        import boto3

        s3 = boto3.client(
            "s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        bundle = s3.get_object(Bucket="factory-provisioning", Key=first["files"]["bundles"][0])["Body"].read()
        (record, *_) = open_bundle(
            bundle, (line / "recipient.key.pem").read_bytes(), (line / "recipient.cert.pem").read_bytes()
        )
        code = mqtt_connects(
            server.mqtt_port,
            server.mqtt_root_ca,
            record["certificate_pem"].encode(),
            record["private_key_pem"].encode(),
            tmp_path,
        )
        assert code == 0, f"CONNACK return code {code}"
    finally:
        server.stop()
