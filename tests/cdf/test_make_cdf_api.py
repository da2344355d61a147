"""`make cdf-api` (scripts.cdf_api): emulator, bootstrap, serve, write cdf-api.json, stop it all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from plugins.cdf_api.media import MEDIA_TYPE
from tests.cdf.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("stop", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cdf_api_serves_the_local_state_and_stops_the_emulator(
    tmp_path: Path, stop: int, exit_code: int
) -> None:
    """Stopped by Ctrl-C or by SIGTERM (a service manager, kill), it stops its emulator too."""
    port = free_port()
    env = {**os.environ, "STATE_DIR": str(tmp_path), "CDF_API_PORT": str(port), "CDF_API_TOKEN": "tok"}
    env.pop("AWS_ENDPOINT_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.cdf_api"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    details = tmp_path / "cdf-api.json"
    try:
        deadline = time.monotonic() + 90
        while not details.exists() or not _up(port):
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "make cdf-api did not come up"
            time.sleep(0.3)
        written = json.loads(details.read_text())
        assert written["base_url"] == f"http://127.0.0.1:{port}" and written["token"] == "tok"
        assert written["templates"] == "s3://factory-provisioning/templates/"
        assert written["aws_endpoint_url"].startswith("http://127.0.0.1:")
        assert details.stat().st_mode & 0o777 == 0o600
        headers = {"Authorization": "Bearer tok", "Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}
        body = {"provisioningTemplateId": "cdf-own-ca", "parameters": {"ThingName": "make-1"}}
        made = httpx.post(f"{written['base_url']}/things", json=body, headers=headers, timeout=30)
        assert made.status_code == 201, made.text
        assert (
            httpx.get(f"{written['base_url']}/things/make-1", headers=headers).json()["thingName"] == "make-1"
        )
    finally:
        process.send_signal(stop)
        output, _ = process.communicate(timeout=60)
    assert f"CDF provisioning API on http://127.0.0.1:{port}" in output
    assert "development token: tok" in output
    assert output.rstrip().endswith("[run] emulator stopped")
    assert process.returncode == exit_code  # as a shell reports the signal
    left = [
        p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert left == [], "the emulator outlived make cdf-api"


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
