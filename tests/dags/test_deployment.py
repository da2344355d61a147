"""docker-compose.yaml is a valid deployment of the real shape (no engine here: config check + YAML check)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _required_variables() -> dict[str, str]:
    """The variables docker/env.example asks for, each given a throwaway value."""
    example = (ROOT / "docker" / "env.example").read_text()
    return {name: "x" for name in re.findall(r"^([A-Z_]+)=$", example, flags=re.M)}


def test_compose_config_accepts_the_file_with_the_documented_variables_only():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose client on this machine; the YAML checks below still run")
    command = [*cli, "-f", str(COMPOSE), "--project-directory", str(ROOT), "config", "-q"]
    base = {"PATH": os.environ["PATH"]}
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**base, **_required_variables()}
    )
    assert result.returncode == 0, result.stderr
    missing = subprocess.run(command, capture_output=True, text=True, check=False, env=base)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr  # no secret has a default


def test_services_images_and_dependencies(compose):
    services = compose["services"]
    assert {"postgres", "redis", "emulator", "airflow-init", *AIRFLOW_COMPONENTS} <= set(services)
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        depends = service.get("depends_on") or {}
        assert set(depends) <= set(services), f"{name} depends on an undefined service"
        assert name not in depends
    for name, command in AIRFLOW_COMPONENTS.items():
        assert " ".join(services[name]["command"]).startswith(f"airflow {command}")
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    init = services["airflow-init"]["command"][-1]
    assert "airflow db migrate" in init and "scripts.bootstrap" in init and "--airflow-pool" in init
    assert "scripts.cluster_init" in init


def test_mounts_exist_and_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_airflow_environment_is_the_real_shape(compose):
    env = compose["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "@postgres:5432/${AIRFLOW_DB:-airflow}" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert env["PIPELINE_INVENTORY_URL"].startswith("postgresql+psycopg2://")
    assert "/${INVENTORY_DB:-inventory}" in env["PIPELINE_INVENTORY_URL"]
    assert "http://emulator:4566" in env["AIRFLOW_CONN_AWS_DEFAULT"]
    assert env["PYTHONPATH"] == "/opt/airflow/project"
    assert "PRIVATE KEY" not in COMPOSE.read_text()


def test_every_service_has_a_healthcheck_and_starts_after_what_it_needs_is_healthy(compose):
    for name, service in compose["services"].items():
        if service.get("restart") == "no":  # the init services run to completion instead
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency.endswith("-init") else "service_healthy"
            assert condition["condition"] == expected, (name, dependency)


def test_secrets_come_from_the_environment(compose):
    env = compose["x-airflow-common"]["environment"]
    for name in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", env[name]), f"{name} must come from the environment"
    assert ":?" in compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert ":?" in compose["services"]["airflow-init"]["environment"]["AIRFLOW_ADMIN_PASSWORD"]
    assert "change-me" not in COMPOSE.read_text() and "admin:admin" not in COMPOSE.read_text()


def test_production_auth_manager_and_failure_settings(compose):
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager")
    assert env["AIRFLOW__CELERY__TASK_ACKS_LATE"] == "false"
    assert (
        env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
        == "plugins.iot_provisioning.celery_config.CELERY_CONFIG"
    )
    assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) > 2 * 3600
    assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"].startswith(
        "${AIRFLOW_TASK_HEARTBEAT_TIMEOUT"
    )


def test_init_creates_and_owns_its_volumes(compose):
    init = compose["services"]["airflow-init"]
    assert init["user"] == "0:0"
    script = init["command"][-1]
    assert "mkdir -p" in script and "chown -R" in script
    emulator_init = compose["services"]["emulator-init"]
    assert "chown -R" in emulator_init["command"][-1]
    assert compose["services"]["emulator"]["depends_on"]["emulator-init"]["condition"] == (
        "service_completed_successfully"
    )


def test_dockerfile_installs_the_pinned_set():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert "requirements.lock" in dockerfile
    lock = (ROOT / "requirements.lock").read_text()
    assert "apache-airflow-providers-celery==" in lock and "\nredis==" in lock
    assert "apache-airflow==3.3.2" in lock
