"""docs/fleet-provisioning.md as a new user follows it: `make dag` processes (scripts.run_local) on a local
state, the emulator serving that state with its MQTT endpoint (as `make emulator`), and the doc's own bash
blocks: open the claim bundle with openssl, run the sample device (awsiotsdk), then reconcile."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fixtures.make_dag import run_local

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "fleet-provisioning.md"


def doc_blocks() -> dict[str, str]:
    """The doc's bash blocks marked `<!-- fleet-test: NAME -->`, by name."""
    pattern = re.compile(r"<!-- fleet-test: (\w+) -->\n```bash\n(.*?)```", re.S)
    return dict(pattern.findall(DOC.read_text(encoding="utf-8")))


def run_block(block: str, values: str, env: dict[str, str]) -> str:
    """A doc block run by bash in the repository, our values for its variables (its own line dropped)."""
    lines = block.splitlines()
    assert re.match(r"\w+=", lines[0]), "a tested block starts with its variables"
    done = subprocess.run(
        ["bash", "-c", "\n".join(["set -e", values, *lines[1:]])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_make_dag_prepares_a_claim_product_and_the_sample_device_provisions_with_it(tmp_path):
    from iot_emulator.server import EmulatorServer

    state = tmp_path / "state"
    prepared = run_local(state, "--dag", "prepare_fleet_claim")
    assert prepared["claim"] == "issued" and prepared["template_name"] == "fleet-FC-600"
    assert prepared["device_endpoint"] == "localhost" and prepared["bundle"].startswith(
        "s3://factory-provisioning/"
    )

    blocks = doc_blocks()
    claim, devices = tmp_path / "claim", tmp_path / "devices"
    server = EmulatorServer(
        "127.0.0.1", 0, state_dir=state / "emulator", mqtt_port=0
    ).start()  # make emulator
    try:
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        line_key = state / "factory-line" / "recipient.key.pem"
        opened = run_block(
            blocks["open"], f"bundle={prepared['bundle']} line_key={line_key} claim={claim}", env
        )
        assert "claim key and certificate match" in opened
        assert {p.name for p in claim.iterdir()} >= {
            "FC-600-claim.key.pem",
            "FC-600-claim.cert.pem",
            "index.csv",
        }
        printed = run_block(blocks["device"], f"claim={claim} serial=FCP00042 devices={devices}", env)
    finally:
        server.stop()
    device = json.loads(printed.strip().splitlines()[-1])
    assert device["thingName"] == "FC-600-FCP00042"
    assert device["deviceConfiguration"] == {"telemetryTopicPrefix": "devices/"}
    assert (devices / "FC-600-FCP00042.private.key").stat().st_mode & 0o777 == 0o600

    summary = run_local(state, "--dag", "reconcile_fleet_devices")
    assert summary["accounted"] and (summary["provisioned"], summary["rows"]) == (1, 1)
    engine = sa.create_engine(f"sqlite:///{state / 'inventory.db'}")
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.text(
                    "select status, issuer, certificate_id from devices where thing_name = 'FC-600-FCP00042'"
                )
            ).one()
    finally:
        engine.dispose()
    assert tuple(row) == ("provisioned", "aws", device["certificateId"])
