"""`make bench` as users run it, on a few hundred devices: every device accounted, the JSON line's keys kept,
and a PostgreSQL inventory measured in a schema of its own that is gone afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

from tests.fixtures.inventory import POSTGRES_URL

DEVICES = 300


def _bench(*extra: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--devices", str(DEVICES), "--bad-rows", "3", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures, done.stdout


def _stages(figures: dict) -> dict[str, dict]:
    return {stage["stage"]: stage for stage in figures["stages"]}


@pytest.mark.timeout(300)
def test_bench_accounts_every_device_and_prints_each_stage_beside_the_floor():
    figures, table = _bench()
    assert figures["devices"] == DEVICES
    assert figures["outcome"] == {
        "provisioned": DEVICES - 3,
        "failed": 0,
        "quarantined": 3,
        "skipped": 0,
        "accounted": True,
    }
    assert figures["floor"]["per_device_us"] > 0
    stages = _stages(figures)
    for name in ("validate", "preflight", "credentials", "parameter files", "summarize", "end to end"):
        assert stages[name]["cpu_us_per_device"] > 0 and stages[name]["devices_per_s"] > 0, name
    assert any(name.startswith("reconcile[TH-100") for name in stages)
    # The emulator's CPU apart: registration is its work (CPU times tick every 10 ms: the whole run here).
    assert stages["end to end"]["emulator_cpu_us_per_device"] > 0
    assert "emulator CPU per device (it stands for AWS" in table
    assert (
        figures["inventory"] == "sqlite"
        and "inventory: SQLite" in table
        and "server_cpu_us_per_device" not in stages["preflight"]
    )


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_bench_on_a_postgresql_inventory_counts_its_server_and_leaves_no_schema(postgres_url):
    """(postgres_url: skipped, or failed in CI, when the server is unreachable.)"""
    engine = sa.create_engine(POSTGRES_URL)

    def bench_schemas() -> set[str]:
        with engine.connect() as connection:
            found = connection.execute(
                sa.text(
                    "select schema_name from information_schema.schemata where schema_name like 'bench_%'"
                )
            )
            return set(found.scalars())

    before = bench_schemas()
    figures, table = _bench("--inventory", POSTGRES_URL)
    assert figures["outcome"]["accounted"] and figures["outcome"]["provisioned"] == DEVICES - 3
    assert (
        figures["inventory"] == "postgresql"
        and "inventory: PostgreSQL" in table
        and "PostgreSQL server CPU per device" in table
    )
    stages = _stages(figures)
    assert all("server_cpu_us_per_device" in stage for stage in stages.values())
    # Claims and outcomes are the server's work (CPU times tick every 10 ms: the whole run, not one stage).
    assert stages["end to end"]["server_cpu_us_per_device"] > 0
    assert bench_schemas() == before
    engine.dispose()


def test_bench_refuses_an_inventory_url_that_is_not_postgresql():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench",
            "--devices",
            "1",
            "--inventory",
            "mysql://root@127.0.0.1/test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--inventory takes a PostgreSQL URL" in done.stderr
