"""The real Airflow services (`make cluster`'s scripts.cluster, from docker-compose.yaml) for a test session.

One cluster per session on free ports, two PostgreSQL databases of its own (created, dropped after), a
Redis key prefix of its own (its keys deleted after), a state directory of its own; every process it
started is stopped at the end and the session checks none is left. Without PostgreSQL or Redis on this
machine the tests skip, unless CI is set (then they fail). Tests talk to Airflow only as users do: the
REST API with a JWT, the emulator's S3, the UI in Chromium.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from scripts.cluster import Cluster, ClusterConfig, free_port, is_same_process

POSTGRES = os.environ.get("CLUSTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("CLUSTER_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = 14
DAG_ID = "provision_factory_batch"
# The heartbeat timeout the cluster tests run with (docker-compose's default is 60 s; see docs/deployment.md).
HEARTBEAT_TIMEOUT = 20


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _require_services() -> None:
    pg, redis = urllib.parse.urlsplit(POSTGRES), urllib.parse.urlsplit(REDIS)
    missing = [
        name
        for name, url in (("PostgreSQL", pg), ("Redis", redis))
        if not _reachable(url.hostname or "127.0.0.1", url.port or (5432 if url is pg else 6379))
    ]
    if missing:
        message = f"{' and '.join(missing)} not reachable ({POSTGRES}, {REDIS})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Api:
    """Airflow's REST API as a user calls it: a JWT from /auth/token, then /api/v2."""

    base: str
    username: str
    password: str

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.refresh_token()

    def refresh_token(self) -> None:
        response = requests.post(
            f"{self.base}/auth/token", json={"username": self.username, "password": self.password}, timeout=30
        )
        response.raise_for_status()
        self.token = response.json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.base}{path}", params=params or None, timeout=30)
        response.raise_for_status()
        return response.json()

    def trigger(self, conf: dict[str, Any], dag_id: str = DAG_ID) -> str:
        response = self.session.post(
            f"{self.base}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=30
        )
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def run(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances", limit=1000)["task_instances"]

    def tries(self, run_id: str, task_id: str, map_index: int, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/{map_index}/tries"
        return self.get(path)["task_instances"]

    def xcom(self, run_id: str, task_id: str, dag_id: str = DAG_ID) -> Any:
        quoted = urllib.parse.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/return_value"
        return self.get(path, deserialize=True)["value"]

    def wait_finished(self, run_id: str, timeout: float, dag_id: str = DAG_ID) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                run = self.run(run_id, dag_id)
            except requests.HTTPError as error:  # a run another DAG triggers may not exist yet
                if error.response is None or error.response.status_code != 404:
                    raise
            else:
                if run["state"] in ("success", "failed"):
                    return run
            time.sleep(2)
        try:
            self.run(run_id, dag_id)
        except requests.HTTPError:
            known = [r["dag_run_id"] for r in self.get(f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]]
            raise AssertionError(
                f"no run {run_id} of {dag_id} within {timeout:.0f} s; runs: {known}"
            ) from None
        states = {(t["task_id"], t["map_index"]): t["state"] for t in self.task_instances(run_id, dag_id)}
        raise AssertionError(f"{dag_id} {run_id} did not finish within {timeout:.0f} s: {states}")


@dataclass
class RunningCluster:
    cluster: Cluster
    api: Api
    state_dir: Path
    inventory_url: str
    redis_prefix: str

    @property
    def emulator_url(self) -> str:
        return self.cluster.config.emulator_url

    def s3(self) -> Any:
        return self.client("s3")

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.emulator_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def upload_manifest(self, path: Path, key: str) -> str:
        self.s3().upload_file(str(path), "factory-provisioning", key)
        return f"s3://factory-provisioning/{key}"

    def query(self, sql: str, **params: Any) -> list[tuple]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.inventory_url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(sa.text(sql), params)]
        finally:
            engine.dispose()


def manifest(directory: Path, name: str, devices: int, first_serial: int, gw_share: float = 0.0) -> Path:
    """A clean manifest of fresh serial numbers (scripts.generate_manifest, no broken rows)."""
    from scripts.generate_manifest import write_manifest

    path = directory / f"{name}.csv"
    with path.open("w", encoding="utf-8") as handle:
        write_manifest(handle, devices, 0, gw_share, seed=first_serial, first=first_serial)
    return path


def _drop_databases(names: list[str]) -> None:
    import psycopg2

    url = urllib.parse.urlsplit(POSTGRES)
    connection = psycopg2.connect(
        host=url.hostname, port=url.port or 5432, user=url.username or "postgres", dbname="postgres"
    )
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


def redis_keys(prefix: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(f"{REDIS}/{REDIS_DB}")
    return list(client.scan_iter(match=f"{prefix}*", count=1000))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    _require_services()
    tag = f"ct_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    state_dir = tmp_path_factory.mktemp("cluster")
    prefix = f"{tag}:"
    config = ClusterConfig(
        state_dir=state_dir,
        workers=2,
        api_port=free_port(),
        emulator_port=free_port(),
        postgres=POSTGRES,
        airflow_db=f"{tag}_airflow",
        inventory_db=f"{tag}_inventory",
        redis=REDIS,
        redis_db=REDIS_DB,
        overrides={"AIRFLOW_TASK_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)},
        extra_env={
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": prefix,
            # Small chunks, so that a batch of a few thousand devices has chunks for both workers.
            "PIPELINE_CHUNK_SIZE": "2500",
        },
    )
    running = Cluster(config)
    try:
        running.up()
        password = running.variables()["AIRFLOW_ADMIN_PASSWORD"]
        url = urllib.parse.urlsplit(POSTGRES)
        inventory_url = (
            f"postgresql+psycopg2://{url.username or 'postgres'}@{url.hostname}:{url.port or 5432}/"
            f"{config.inventory_db}"
        )
        yield RunningCluster(
            running, Api(config.api_url, "admin", password), state_dir, inventory_url, prefix
        )
    finally:
        recorded = [vars(s) for s in running.started]
        running.down()
        left = [entry["name"] for entry in recorded if is_same_process(entry["pid"], entry["start_ticks"])]
        _drop_databases([config.airflow_db, config.inventory_db])
        keys = redis_keys(prefix)
        if keys:
            import redis

            redis.Redis.from_url(f"{REDIS}/{REDIS_DB}").delete(*keys)
        assert not left, f"processes left behind: {left}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: runs against the real Airflow services (scripts.cluster)")
