"""Real `airflow dags test` processes against the in-process emulator: start several at once, kill one.

Each process gets an Airflow home of its own (a copy of one migrated metadata DB with the registration pool),
so processes never share Airflow's SQLite file; they share what production runs share: the AWS endpoint and
the inventory. The environment is the one `make run` builds (scripts.run_local.airflow_env).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from scripts.run_local import ROOT, VENV_BIN, airflow_env, factory_ca_connection

AIRFLOW = str(VENV_BIN / "airflow")

DAG_ID = "provision_factory_batch"


def migrated_home(directory: Path) -> Path:
    """An Airflow home with a migrated metadata DB and the one-slot registration pool (made once)."""
    home = directory / "airflow"
    if not (home / "airflow.db").exists():
        env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, cwd=ROOT)
        subprocess.run(
            [
                AIRFLOW,
                "pools",
                "set",
                "iot_bulk_registration",
                "1",
                "AWS runs one task",
                "--include-deferred",
            ],
            env=env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
    return home


@dataclass
class DagProcess:
    """One `airflow dags test` run in its own process group."""

    name: str
    home: Path
    process: subprocess.Popen
    log: Path

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not finish within {timeout} s; log {self.log}") from None

    def kill(self) -> None:
        """SIGKILL the whole group: the way a lost worker or a killed `make run` ends."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def run_id(self) -> str:
        """The DAG run this process made (read from its own metadata DB)."""
        engine = sa.create_engine(f"sqlite:///{self.home / 'airflow.db'}")
        try:
            with engine.connect() as connection:
                return connection.execute(
                    sa.text("select run_id from dag_run where dag_id = :d order by id desc limit 1"),
                    {"d": DAG_ID},
                ).scalar_one()
        finally:
            engine.dispose()

    def mark_failed(self) -> None:
        """What `make run` does to a run a killed process left running (run_local.fail_stale_runs)."""
        code = "from scripts.run_local import fail_stale_runs; print(fail_stale_runs())"
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "PYTHONPATH": str(ROOT),
        }
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, cwd=ROOT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class LocalAirflow:
    """Starts DAG runs as separate processes on one emulator, one inventory and one bootstrap."""

    root: Path
    template_home: Path
    endpoint: str
    state_dir: Path
    extra_env: dict[str, str]
    ca_certificate: Path
    ca_key: Path

    def start(self, name: str, conf: dict[str, Any], *, home: Path | None = None) -> DagProcess:
        if home is None:
            home = self.root / name
            if not home.exists():
                # The DB only: the template's airflow.cfg names the template's own DB by absolute path.
                home.mkdir(parents=True)
                shutil.copy(self.template_home / "airflow.db", home / "airflow.db")
        env = {
            **os.environ,
            **airflow_env(self.state_dir, self.endpoint),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_FACTORY_CA": factory_ca_connection(self.ca_certificate, self.ca_key),
            **self.extra_env,
        }
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [AIRFLOW, "dags", "test", DAG_ID, "-c", json.dumps(conf)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return DagProcess(name, home, process, log)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
