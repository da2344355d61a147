"""The inventory on SQLite and PostgreSQL: claims are atomic, writes idempotent, provisioned never demoted."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from include.errors import InventoryError
from include.inventory import Inventory
from include.inventory_schema import dispose_engines
from include.outcomes import CLAIMED, PENDING, PROVISIONED, SKIPPED

BATCH = "b" * 64


def _requests(count: int, first: int = 1, prefix: str = "TH-100-") -> list[tuple[str, int, str, str]]:
    return [(f"{prefix}{n}", n, "TH-100", str(n)) for n in range(first, first + count)]


def _device(name: str, status: str, row: int = 1) -> tuple:
    cert = "c" * 64 if status == PROVISIONED else None
    fields = (name, "TH-100", name.rsplit("-", 1)[-1], status, "arn:thing", cert, None, "ca-1", row, "task")
    return (*fields, None, None)


def _result(row: int) -> tuple:
    """A provisioned device's reconciled result (RESULT_FIELDS without unit and line)."""
    return (
        f"TH-100-{row}",
        "TH-100",
        str(row),
        PROVISIONED,
        "arn:thing",
        "c" * 64,
        "arn:cert",
        "ca",
        row,
        "t",
        None,
        None,
    )


def test_batches_and_runs(inventory_url):
    inventory = Inventory(inventory_url)
    assert inventory.record_batch("a" * 64, "s3://b/k", "batches/a/manifest.csv", 10) is True
    assert inventory.record_batch("a" * 64, "s3://b/k", "batches/a/manifest.csv", 10) is False
    assert inventory.batch_known("a" * 64) and not inventory.batch_known("c" * 64)
    for _ in range(2):
        inventory.record_run(
            "r1", "a" * 64, "s3://b/k", dag_id="d", product=None, dry_run=True, max_devices=5
        )
    assert inventory.count("runs") == 1 and inventory.run("r1")["dry_run"] is True
    assert inventory.run("r1")["state"] == "running"
    inventory.record_stage("r1", "validate", 0.25, 10)
    inventory.record_stage("r1", "validate", 0.5, 10)
    assert inventory.stage_timings("r1") == [{"stage": "validate", "seconds": 0.5, "devices": 10}]
    inventory.fail_run("r2", "missing.csv", "SourceError: cannot read manifest file missing.csv")
    assert inventory.run("r2")["state"] == "failed" and "missing.csv" in inventory.run("r2")["error"]


def test_claims_decide_who_provisions_each_device(inventory_url):
    inventory = Inventory(inventory_url)
    assert inventory.claim("r1", BATCH, _requests(5)) == {}
    assert set(inventory.claimed_by("r1")) == {f"TH-100-{n}" for n in range(1, 6)}
    # Claiming again (a retried pre-flight) is idempotent; another run gets none of them, told why.
    assert inventory.claim("r1", BATCH, _requests(5)) == {}
    held = inventory.claim("r2", BATCH, _requests(6))
    assert sorted(held) == [1, 2, 3, 4, 5] and {h.run_id for h in held.values()} == {"r1"}
    assert all(h.status == CLAIMED for h in held.values())
    outcomes = {o["manifest_row"]: o for o in inventory.outcomes("r2")}
    assert outcomes[6]["outcome"] == PENDING and outcomes[1]["outcome"] == SKIPPED
    assert outcomes[1]["reason_code"] == "claimed_by_run" and "r1" in outcomes[1]["reason"]
    # Provisioned devices are skipped; failed ones may be claimed again.
    inventory.record_devices(
        "r1", BATCH, [_device("TH-100-1", PROVISIONED, 1), _device("TH-100-2", "failed", 2)]
    )
    held = inventory.claim("r3", BATCH, _requests(2))
    assert list(held) == [1] and held[1].status == PROVISIONED
    assert (
        inventory.device("TH-100-2")["status"] == CLAIMED and inventory.device("TH-100-2")["run_id"] == "r3"
    )
    outcomes = {o["manifest_row"]: o for o in inventory.outcomes("r3")}
    assert outcomes[1]["reason_code"] == "already_provisioned" and outcomes[2]["outcome"] == PENDING


def test_dry_run_claims_nothing(inventory_url):
    inventory = Inventory(inventory_url)
    inventory.claim("r1", BATCH, _requests(2))
    held = inventory.claim("dry", BATCH, _requests(3), dry_run=True)
    assert sorted(held) == [1, 2]
    assert set(inventory.claimed_by("r1")) == {"TH-100-1", "TH-100-2"} and inventory.claimed_by("dry") == {}
    assert inventory.device("TH-100-3") is None
    assert [o["outcome"] for o in inventory.outcomes("dry")] == [SKIPPED, SKIPPED, PENDING]


