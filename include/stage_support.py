"""What every pipeline stage shares: the run's settings, the inventory, stage timing, outcome tuples."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from include.inventory import Inventory
from include.records import Batch
from include.settings import Settings


def own_settings(settings: Settings, batch: Batch) -> Settings:
    """The settings of this run: its own product catalog, when it brought one."""
    return replace(settings, catalog_path=batch.catalog) if batch.catalog else settings


def open_inventory(settings: Settings) -> Inventory:
    return Inventory(settings.inventory_url)


@contextlib.contextmanager
def timed(settings: Settings, batch: Batch, stage: str, counter: dict[str, int]) -> Iterator[None]:
    """Record a stage's duration (and device count, set by the stage in `counter`) in the inventory."""
    start = time.perf_counter()
    yield
    open_inventory(settings).record_stage(
        batch.run_id, stage, time.perf_counter() - start, counter.get("devices")
    )


def outcome_tuple(
    row: int, outcome: str, code: str | None = None, reason: str | None = None, **fields: Any
) -> tuple:
    """One row outcome as the inventory's bulk tuple (include.inventory.OUTCOME_FIELDS order)."""
    return (
        row,
        outcome,
        code,
        reason,
        fields.get("model"),
        fields.get("serial_number"),
        fields.get("thing_name"),
        fields.get("unit"),
        fields.get("param_line"),
        fields.get("certificate_id"),
    )
