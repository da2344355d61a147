"""The pure parts of pre-flight and reconcile: cutting work into chunks and units, matching report lines."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from include.errors import ReconcileError
from include.ledger import LEDGER_SCHEMA, UnitLedger, match_reports
from include.plan import cut_work, plan_dead_run
from include.records import RegistrationUnit
from include.run_files import RunFiles

FILES = RunFiles("bucket", "batches/", "b" * 64, "manual__2026-12-02T10:00:00+00:00")


def test_groups_become_units_of_at_most_unit_lines_and_chunks_of_at_most_chunk_size():
    work = cut_work({"TH-100": list(range(1, 26)), "GW-200": [30, 31]}, FILES, chunk_size=4, unit_lines=10)
    assert [(u.unit, u.lines, u.chunks) for u in work.units] == [
        ("GW-200.1", 2, [0]),
        ("TH-100.1", 10, [1, 2, 3]),
        ("TH-100.2", 10, [4, 5, 6]),
        ("TH-100.3", 5, [7, 8]),
    ]
    assert [c.devices for c in work.chunks] == [2, 4, 4, 2, 4, 4, 2, 4, 1]
    assert work.rows_of_chunk[1] == [1, 2, 3, 4] and work.rows_of_chunk[3] == [9, 10]
    assert all(c.unit.startswith(c.group) for c in work.chunks)
    assert work.chunks[8].label == "chunk 8 (TH-100): 1 devices, rows 25-25"
    # Keys stay inside StartThingRegistrationTask's inputFileKey pattern.
    assert work.units[1].params_key.endswith("/params/TH-100.1.jsonl") and ":" not in work.units[1].params_key
    assert cut_work({}, FILES, chunk_size=4, unit_lines=10).units == []


def _unit(name: str, chunks: list[int]) -> RegistrationUnit:
    return RegistrationUnit(
        unit=name, group="TH-100", part=1, lines=3, chunks=chunks, run_id="dead", params_key="p",
        template_key="t", bucket="bucket", task_id="task-1",
    )  # fmt: skip


def test_a_dead_runs_started_units_are_adopted_and_its_other_claims_taken_or_released():
    claimed = {"A": 1, "B": 2, "C": 3, "D": 9}  # D: a row this run does not provision (e.g. max_devices)
    started = [_unit("TH-100.1", [0]), _unit("TH-100.2", [1])]
    rows_in_unit = {"TH-100.1": [1, 2], "TH-100.2": [7]}  # unit 2 was reconciled: its device is not claimed
    plan = plan_dead_run("dead", claimed, started, rows_in_unit, wanted_rows={1, 2, 3, 4})
    assert [u.unit for u in plan.adopt] == ["TH-100.1"] and plan.adopt[0].adopted_from == "dead"
    assert plan.adopted_rows == {1: "TH-100.1", 2: "TH-100.1"}
    assert plan.take_over == [3] and plan.give_up == ["D"]


def _ledger(lines: list[bytes]) -> UnitLedger:
    table = pa.table(
        {
            "row": [10, 11, 12],
            "thing_name": ["T-1", "T-2", "T-3"],
            "model": ["TH-100"] * 3,
            "serial_number": ["1", "2", "3"],
            "certificate_id": ["a" * 64, "b" * 64, "c" * 64],
            "issuer": ["ca"] * 3,
            "bytes": [len(line) for line in lines],
        },
        schema=LEDGER_SCHEMA,
    )
    return UnitLedger.of([table.slice(0, 2), table.slice(2)])


def test_report_lines_are_matched_to_ledger_lines_and_unreported_lines_fail():
    ledger = _ledger([b"x" * 70, b"y" * 70, b"z" * 70])
    assert ledger.offsets == [70, 140, 210]
    arns = {"thing": "arn:aws:iot:r:1:thing/T-1", "certificate": "arn:aws:iot:r:1:cert/" + "d" * 64}
    ok = {"errorMessage": None, "lineNumber": 1, "offset": 70, "response": {"ResourceArns": arns}}
    error = {
        "errorMessage": "com.amazonaws.services.iot.model.InvalidRequestException: no. (Service: AWSIot; "
        "Status Code: 400; Error Code: InvalidRequestException; Request ID: x; Proxy: null)",
        "lineNumber": 2,
        "offset": 141,
        "response": None,
    }
    matched = match_reports(
        ledger, [orjson.dumps(ok), orjson.dumps(ok)], [orjson.dumps(error)], task_id="t", status="Completed"
    )
    assert matched.outcomes == ["provisioned", "failed", "failed"]
    assert matched.codes == [None, "InvalidRequestException", "NoReportLine"]
    assert matched.reasons[1] == "no." and "parameter line 3" in matched.reasons[2]
    assert matched.certificate_ids[0] == "d" * 64 and matched.certificate_ids[1] == "b" * 64
    assert matched.thing_arns[0].endswith("thing/T-1") and matched.offset_mismatches == 1
    assert matched.counts == {"provisioned": 1, "failed": 2}


def test_a_report_naming_a_line_outside_the_ledger_is_an_error():
    ledger = _ledger([b"x", b"y", b"z"])
    with pytest.raises(ReconcileError, match="lineNumber 4"):
        match_reports(ledger, [b'{"lineNumber": 4}'], [], task_id="t", status="Completed", params_key="p")
    with pytest.raises(ReconcileError, match="not a bulk-registration report record"):
        match_reports(ledger, [b"hello"], [], task_id="t", status="Completed")
