"""The row ledger of a registration unit, and report lines matched to it (pure functions, no I/O).

A chunk's ledger has one row per issued device in parameter-file order: manifest row, thing, model, serial,
certificate id and the byte length of its parameter line. A unit's ledger is its chunks' ledgers in order;
the 1-based line number and the end-of-line byte offset AWS reports (lineNumber, offset) follow from that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate

import orjson
import pyarrow as pa

from include.errors import ReconcileError
from include.outcomes import FAILED, NO_REPORT_LINE, PROVISIONED
from include.reports import parse_error_message

LEDGER_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("thing_name", pa.string()),
        ("model", pa.string()),
        ("serial_number", pa.string()),
        ("certificate_id", pa.string()),  # "" when the signer is AWS (known from the report)
        ("issuer", pa.string()),  # the CA certificate id, the ACM PCA's ARN, or "aws"
        ("bytes", pa.int64()),
    ]
)


@dataclass
class UnitLedger:
    """A unit's ledger as plain columns (index i = parameter line i + 1)."""

    rows: list[int]
    thing_names: list[str]
    models: list[str]
    serials: list[str]
    certificate_ids: list[str]
    issuers: list[str]
    offsets: list[int]  # end-of-line byte offset of each line

    @classmethod
    def of(cls, chunk_ledgers: Iterable[pa.Table]) -> UnitLedger:
        table = pa.concat_tables([t.select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA) for t in chunk_ledgers])
        return cls(
            rows=table.column("row").to_pylist(),
            thing_names=table.column("thing_name").to_pylist(),
            models=table.column("model").to_pylist(),
            serials=table.column("serial_number").to_pylist(),
            certificate_ids=table.column("certificate_id").to_pylist(),
            issuers=table.column("issuer").to_pylist(),
            offsets=list(accumulate(table.column("bytes").to_pylist())),
        )

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Matched:
    """Per ledger line: outcome, reason code and sentence, and the ARNs AWS reported."""

    outcomes: list[str]
    codes: list[str | None]
    reasons: list[str | None]
    thing_arns: list[str | None]
    certificate_ids: list[str | None]
    certificate_arns: list[str | None]
    certificate_pems: dict[int, str] = field(default_factory=dict)  # line index -> PEM (keep_pems only)
    offset_mismatches: int = 0
    reported: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def match_reports(
    ledger: UnitLedger,
    results: Iterable[bytes | str],
    errors: Iterable[bytes | str],
    *,
    task_id: str | None,
    status: str,
    message: str = "",
    params_key: str = "",
    keep_pems: bool = False,
) -> Matched:
    """Every ledger line's outcome from the RESULTS and ERRORS lines; a line in neither is failed, not lost.

    A line reported twice keeps its first report; a lineNumber outside the ledger is an error naming it.
    With `keep_pems`, the certificate PEMs of the RESULTS lines are kept (AWS signed them: the factory
    line gets them from the report).
    """
    size = len(ledger)
    outcomes: list[str | None] = [None] * size
    codes: list[str | None] = [None] * size
    reasons: list[str | None] = [None] * size
    thing_arns: list[str | None] = [None] * size
    certificate_ids: list[str | None] = list(ledger.certificate_ids)
    certificate_arns: list[str | None] = [None] * size
    pems: dict[int, str] = {}
    mismatches = reported = 0
    for kind, lines in (("results", results), ("errors", errors)):
        for raw in lines:
            if not raw or not raw.strip():
                continue
            record = _record(raw)
            index = record["lineNumber"] - 1
            if not 0 <= index < size:
                raise ReconcileError(
                    f"{kind} report of task {task_id} names lineNumber {record['lineNumber']}, but parameter "
                    f"file {params_key} has lines 1-{size}"
                )
            if outcomes[index] is not None:
                continue
            reported += 1
            offset = record.get("offset")
            if offset is not None and int(offset) != ledger.offsets[index]:
                mismatches += 1
            message_text = record.get("errorMessage")
            if kind == "results" and not message_text:
                response = record.get("response") or {}
                arns = response.get("ResourceArns") or {}
                if keep_pems and response.get("CertificatePem"):
                    pems[index] = response["CertificatePem"]
                outcomes[index] = PROVISIONED
                thing_arns[index] = arns.get("thing") or next(
                    (a for a in arns.values() if ":thing/" in a), None
                )
                certificate_arn = arns.get("certificate") or next(
                    (a for a in arns.values() if ":cert/" in a), None
                )
                certificate_arns[index] = certificate_arn
                if certificate_arn:
                    certificate_ids[index] = certificate_arn.rsplit("/", 1)[-1]
            else:
                code, text = (
                    parse_error_message(message_text)
                    if message_text
                    else ("UnknownError", "the report line carries no error message")
                )
                outcomes[index], codes[index], reasons[index] = FAILED, code, text
    missing = f"registration task {task_id} ended {status} without reporting parameter line "
    suffix = f": {message}" if message else ""
    for index, outcome in enumerate(outcomes):
        if outcome is None:
            outcomes[index], codes[index] = FAILED, NO_REPORT_LINE
            reasons[index] = f"{missing}{index + 1}{suffix}"
    final = [o for o in outcomes if o is not None]
    return Matched(
        outcomes=final,
        codes=codes,
        reasons=reasons,
        thing_arns=thing_arns,
        certificate_ids=certificate_ids,
        certificate_arns=certificate_arns,
        certificate_pems=pems,
        offset_mismatches=mismatches,
        reported=reported,
        counts={PROVISIONED: final.count(PROVISIONED), FAILED: final.count(FAILED)},
    )


def _record(raw: bytes | str) -> dict:
    try:
        record = orjson.loads(raw)
        record["lineNumber"] = int(record["lineNumber"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        shown = raw[:120] if isinstance(raw, str) else raw[:120].decode("utf-8", "replace")
        raise ReconcileError(f"report line is not a bulk-registration report record: {shown!r}") from None
    return record
