"""The README's sample device script provisions a device against a running emulator, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.iot_emulator.conftest import Fleet

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "iot_emulator" / "examples" / "provision_device.py"


def _run(emulator: Any, out_dir: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--emulator-url",
            emulator.endpoint_url,
            "--out-dir",
            str(out_dir),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "options", [["--mqtt", "5"], ["--mqtt", "3", "--csr"]], ids=["mqtt-5-keys", "mqtt-3.1.1-csr"]
)
def test_the_sample_script_provisions_one_device(
    fleet: Fleet, fresh_emulator: Any, tmp_path: Path, options: list[str]
) -> None:
    out = _run(
        fresh_emulator,
        tmp_path,
        "--template-name",
        fleet.template_name,
        "--parameters",
        '{"SerialNumber": "example-1", "Site": "us"}',
        *options,
    )
    assert out["thingName"] == "sensor-example-1"
    assert out["deviceConfiguration"] == {"Broker": "mqtt.us.example", "Serial": "example-1"}
    assert Path(out["privateKey"]).stat().st_mode & 0o077 == 0
    principals = fleet.iot.list_thing_principals(thingName="sensor-example-1")["principals"]
    assert principals == [f"arn:aws:iot:us-east-1:123456789012:cert/{out['certificateId']}"]


def test_the_sample_script_takes_a_claim_and_an_endpoint_as_on_aws(
    fleet: Fleet, fresh_emulator: Any, tmp_path: Path
) -> None:
    (tmp_path / "claim.pem").write_text(fleet.claim.certificate_pem)
    (tmp_path / "claim.key").write_text(fleet.claim.private_key_pem)
    out = _run(
        fresh_emulator,
        tmp_path,
        "--template-name",
        fleet.template_name,
        "--parameters",
        '{"SerialNumber": "explicit"}',
        "--endpoint",
        "127.0.0.1",
        "--port",
        str(fresh_emulator.mqtt_port),
        "--root-ca",
        str(fresh_emulator.mqtt_root_ca),
        "--claim-cert",
        str(tmp_path / "claim.pem"),
        "--claim-key",
        str(tmp_path / "claim.key"),
    )
    assert out["thingName"] == "sensor-explicit"
