"""Typed records the stages pass each other (through XCom as plain JSON: ``to_xcom`` / ``of``)."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from include.run_files import RunFiles


class Record(BaseModel):
    """Frozen, strict about unknown fields, JSON-safe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def of(cls, value: Self | dict[str, Any]) -> Self:
        """The record itself, or one rebuilt from its XCom form."""
        return value if isinstance(value, cls) else cls.model_validate(value)

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Batch(Record):
    """One run of one manifest (the batch is the manifest's content, keyed by its SHA-256)."""

    batch_id: str
    run_id: str
    dag_id: str | None = None
    source: str
    bucket: str
    work_prefix: str
    product: str | None = None
    catalog: str | None = (
        None  # a product catalog of this run's own (CDF-derived products); None: the settings'
    )
    dry_run: bool = False
    max_devices: int | None = None
    new_batch: bool = True
    bytes: int = 0

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.bucket, self.work_prefix, self.batch_id, self.run_id)

    def files_of(self, run_id: str) -> RunFiles:
        """The files of another run of the same batch (an adopted registration)."""
        return RunFiles(self.bucket, self.work_prefix, self.batch_id, run_id)


class Validated(Record):
    """What validation found; the rows themselves are in the accepted and quarantine files."""

    rows: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    ignored_columns: list[str]
    accepted_key: str
    quarantine_key: str


class Chunk(Record):
    """A slice of one registration unit's devices: one mapped credentials task."""

    index: int
    group: str
    unit: str
    devices: int
    first_row: int
    last_row: int

    @property
    def label(self) -> str:
        rows = f"rows {self.first_row}-{self.last_row}"
        return f"chunk {self.index} ({self.group}): {self.devices} devices, {rows}"


class RegistrationUnit(Record):
    """One bulk registration task: consecutive chunks of one group, whose files belong to run `run_id`.

    ``adopted_from`` is set when this run resumes the unit of an earlier run of the same batch that died: the
    parameter file, ledgers and AWS task are that run's; nothing is issued again.
    """

    unit: str
    group: str
    part: int
    lines: int
    chunks: list[int]
    run_id: str
    params_key: str
    template_key: str
    bucket: str
    adopted_from: str | None = None
    task_id: str | None = None

    @property
    def label(self) -> str:
        return self.unit + (f" (resumed from {self.adopted_from})" if self.adopted_from else "")


class Checks(Record):
    """The pre-flight verdict and plan."""

    accepted: int
    to_provision: int
    skipped: int
    adopted: int
    chunks: list[Chunk]
    units: list[RegistrationUnit]
    report_key: str
    dry_run: bool
    problems: list[str]


class ChunkResult(Record):
    """What one credentials chunk produced (counts and keys only: never key material)."""

    index: int
    unit: str
    devices: int
    issued: int
    refused: int
    bundle_key: str | None
    params_bytes: int


class Registration(Record):
    """The state of one AWS thing registration task (DescribeThingRegistrationTask, trimmed)."""

    task_id: str
    status: str
    success_count: int = 0
    failure_count: int = 0
    percentage_progress: int = 0
    message: str = ""


class Reconciled(Record):
    """What one unit's reports said, row by row, folded into counts."""

    unit: str
    task_id: str | None
    provisioned: int
    failed: int
    offset_mismatches: int