def test_transfer_and_release_move_only_claims_the_run_still_holds(inventory_url):
    inventory = Inventory(inventory_url)
    inventory.claim("dead", BATCH, _requests(4))
    inventory.record_devices("dead", BATCH, [_device("TH-100-4", PROVISIONED, 4)])
    assert inventory.transfer_claims("dead", "new", ["TH-100-1", "TH-100-2", "TH-100-4"]) == 2
    assert inventory.release_claims("dead", ["TH-100-3", "TH-100-1"]) == 1
    assert inventory.claimed_by("new") == {"TH-100-1": 1, "TH-100-2": 2}
    assert inventory.claimed_by("dead") == {} and inventory.device("TH-100-3") is None
    assert inventory.device("TH-100-4")["status"] == PROVISIONED


def test_a_device_known_under_another_name_is_not_claimed_twice(inventory_url):
    inventory = Inventory(inventory_url)
    inventory.claim("r1", BATCH, [("old-name-7", 1, "TH-100", "7")])
    held = inventory.claim("r2", BATCH, [("TH-100-7", 1, "TH-100", "7"), ("TH-100-8", 2, "TH-100", "8")])
    assert held[1].other_name == "old-name-7" and 2 not in held
    assert inventory.device("TH-100-7") is None and inventory.device("TH-100-8")["status"] == CLAIMED
    outcomes = {o["manifest_row"]: o for o in inventory.outcomes("r2")}
    assert outcomes[1]["reason_code"] == "known_under_other_name" and outcomes[2]["outcome"] == PENDING
    inventory.claim("r3", BATCH, [("TH-100-7", 1, "TH-100", "7")], dry_run=True)
    assert next(inventory.outcomes("r3"))["reason_code"] == "known_under_other_name"


