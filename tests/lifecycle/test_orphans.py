"""What failed bulk lines leave (a line that made its thing, certificate and attachments, then failed):
listed after reconcile and removed in the safe order, or kept and reported when the setting says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include.inventory import Inventory
from include.inventory_schema import devices
from include.lifecycle_orphans import FailedLine, clean_orphans
from include.lifecycle_store import LifecycleStore
from include.summary import render_report
from tests.lifecycle.conftest import provision
from tests.lifecycle.registry import snapshot


def failed_lines(settings: Any) -> list[FailedLine]:
    with Inventory(settings.inventory_url).engine.connect() as connection:
        rows = connection.execute(
            sa.select(devices.c.thing_name, devices.c.certificate_id, devices.c.batch_id).where(
                devices.c.status == "failed"
            )
        )
        return [FailedLine(*row) for row in rows]


def test_reconcile_removes_what_failed_lines_made_and_the_summary_says_so(
    fresh_emulator: Any, tmp_path: Path
) -> None:
    """The default setting (clean), through the stages as the DAG runs them (reconcile_task, summarize)."""
    batch = provision(fresh_emulator, tmp_path, faults={"partial_fail_lines": [2]})
    lines = failed_lines(batch.settings)
    assert batch.summary["failed"] == len(lines) == 2
    orphans = batch.summary["orphans"]
    assert {k: orphans[k] for k in ("policy", "lines", "with_orphans", "cleaned", "kept", "failed")} == {
        "policy": "clean",
        "lines": 2,
        "with_orphans": 2,
        "cleaned": 2,
        "kept": 0,
        "failed": 0,
    }
    account = snapshot(batch.iot)
    assert not {line.thing_name for line in lines} & set(account["things"])
    assert not {line.certificate_id for line in lines} & set(account["certificates"])
    assert len(account["things"]) == len(account["certificates"]) == 10  # the provisioned devices untouched
    report = render_report(batch.summary)
    assert "2 of 2 failed lines had made a certificate or a thing: 2 cleaned up" in report


def test_with_orphans_keep_reconcile_only_reports(fresh_emulator: Any, tmp_path: Path) -> None:
    batch = provision(fresh_emulator, tmp_path, faults={"partial_fail_lines": [2]}, orphans="keep")
    lines = failed_lines(batch.settings)
    assert (batch.summary["orphans"]["policy"], batch.summary["orphans"]["kept"]) == ("keep", 2)
    assert {line.thing_name for line in lines} <= set(snapshot(batch.iot)["things"])


def test_what_failed_lines_made_is_removed_in_the_safe_order(fresh_emulator: Any, tmp_path: Path) -> None:
    batch = provision(fresh_emulator, tmp_path, faults={"partial_fail_lines": [2]}, orphans="keep")
    lines = failed_lines(batch.settings)
    assert batch.summary["failed"] == len(lines) == 2  # line 2 of each registration task (TH-100, GW-200)
    account = snapshot(batch.iot)
    assert all(line.thing_name in account["things"] for line in lines)  # made, then failed: left behind

    inventory = Inventory(batch.settings.inventory_url)
    kept = clean_orphans(batch.iot, lines, inventory=inventory, run_id="manual__look", keep=True)
    assert (kept.policy, kept.with_orphans, kept.kept, kept.cleaned) == ("keep", 2, 2, 0)
    assert snapshot(batch.iot) == account  # kept: reported only
    assert all(any(left.startswith("certificate") for left in r["left"]) for r in kept.resources)

    report = clean_orphans(batch.iot, lines, inventory=inventory, run_id="manual__orphans")
    assert (report.policy, report.with_orphans, report.cleaned, report.failed) == ("clean", 2, 2, 0)
    after = snapshot(batch.iot)
    assert not {line.thing_name for line in lines} & set(after["things"])
    assert not {line.certificate_id for line in lines} & set(after["certificates"])
    assert len(after["things"]) == len(after["certificates"]) == 10  # the provisioned devices untouched
    steps = report.resources[0]["steps"]
    assert [s.split()[0] for s in steps] == ["deactivate", "detach", "detach", "delete", "delete"]

    again = clean_orphans(batch.iot, lines, inventory=inventory, run_id="manual__orphans")
    assert (again.with_orphans, again.calls) == (0, {})  # settled lines are skipped
    actions = {a["thing_name"]: a for a in LifecycleStore(inventory).actions("manual__orphans")}
    assert {a["state"] for a in actions.values()} == {"done"}


def test_a_thing_holding_other_principals_is_kept(fresh_emulator: Any, tmp_path: Path) -> None:
    batch = provision(fresh_emulator, tmp_path, devices=4, faults={"partial_fail_lines": [1]}, orphans="keep")
    line = failed_lines(batch.settings)[0]
    other = batch.iot.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    batch.iot.attach_thing_principal(thingName=line.thing_name, principal=other)

    report = clean_orphans(
        batch.iot, [line], inventory=Inventory(batch.settings.inventory_url), run_id="manual__orphans"
    )
    assert report.cleaned == 1
    assert batch.iot.list_thing_principals(thingName=line.thing_name)["principals"] == [other]
    assert line.certificate_id not in snapshot(batch.iot)["certificates"]


def test_each_unit_reports_and_a_retried_reconcile_changes_nothing(
    fresh_emulator: Any, tmp_path: Path
) -> None:
    from include.lifecycle_orphans import clean_after_reconcile

    batch = provision(fresh_emulator, tmp_path, faults={"partial_fail_lines": [2]})
    reports = batch.summary["orphans"]["reports"]
    assert [key.rsplit("/", 1)[1] for key in reports] == ["GW-200.1.json", "TH-100.1.json"]
    before = snapshot(batch.iot)
    inventory = Inventory(batch.settings.inventory_url)
    for task in inventory.registration_tasks("manual__provision"):
        report = clean_after_reconcile(  # what a retried reconcile task does again
            batch.iot,
            batch.s3,
            inventory=inventory,
            bucket=batch.settings.bucket,
            run_prefix=batch.summary["_batch"].files.prefix,
            run_id="manual__provision",
            unit=task["unit"],
            task_id=task["task_id"],
        )
        assert (report.lines, report.with_orphans, report.cleaned, report.calls) == (1, 0, 0, {})
    assert snapshot(batch.iot) == before
