"""10,000 entries in one POST /bulkthings go through the pipeline; GET reports it; the inventory has all."""

from __future__ import annotations

import time

import sqlalchemy as sa

from include.inventory_schema import engine_for

ENTRIES = 10_000


def test_ten_thousand_things_in_one_request(cdf_api) -> None:
    entries = [{"ThingName": f"tenk-{i:05d}", "SerialNumber": f"TENK-{i:05d}"} for i in range(ENTRIES)]
    started_at = time.monotonic()
    response = cdf_api.call(
        "POST", "/bulkthings", {"provisioningTemplateId": "cdf-own-ca", "parameters": entries}
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["taskId"]
    seen = set()
    while True:
        found = cdf_api.call("GET", f"/bulkthings/{task_id}").json()
        seen.add((found["status"], found["percentageProgress"]))
        if found["status"] in ("Completed", "Failed") or time.monotonic() - started_at > 480:
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started_at
    assert found["status"] == "Completed", found
    assert found["successCount"] == ENTRIES and found["failureCount"] == 0
    assert found["percentageProgress"] == 100 and found["rows"] == ENTRIES
    progress = [p for _, p in sorted(seen, key=lambda s: s[1])]
    assert progress[0] < 100  # it was seen on its way
    engine = engine_for(cdf_api.settings.inventory_url)
    with engine.connect() as connection:
        devices = connection.execute(
            sa.text("SELECT count(*) FROM devices WHERE run_id = :r AND status = 'provisioned'"),
            {"r": task_id},
        ).scalar()
        outcomes = connection.execute(
            sa.text("SELECT count(*) FROM row_outcomes WHERE run_id = :r AND outcome = 'provisioned'"),
            {"r": task_id},
        ).scalar()
    assert devices == ENTRIES and outcomes == ENTRIES
    assert cdf_api.iot.describe_thing(thingName="tenk-09999")["thingName"] == "tenk-09999"
    print(f"{ENTRIES} things in {elapsed:.1f} s")