def test_two_runs_claiming_at_once_split_the_devices(inventory_url):
    """Claims race in threads with their own connections: every device has exactly one holder."""
    Inventory(inventory_url)  # tables first
    requests = _requests(3000)
    lost: dict[str, dict[int, object]] = {}
    barrier = threading.Barrier(2)

    def claim(run: str) -> None:
        inventory = Inventory(inventory_url)
        barrier.wait()
        lost[run] = inventory.claim(run, BATCH, list(reversed(requests)) if run == "b" else requests)

    threads = [threading.Thread(target=claim, args=(run,)) for run in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    inventory = Inventory(inventory_url)
    won = {run: set(inventory.claimed_by(run)) for run in ("a", "b")}
    assert not won["a"] & won["b"]
    assert len(won["a"]) + len(won["b"]) == 3000
    assert len(lost["a"]) == len(won["b"]) and len(lost["b"]) == len(won["a"])


def test_device_results_never_demote_a_provisioned_device(inventory_url):
    inventory = Inventory(inventory_url)
    inventory.claim("r1", BATCH, _requests(1))
    inventory.record_devices("r1", BATCH, [_device("TH-100-1", PROVISIONED)])
    first = inventory.device("TH-100-1")
    assert first["provisioned_at"] is not None and first["certificate_id"] == "c" * 64
    inventory.record_devices("r2", BATCH, [_device("TH-100-1", "failed")])
    assert inventory.device("TH-100-1")["status"] == PROVISIONED
    assert inventory.device("TH-100-1")["run_id"] == "r1"


def test_reconciled_results_reach_every_real_run_of_the_batch_with_the_row_pending(inventory_url):
    inventory = Inventory(inventory_url)
    for run, batch, dry in (
        ("dead", BATCH, False),
        ("new", BATCH, False),
        ("dry", BATCH, True),
        ("x", "b2", False),
    ):
        inventory.record_run(run, batch, "m.csv", dry_run=dry)
        inventory.record_outcomes(
            run,
            batch,
            [
                (1, PENDING, None, None, "TH-100", "1", "TH-100-1", None, None, None),
                (2, PENDING, None, None, "TH-100", "2", "TH-100-2", None, None, None),
            ],
        )
    result = _result(1)
    inventory.record_results("new", BATCH, [(*result, "TH-100.1", 1)])
    assert inventory.device("TH-100-1")["status"] == PROVISIONED
    outcome = {run: next(inventory.outcomes(run)) for run in ("dead", "new", "dry", "x")}
    assert outcome["dead"]["outcome"] == outcome["new"]["outcome"] == PROVISIONED
    assert outcome["new"]["unit"] == "TH-100.1" and outcome["new"]["thing_name"] == "TH-100-1"
    assert outcome["dry"]["outcome"] == outcome["x"]["outcome"] == PENDING  # a dry run, another batch
    assert {o["manifest_row"]: o["outcome"] for o in inventory.outcomes("new")}[2] == PENDING  # not reported
    settled = (*result[:3], "failed", *result[4:])
    inventory.record_results("new", BATCH, [(*settled, "TH-100.1", 1)])  # a settled row stays as it is
    assert next(inventory.outcomes("new"))["outcome"] == PROVISIONED


def _open_when_all_are_ready(url: str, ready: Any, batch_id: str) -> None:
    ready.wait()
    Inventory(url).record_batch(batch_id, "manifest", f"manifests/{batch_id}.csv", 1)


def test_processes_opening_a_new_inventory_at_once_all_get_it(inventory_url, tmp_path):
    """Airflow tasks of one run start together and each opens the inventory; the first opening creates it."""
    spawn = multiprocessing.get_context("spawn")
    for round_ in range(3):
        url = inventory_url.replace("inventory.db", f"inventory-{round_}.db")
        ready = spawn.Barrier(4)
        batches = [f"{round_}{opener}" * 32 for opener in range(4)]
        openers = [spawn.Process(target=_open_when_all_are_ready, args=(url, ready, b)) for b in batches]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(timeout=120)
        assert [opener.exitcode for opener in openers] == [0, 0, 0, 0], f"round {round_}"
        assert all(Inventory(url).batch_known(batch) for batch in batches)


def test_an_inventory_of_an_earlier_schema_is_refused_with_what_to_do(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("create table devices (thing_name text primary key)"))
    engine.dispose()
    dispose_engines()
    with pytest.raises(InventoryError, match="earlier schema"):
        Inventory(url)


def test_known_names_are_exactly_the_recorded_ones_however_the_batch_spans_the_inventory(inventory_url):
    from include.lifecycle_store import LifecycleStore

    inventory = Inventory(inventory_url)
    inventory.claim("r1", BATCH, _requests(50))  # TH-100-1 .. TH-100-50
    inventory.claim("r2", BATCH, [("TH-100-é", 900, "TH-100", "e9"), ("TH-100-Z", 901, "TH-100", "Z")])
    store = LifecycleStore(inventory)
    # A batch that is one contiguous run of names (read as an index range on SQLite).
    asked = [f"TH-100-{n}" for n in range(1, 61)] + ["TH-100-é", "TH-100-ë", "TH-100-Z"]
    expected = {f"TH-100-{n}" for n in range(1, 51)} | {"TH-100-é", "TH-100-Z"}
    assert store.known_names(asked) == expected
    assert store.known_names(reversed(asked)) == expected  # order and duplicates do not matter
    assert store.known_names(asked + asked) == expected
    # Three names whose range holds hundreds of other devices: staged and joined instead.
    inventory.claim("r3", BATCH, _requests(500, first=2000))
    assert store.known_names(["TH-100-1", "TH-100-9", "TH-100-x"]) == {"TH-100-1", "TH-100-9"}
    assert store.known_names([]) == set()


def test_outcome_updates_find_their_rows_by_key_not_by_walking_the_run(tmp_path):
    """On SQLite each staged row finds its outcome by primary key: a unit's reconcile, or a chunk's few
    refused devices, cost their own rows, not every row of a million-row run."""
    inventory = Inventory(f"sqlite:///{tmp_path / 'inventory.db'}")
    inventory.record_run("r1", BATCH, "m.csv")
    inventory.claim("r1", BATCH, _requests(200))
    plans: list[str] = []

    @sa.event.listens_for(inventory.engine, "before_cursor_execute")
    def explain(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE ROW_OUTCOMES"):
            plan = cursor.connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
            plans.append(plan[0][3])

    refused = (5, "quarantined", "CsrInvalid", "bad CSR", "TH-100", "5", "TH-100-5", None, None, None)
    inventory.set_outcomes("r1", [refused])
    result = _result(6)
    inventory.record_results("r1", BATCH, [(*result, "TH-100.1", 1)])
    sa.event.remove(inventory.engine, "before_cursor_execute", explain)
    assert len(plans) == 2
    for plan in plans:
        assert plan.startswith("SEARCH row_outcomes USING INDEX sqlite_autoindex_row_outcomes_1"), plan
        assert "(run_id=? AND manifest_row=?)" in plan
    outcomes = {o["manifest_row"]: o for o in inventory.outcomes("r1")}
    assert (outcomes[5]["outcome"], outcomes[5]["reason_code"]) == ("quarantined", "CsrInvalid")
    assert outcomes[6]["outcome"] == PROVISIONED and outcomes[7]["outcome"] == PENDING
