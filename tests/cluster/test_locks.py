"""The pinned set imports the Celery executor (celery 5.7.0 with the celery provider 3.26.0 did not)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    lock = (ROOT / "requirements.lock").read_text()
    return {name.lower(): version for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.M)}


def test_the_lock_pins_the_celery_set_with_airflow():
    pins = _pins()
    assert pins["apache-airflow"] == "3.3.2"
    for package in (
        "apache-airflow-providers-celery",
        "celery",
        "kombu",
        "redis",
        "apache-airflow-providers-fab",
    ):
        assert package in pins, f"{package} is not in requirements.lock"
    assert pins["celery"] == "5.6.3", (
        "celery 5.7.0 breaks the celery provider's import (see requirements.txt)"
    )


def test_the_installed_set_is_the_locked_one():
    from importlib.metadata import version

    pins = _pins()
    for package in ("celery", "kombu", "apache-airflow-providers-celery", "apache-airflow-providers-fab"):
        assert version(package) == pins[package], package


def test_celery_executor_and_worker_app_import():
    """In a fresh interpreter: the executor, the Celery app a worker runs, and the deployment's config."""
    code = (
        "from airflow.providers.celery.executors.celery_executor import CeleryExecutor, app\n"
        "from plugins.iot_provisioning.celery_config import CELERY_CONFIG\n"
        "assert CELERY_CONFIG['worker_disable_prefetch'] is True\n"
        "print(CeleryExecutor.__name__, app.main)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CeleryExecutor" in result.stdout
