"""The invariants under interruption and concurrency, with real `airflow dags test` processes.

No device ever gets a second certificate: a run killed during registration and run again resumes the AWS task
it started (and reconciles the first run's rows); two runs of one manifest started together, or of two
manifests sharing serials, split the devices between them by their claims. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.local_airflow import LocalAirflow, migrated_home, wait_until

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(600)]


@pytest.fixture(scope="session")
def template_home(tmp_path_factory) -> Path:
    return migrated_home(tmp_path_factory.mktemp("airflow-template"))


@pytest.fixture
def local(fresh_emulator, aws_env, inventory_url, template_home, tmp_path) -> LocalAirflow:
    from include.settings import Settings
    from scripts.bootstrap import bootstrap

    state = tmp_path / "state"
    extra = {
        "STATE_DIR": str(state),
        "PIPELINE_INVENTORY_URL": inventory_url,
        "PIPELINE_CHUNK_SIZE": "15",
        "PIPELINE_WORKERS": "1",
        "PIPELINE_REGISTRATION_POLL_SECONDS": "1",
    }
    settings = Settings.from_env(extra)
    report = bootstrap(
        endpoint_url=fresh_emulator.endpoint_url, local_state=state, settings=settings, region="us-east-1"
    )
    return LocalAirflow(
        root=tmp_path,
        template_home=template_home,
        endpoint=fresh_emulator.endpoint_url,
        state_dir=state,
        extra_env=extra,
        ca_certificate=Path(report["ca_certificate"]),
        ca_key=Path(report["ca_key"]),
    )


def manifest(path: Path, devices: int, first: int) -> Path:
    from scripts.generate_manifest import write_manifest

    buffer = io.StringIO()
    write_manifest(buffer, devices, 0, 0.2, seed=first, first=first)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def serials(path: Path) -> set[str]:
    return {row["serial_number"] for row in csv.DictReader(path.open(encoding="utf-8"))}


def one_certificate_per_thing(iot: Any, inventory_url: str) -> dict[str, str]:
    """Every thing in IoT holds exactly one certificate, the one the inventory names; thing -> cert id."""
    from include.inventory import Inventory

    inventory = Inventory(inventory_url)
    things = [t["thingName"] for p in iot.get_paginator("list_things").paginate() for t in p["things"]]
    held: dict[str, str] = {}
    for thing in things:
        principals = iot.list_thing_principals(thingName=thing)["principals"]
        assert len(principals) == 1, f"{thing} holds {len(principals)} certificates"
        held[thing] = principals[0].rsplit("/", 1)[-1]
        device = inventory.device(thing)
        assert device is not None and device["status"] == "provisioned", (thing, device)
        assert device["certificate_id"] == held[thing]
    certificates = [c for p in iot.get_paginator("list_certificates").paginate() for c in p["certificates"]]
    assert len(certificates) == len(things), "a certificate was registered for no thing"
    return held


def summary_of(run_id: str, inventory_url: str) -> dict[str, Any]:
    from include.pipeline import run_summary
    from include.settings import Settings

    summary = run_summary(Settings(inventory_url=inventory_url), run_id)
    assert summary is not None
    return summary


def test_a_run_killed_during_registration_is_resumed_not_repeated(
    local, fresh_emulator, inventory_url, tmp_path
):
    from include.inventory import Inventory

    iot = fresh_emulator.client("iot")
    path = manifest(tmp_path / "batch.csv", 60, 31_000_000)
    fresh_emulator.faults.update({"task_line_delay": 0.05})  # the first unit takes a few seconds
    first = local.start("first", {"manifest": str(path)})
    wait_until(
        lambda: iot.list_thing_registration_tasks(status="InProgress")["taskIds"], 240, "a registration"
    )
    first.kill()
    first_run = first.run_id()
    assert any(o["outcome"] == "pending" for o in Inventory(inventory_url).outcomes(first_run))
    first.mark_failed()  # what `make run` does before its next run; the scheduler does it on a cluster
    fresh_emulator.faults.reset()

    second = local.start("second", {"manifest": str(path)}, home=first.home)
    assert second.wait() == 0, second.output()[-3000:]
    summary = summary_of(second.run_id(), inventory_url)
    assert summary["accounted"] and summary["provisioned"] == 60 and summary["skipped"] == 0
    adopted = [t for t in summary["registration_tasks"] if t["adopted_from"] == first_run]
    assert adopted, summary["registration_tasks"]
    held = one_certificate_per_thing(iot, inventory_url)
    assert len(held) == 60
    # The first run's rows are reconciled, not left pending; it is marked abandoned, adopted by the second.
    outcomes = Counter(o["outcome"] for o in Inventory(inventory_url).outcomes(first_run))
    assert outcomes["pending"] == 0 and outcomes["provisioned"] >= 1, outcomes
    record = Inventory(inventory_url).run(first_run)
    assert record["state"] == "abandoned" and record["adopted_by"] == second.run_id()
    # One AWS task per unit: the adopted unit's task was followed, not started again.
    tasks = iot.list_thing_registration_tasks()["taskIds"]
    assert len(tasks) == len(summary["registration_tasks"])


def test_two_runs_of_one_manifest_started_together_split_the_devices(
    local, fresh_emulator, inventory_url, tmp_path
):
    iot = fresh_emulator.client("iot")
    path = manifest(tmp_path / "batch.csv", 60, 32_000_000)
    runs = [local.start(name, {"manifest": str(path)}) for name in ("a", "b")]
    for run in runs:
        assert run.wait() == 0, run.output()[-3000:]
    summaries = [summary_of(run.run_id(), inventory_url) for run in runs]
    assert all(s["accounted"] and s["failed"] == 0 for s in summaries), summaries
    assert sum(s["provisioned"] for s in summaries) == 60
    for summary, other in zip(summaries, reversed(summaries), strict=True):
        assert summary["skipped"] == other["provisioned"]
        assert set(summary["skip_reasons"]) <= {"claimed_by_run", "already_provisioned"}
    assert len(one_certificate_per_thing(iot, inventory_url)) == 60


def test_two_manifests_sharing_serials_give_each_shared_device_one_certificate(
    local, fresh_emulator, inventory_url, tmp_path
):
    from scripts.generate_manifest import HEADER

    iot = fresh_emulator.client("iot")
    whole = manifest(tmp_path / "whole.csv", 80, 33_000_000).read_text().splitlines()
    header, rows = whole[0], whole[1:]
    assert header.split(",")[: len(HEADER)] == HEADER
    left, right = tmp_path / "left.csv", tmp_path / "right.csv"
    left.write_text("\n".join([header, *rows[:50]]) + "\n")
    right.write_text("\n".join([header, *rows[30:]]) + "\n")
    shared = serials(left) & serials(right)
    assert len(shared) == 20
    runs = [local.start("left", {"manifest": str(left)}), local.start("right", {"manifest": str(right)})]
    for run in runs:
        assert run.wait() == 0, run.output()[-3000:]
    summaries = [summary_of(run.run_id(), inventory_url) for run in runs]
    assert all(s["accounted"] for s in summaries)
    assert sum(s["provisioned"] for s in summaries) == 80
    assert sum(s["skipped"] for s in summaries) == 20
    held = one_certificate_per_thing(iot, inventory_url)
    assert len(held) == 80
