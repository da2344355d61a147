"""Benchmark of the emulator's bulk registration: lines/s of an own-CA certificate task (not a test).

Generates a factory CA and N device certificates (ECDSA P-256, issued straight from public keys), starts the
emulator in-process, registers the CA, uploads the JSON-lines input through boto3, starts a thing registration
task and polls it until it ends. Prints the task's lines/s and the bare per-line engine cost.

    .venv/bin/python -m scripts.bench_emulator --lines 100000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from typing import Any

import boto3
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

THING_TYPE, POLICY = "bench-sensor", "bench-device"
TEMPLATE = {
    "Parameters": {
        "ThingName": {"Type": "String"},
        "SerialNumber": {"Type": "String"},
        "CertificatePem": {"Type": "String"},
        "CACertificatePem": {"Type": "String"},
    },
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Ref": "ThingName"},
                "ThingTypeName": THING_TYPE,
                "AttributePayload": {"serial": {"Ref": "SerialNumber"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {
                "CertificatePem": {"Ref": "CertificatePem"},
                "CACertificatePem": {"Ref": "CACertificatePem"},
                "Status": "ACTIVE",
            },
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": POLICY}},
    },
}
POLICY_DOCUMENT = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}],
}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _certificate(
    subject: str, public_key: Any, ca_key: Any, issuer: x509.Name, ca: bool = False
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )


def make_input(lines: int, ca_key: Any, ca_cert: x509.Certificate) -> bytes:
    """N JSON lines, each with its own device certificate signed by the factory CA."""
    ca_pem = _pem(ca_cert)
    out = []
    for i in range(lines):
        public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        cert = _certificate(f"bench-{i:07d}", public_key, ca_key, ca_cert.subject)
        out.append(
            orjson.dumps(
                {
                    "ThingName": f"bench-{i:07d}",
                    "SerialNumber": f"SN{i:07d}",
                    "CertificatePem": _pem(cert),
                    "CACertificatePem": ca_pem,
                }
            )
        )
    return b"\n".join(out) + b"\n"


def engine_cost(service: Any, data: bytes, sample: int = 2000) -> float:
    """Microseconds per line for the template run alone, on a throwaway account's service."""
    from iot_emulator.template_language import compile_template
    from iot_emulator.template_provisioning import provision

    template = compile_template(json.dumps(TEMPLATE))
    rows = [orjson.loads(line) for line in data.splitlines()[:sample]]
    cache: dict[str, set[str]] = {}
    start = time.perf_counter()
    for row in rows:
        provision(service, template, row, cache=cache)
    return (time.perf_counter() - start) / len(rows) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--state-dir", help="persist the emulator's state there (measures checkpoint cost)")
    args = parser.parse_args()

    from iot_emulator.server import EmulatorServer
    from iot_emulator.service import in_memory_service

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(
        "Bench Factory CA", ca_key.public_key(), ca_key, _name("Bench Factory CA"), ca=True
    )
    started = time.perf_counter()
    data = make_input(args.lines, ca_key, ca_cert)
    print(
        f"generated {args.lines} certificate lines ({len(data) / 1e6:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )

    server = EmulatorServer("127.0.0.1", port=0, state_dir=args.state_dir).start()
    try:
        session = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - the emulator checks no credentials
            region_name="us-east-1",
        )
        iot = session.client("iot", endpoint_url=server.endpoint_url)
        s3 = session.client("s3", endpoint_url=server.endpoint_url)
        code = iot.get_registration_code()["registrationCode"]
        verification = _certificate(
            code, ec.generate_private_key(ec.SECP256R1()).public_key(), ca_key, ca_cert.subject
        )
        iot.register_ca_certificate(
            caCertificate=_pem(ca_cert), verificationCertificate=_pem(verification), setAsActive=True
        )
        iot.create_thing_type(thingTypeName=THING_TYPE)
        iot.create_policy(policyName=POLICY, policyDocument=json.dumps(POLICY_DOCUMENT))
        s3.create_bucket(Bucket="bench-input")
        s3.put_object(Bucket="bench-input", Key="bench.jsonl", Body=data)

        started = time.perf_counter()
        task_id = iot.start_thing_registration_task(
            templateBody=json.dumps(TEMPLATE),
            inputFileBucket="bench-input",
            inputFileKey="bench.jsonl",
            roleArn="arn:aws:iam::123456789012:role/bench-registration",
        )["taskId"]
        while True:
            task = iot.describe_thing_registration_task(taskId=task_id)
            if task["status"] not in ("InProgress", "Cancelling"):
                break
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        print(
            f"task {task['status']}: {task['successCount']} succeeded, {task['failureCount']} failed "
            f"in {elapsed:.1f} s = {args.lines / elapsed:,.0f} lines/s"
        )

        # The bare engine cost, on a separate in-memory service (nothing else competes for the lock).
        scratch = in_memory_service(account_id="000000000000")
        code = scratch.get_registration_code()["registrationCode"]
        verification = _certificate(
            code, ec.generate_private_key(ec.SECP256R1()).public_key(), ca_key, ca_cert.subject
        )
        scratch.register_ca_certificate(
            caCertificate=_pem(ca_cert), verificationCertificate=_pem(verification), setAsActive=True
        )
        scratch.create_thing_type(thingTypeName=THING_TYPE)
        scratch.create_policy(policyName=POLICY, policyDocument=json.dumps(POLICY_DOCUMENT))
        per_line = engine_cost(scratch, data)
        print(f"engine alone: {per_line:.0f} µs per line = {1e6 / per_line:,.0f} lines/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
