"""The app mounted in the real Airflow API server (`airflow api-server`): Airflow JWT in, bulk as DAG runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.settings import Settings
from plugins.cdf_api.media import MEDIA_TYPE
from scripts.bootstrap import bootstrap
from tests.cdf.conftest import EXAMPLES, free_port
from tests.dags.airflow_support import airflow_db, factory_ca_connection  # noqa: F401

pytestmark = pytest.mark.airflow
ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/cdf/provisioning"
USERS = {"admin": "admin", "viewer": "viewer"}


@dataclass
class AirflowServer:
    base_url: str
    iot: Any
    s3: Any

    def token(self, user: str) -> str:
        response = httpx.post(f"{self.base_url}/auth/token", json={"username": user, "password": USERS[user]})
        assert response.status_code == 201, response.text
        return response.json()["access_token"]

    def call(self, method: str, path: str, token: str | None, body: Any = None) -> httpx.Response:
        headers = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        content = json.dumps(body) if body is not None else None
        return httpx.request(
            method, f"{self.base_url}{PREFIX}{path}", content=content, headers=headers, timeout=60
        )


def _serialize_dags() -> None:
    """What the dag-processor does: the DAGs parsed into the metadata DB (POST /bulkthings triggers one)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(ROOT / "dags"), bundle_path=ROOT / "dags")
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)


