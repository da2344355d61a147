"""Typed records the lifecycle and audit tasks pass each other through XCom (small: counts and keys)."""

from __future__ import annotations

from include.records import Record


class DeviceChunk(Record):
    """A slice of the devices of a lifecycle run or an audit: one mapped task."""

    index: int
    devices: int
    first: str
    last: str
    key: str

    @property
    def label(self) -> str:
        return f"chunk {self.index}: {self.devices} devices, {self.first} .. {self.last}"


class LifecyclePlan(Record):
    """What a manage_devices run does: the action on the selected devices, cut into chunks."""

    run_id: str
    action: str
    dry_run: bool
    selection: dict[str, object]
    reason: str
    rate_limit: float | None
    parallel_chunks: int = 1  # chunk tasks that may run at once (the DAG's max_active_tis_per_dagrun)
    csr_source: str | None = None
    devices: int
    chunks: list[DeviceChunk]
    plan_key: str

    def chunk_rate(self) -> float | None:
        """Each chunk's share of the run's request rate (at most `parallel_chunks` run at a time)."""
        if self.rate_limit is None:
            return None
        return self.rate_limit / max(1, min(self.parallel_chunks, len(self.chunks)))


class ChunkActions(Record):
    """What one lifecycle chunk did (or, in a dry run, would do)."""

    index: int
    devices: int
    done: int = 0
    unchanged: int = 0
    failed: int = 0
    planned: int = 0
    resumed: int = 0  # devices a died try of this chunk had finished: not touched again
    retries: int = 0
    calls: dict[str, int] = {}


class AuditPlan(Record):
    """What an audit compares: the inventory's devices in scope (chunked) and where it looks for unknowns."""

    run_id: str
    batch_id: str | None
    repair: bool
    devices: int
    chunks: list[DeviceChunk]
    plan_key: str


class ChunkDrift(Record):
    """The differences one audit chunk found (the rows are in its drift file)."""

    index: int
    devices: int
    differences: int
    kinds: dict[str, int] = {}
    key: str
    calls: dict[str, int] = {}
