"""The AWS CLI (PyPI awscli) through a whole bulk flow on the emulator, with nothing but --endpoint-url."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BUCKET = "cli-flow-input"
ROLE = "arn:aws:iam::123456789012:role/bulk-registration"
TEMPLATE = {
    "Parameters": {
        "ThingName": {"Type": "String"},
        "CertificatePem": {"Type": "String"},
        "CACertificatePem": {"Type": "String"},
    },
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}},
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {
                "CertificatePem": {"Ref": "CertificatePem"},
                "CACertificatePem": {"Ref": "CACertificatePem"},
                "Status": "ACTIVE",
            },
        },
    },
}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(subject: str, public_key: Any, issuer: str, issuer_key: Any, ca: bool) -> str:
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _new_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


class Aws:
    """``aws <args> --endpoint-url <emulator>`` in a clean environment; returns the parsed JSON output."""

    def __init__(self, endpoint_url: str, home: Path) -> None:
        self.endpoint_url = endpoint_url
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_PAGER": "",
        }

    def __call__(self, *args: str) -> Any:
        command = [
            sys.executable,
            "-m",
            "awscli",
            *args,
            "--endpoint-url",
            self.endpoint_url,
            "--output",
            "json",
        ]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"aws {' '.join(args[:2])} failed: {done.stderr}"
        if args[0] == "s3":  # the high-level s3 commands print text, not JSON
            return done.stdout
        return json.loads(done.stdout) if done.stdout.strip() else None


def test_bulk_registration_flow_with_the_aws_cli(fresh_emulator: Any, tmp_path: Path) -> None:
    aws = Aws(fresh_emulator.endpoint_url, tmp_path)

    aws("s3", "mb", f"s3://{BUCKET}")

    ca_key = _new_key()
    ca_pem = _sign("CLI Flow Factory CA", ca_key.public_key(), "CLI Flow Factory CA", ca_key, ca=True)
    code = aws("iot", "get-registration-code")["registrationCode"]
    verification_pem = _sign(code, _new_key().public_key(), "CLI Flow Factory CA", ca_key, ca=False)
    (tmp_path / "ca.pem").write_text(ca_pem)
    (tmp_path / "verification.pem").write_text(verification_pem)
    registered = aws(
        "iot",
        "register-ca-certificate",
        "--ca-certificate",
        f"file://{tmp_path / 'ca.pem'}",
        "--verification-certificate",
        f"file://{tmp_path / 'verification.pem'}",
        "--set-as-active",
    )
    assert registered["certificateId"]

    devices = [f"cli-device-{n}" for n in range(1, 4)]
    lines = [
        json.dumps(
            {
                "ThingName": name,
                "CertificatePem": _sign(
                    name, _new_key().public_key(), "CLI Flow Factory CA", ca_key, ca=False
                ),
                "CACertificatePem": ca_pem,
            }
        )
        for name in devices
    ]
    lines.append(
        json.dumps(
            {"ThingName": "not a valid thing name!", "CertificatePem": "x", "CACertificatePem": ca_pem}
        )
    )
    (tmp_path / "params.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "template.json").write_text(json.dumps(TEMPLATE))
    aws("s3", "cp", str(tmp_path / "params.jsonl"), f"s3://{BUCKET}/batches/params.jsonl")

    task_id = aws(
        "iot",
        "start-thing-registration-task",
        "--template-body",
        f"file://{tmp_path / 'template.json'}",
        "--input-file-bucket",
        BUCKET,
        "--input-file-key",
        "batches/params.jsonl",
        "--role-arn",
        ROLE,
    )["taskId"]

    deadline = time.monotonic() + 60
    while True:
        task = aws("iot", "describe-thing-registration-task", "--task-id", task_id)
        if task["status"] == "Completed":
            break
        assert task["status"] == "InProgress" and time.monotonic() < deadline, task
        time.sleep(0.2)
    assert (task["successCount"], task["failureCount"], task["percentageProgress"]) == (3, 1, 100)

    downloaded: dict[str, list[dict[str, Any]]] = {}
    for report_type in ("RESULTS", "ERRORS"):
        listing = aws(
            "iot", "list-thing-registration-task-reports", "--task-id", task_id, "--report-type", report_type
        )
        assert listing["reportType"] == report_type and listing["resourceLinks"]
        downloaded[report_type] = []
        for link in listing["resourceLinks"]:
            with urllib.request.urlopen(link, timeout=10) as response:  # plain GET, no credentials
                downloaded[report_type] += [json.loads(line) for line in response.read().splitlines()]

    results, errors = downloaded["RESULTS"], downloaded["ERRORS"]
    assert sorted(line["lineNumber"] for line in results) == [1, 2, 3]
    assert all(
        line["response"]["ResourceArns"]["thing"].endswith(f"thing/{devices[line['lineNumber'] - 1]}")
        for line in results
    )
    assert [line["lineNumber"] for line in errors] == [4]
    assert errors[0]["response"] is None and "Error Code: " in errors[0]["errorMessage"]

    things = aws("iot", "list-things")["things"]
    assert sorted(t["thingName"] for t in things) == devices
