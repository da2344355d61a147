"""`make cluster` runs what docker-compose.yaml defines (no processes started here: the translation only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scripts.cluster import (
    COMPOSE_FILE,
    EXTERNAL_SERVICES,
    IMAGE_PATHS,
    ROOT,
    Cluster,
    ClusterConfig,
    ClusterError,
    interpolate,
)


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    config = ClusterConfig(
        state_dir=tmp_path, workers=3, api_port=18001, emulator_port=18002, redis_db=7, airflow_db="a_db"
    )
    return Cluster(config)


def test_interpolation_follows_compose():
    variables = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $${SET}", variables) == "x d  d ${SET}"
    assert interpolate({"k": ["${SET:?must}"]}, variables) == {"k": ["x"]}
    with pytest.raises(ClusterError, match="UNSET"):
        interpolate("${UNSET:?set UNSET}", variables)


def test_every_compose_service_is_started_with_its_own_command_and_environment(cluster):
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = {s.name: s for s in cluster.services()}
    expected = set(compose["services"]) - set(EXTERNAL_SERVICES) - {"airflow-worker"}
    assert expected | {"worker-1", "worker-2", "worker-3"} == set(services)
    scheduler = services["airflow-scheduler"]
    assert scheduler.command == ["airflow", "scheduler"]
    env = scheduler.environment
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://postgres:@127.0.0.1:5432/a_db"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/7"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18001/execution/"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    assert (
        "emulator:4566" not in env["AIRFLOW_CONN_AWS_DEFAULT"]
        and "127.0.0.1:18002" in env["AIRFLOW_CONN_AWS_DEFAULT"]
    )
    # Every compose variable of the Airflow services made it, with the same name, to the process.
    for name in compose["x-airflow-common"]["environment"]:
        assert name in env, name
    assert services["airflow-apiserver"].command == ["airflow", "api-server", "--port", "18001"]
    assert services["emulator"].command[:6] == [
        "python",
        "-m",
        "iot_emulator",
        "--host",
        "127.0.0.1",
        "--port",
    ]


def test_workers_are_named_and_do_not_share_ports(cluster):
    workers = [s for s in cluster.services() if s.compose_name == "airflow-worker"]
    assert [w.environment["FACTORY_HOSTNAME"] for w in workers] == ["worker-1", "worker-2", "worker-3"]
    assert [w.command[-1] for w in workers] == ["celery@worker-1", "celery@worker-2", "celery@worker-3"]
    ports = {w.environment["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] for w in workers}
    assert len(ports) == 3


def test_secrets_are_generated_once_and_kept_private(cluster, tmp_path):
    first = cluster.variables()
    again = Cluster(cluster.config).variables()
    secret_file = tmp_path / "secrets.env"
    assert secret_file.stat().st_mode & 0o077 == 0
    for name in ("AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD"):
        assert first[name] and first[name] == again[name]


def test_every_mount_and_address_of_compose_has_a_place_on_this_machine(cluster):
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            target = mount.split(":")[1]
            assert name in EXTERNAL_SERVICES or any(target.startswith(p) for p in IMAGE_PATHS), (name, target)
    for service in cluster.services():  # raises ClusterError on a service:port it cannot place
        for text in [*service.command, *service.environment.values()]:
            assert "/opt/airflow" not in text, (service.name, text)


def test_start_order_follows_depends_on(cluster):
    order = {s.name: s.depends_on for s in cluster.services()}
    assert order["airflow-init"] == {"postgres": "service_healthy", "emulator": "service_healthy"}
    assert order["worker-1"]["airflow-init"] == "service_completed_successfully"
    assert order["airflow-scheduler"]["airflow-apiserver"] == "service_healthy"