@pytest.fixture(scope="module")
def airflow_server(airflow_db, emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:  # noqa: F811
    emulator.reset()
    state_dir = tmp_path_factory.mktemp("cdf-airflow-state")
    port = free_port()
    passwords = state_dir / "passwords.json"
    passwords.write_text(json.dumps(USERS))
    aws = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": emulator.endpoint_url, "region_name": "us-east-1"},
    }
    env = {
        **os.environ,
        "STATE_DIR": str(state_dir),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # `airflow standalone`: the API server with a scheduler, triggerer and LocalExecutor, on free ports.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "PIPELINE_REGISTRATION_POLL_SECONDS": "1",
    }
    env.pop("AWS_ENDPOINT_URL", None)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("STATE_DIR", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            patch.setenv(name, env[name])
        report = bootstrap(
            endpoint_url=emulator.endpoint_url,
            local_state=state_dir,
            settings=Settings.from_env(),
            region="us-east-1",
        )
    env["AIRFLOW_CONN_FACTORY_CA"] = factory_ca_connection(
        Path(report["ca_certificate"]).read_text(), Path(report["ca_key"]).read_text()
    )
    s3 = emulator.client("s3")
    for path in EXAMPLES.glob("*.json"):
        s3.put_object(
            Bucket="factory-provisioning", Key=f"templates/{path.stem}.json", Body=path.read_bytes()
        )
    _serialize_dags()
    log = (state_dir / "api-server.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow"), "standalone"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base_url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (state_dir / "api-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "airflow api-server did not come up"
            time.sleep(0.5)
        yield AirflowServer(base_url, emulator.client("iot"), s3)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()


def test_health_is_the_only_open_route(airflow_server) -> None:
    assert httpx.get(f"{airflow_server.base_url}{PREFIX}/health").json() == {"status": "ok"}
    refused = airflow_server.call("GET", "/things/anything", None)
    assert refused.status_code == 401 and refused.headers["content-type"] == MEDIA_TYPE
    assert refused.json() == {"error": "authentication required: send Authorization: Bearer <token>"}
    forged = airflow_server.call("GET", "/things/anything", "eyJhbGciOiJIUzUxMiJ9.e30.c2lnbmF0dXJl")
    assert forged.status_code == 401 and "not a valid Airflow token" in forged.json()["error"]


def test_an_airflow_jwt_is_accepted_and_provisions(airflow_server) -> None:
    token = airflow_server.token("admin")
    assert airflow_server.call("GET", "/things/not-there", token).json() == {
        "error": "thing not-there does not exist"
    }
    made = airflow_server.call(
        "POST",
        "/things",
        token,
        {"provisioningTemplateId": "cdf-own-ca", "parameters": {"ThingName": "af-1"}},
    )
    assert made.status_code == 201, made.text
    assert made.json()["privateKey"].startswith("-----BEGIN PRIVATE KEY-----")
    assert airflow_server.iot.describe_thing(thingName="af-1")["thingName"] == "af-1"


def test_the_auth_managers_permissions_apply(airflow_server) -> None:
    viewer = airflow_server.token("viewer")
    assert airflow_server.call("GET", "/things/not-there", viewer).status_code == 404
    refused = airflow_server.call(
        "POST", "/things", viewer, {"provisioningTemplateId": "TH-100", "parameters": {}}
    )
    assert refused.status_code == 403
    assert refused.json() == {"error": "user viewer may not POST runs of provision_factory_batch"}


def test_bulk_becomes_a_provision_factory_batch_run(airflow_server) -> None:
    token = airflow_server.token("admin")
    entries = [{"serial_number": f"AF-BULK-{i}"} for i in range(3)]
    started = airflow_server.call(
        "POST", "/bulkthings", token, {"provisioningTemplateId": "TH-100", "parameters": entries}
    )
    assert started.status_code == 201, started.text
    task_id = started.json()["taskId"]
    run = httpx.get(
        f"{airflow_server.base_url}/api/v2/dags/provision_factory_batch/dagRuns/{task_id}",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert run["dag_run_id"] == task_id and run["state"] == "queued"
    assert run["conf"]["manifest"].startswith("s3://factory-provisioning/cdf/bulk/" + task_id)
    status = airflow_server.call("GET", f"/bulkthings/{task_id}", token).json()
    assert status["status"] == "Pending" and status["rows"] == 3
    assert status["links"]["airflowRun"] == f"/dags/provision_factory_batch/runs/{task_id}"
    assert "is paused" in status["message"]  # new DAGs are paused at creation: the run waits for that
    unpaused = httpx.patch(
        f"{airflow_server.base_url}/api/v2/dags/provision_factory_batch",
        json={"is_paused": False},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert unpaused.status_code == 200, unpaused.text
    deadline = time.monotonic() + 240
    while status["status"] not in ("Completed", "Failed") and time.monotonic() < deadline:
        time.sleep(2)
        status = airflow_server.call("GET", f"/bulkthings/{task_id}", token).json()
    assert status["status"] == "Completed", status
    assert status["successCount"] == 3 and status["percentageProgress"] == 100
    assert status["links"]["batchReport"] == f"/factory/dags/provision_factory_batch/runs/{task_id}/report"
    assert httpx.get(status["links"]["report"]).status_code == 200
    assert airflow_server.iot.describe_thing(thingName="TH-100-AF-BULK-2")["thingName"] == "TH-100-AF-BULK-2"


def test_a_cdf_template_in_bulk_runs_with_its_derived_catalog(airflow_server) -> None:
    token = airflow_server.token("admin")
    unpaused = httpx.patch(
        f"{airflow_server.base_url}/api/v2/dags/provision_factory_batch",
        json={"is_paused": False},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert unpaused.status_code == 200, unpaused.text
    started = airflow_server.call(
        "POST",
        "/bulkthings",
        token,
        {
            "provisioningTemplateId": "cdf-own-ca",
            "parameters": [{"ThingName": f"af-cdf-{i}"} for i in range(2)],
        },
    )
    assert started.status_code == 201, started.text
    task_id = started.json()["taskId"]
    run = httpx.get(
        f"{airflow_server.base_url}/api/v2/dags/provision_factory_batch/dagRuns/{task_id}",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert run["conf"]["catalog"].endswith(".yaml")  # the template's derived product, in a catalog of its own
    deadline = time.monotonic() + 240
    status = airflow_server.call("GET", f"/bulkthings/{task_id}", token).json()
    while status["status"] not in ("Completed", "Failed") and time.monotonic() < deadline:
        time.sleep(2)
        status = airflow_server.call("GET", f"/bulkthings/{task_id}", token).json()
    assert status["status"] == "Completed", status
    assert status["successCount"] == 2
    (principal,) = airflow_server.iot.list_thing_principals(thingName="af-cdf-1")["principals"]
    assert principal.startswith("arn:aws:iot:")
