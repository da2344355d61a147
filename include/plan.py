"""Pre-flight decisions as pure functions: which rows a run provisions, and how they are cut into work.

A registration unit is what one StartThingRegistrationTask registers: at most `unit_lines` consecutive devices
of one group (one product). A chunk is what one credentials task issues: at most `chunk_size` devices of one
unit. So a million-device group becomes ten resumable AWS tasks of 100,000 lines, each fed by twenty chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from include.records import Chunk, RegistrationUnit
from include.run_files import RunFiles


@dataclass(frozen=True)
class Work:
    """The chunks to issue and the units they feed, for one run."""

    chunks: list[Chunk]
    units: list[RegistrationUnit]
    rows_of_chunk: dict[int, list[int]]  # chunk index -> manifest rows, in parameter-file order


def unit_name(group: str, part: int) -> str:
    return f"{group}.{part}"


def cut_work(
    rows_by_group: Mapping[str, Sequence[int]],
    files: RunFiles,
    *,
    chunk_size: int,
    unit_lines: int,
) -> Work:
    """Chunks and units for the rows of each group (rows in manifest order; groups in name order)."""
    if chunk_size < 1 or unit_lines < 1:
        raise ValueError("chunk_size and unit_lines must be at least 1")
    chunks: list[Chunk] = []
    units: list[RegistrationUnit] = []
    rows_of_chunk: dict[int, list[int]] = {}
    for group in sorted(rows_by_group):
        rows = list(rows_by_group[group])
        for part, unit_start in enumerate(range(0, len(rows), unit_lines), start=1):
            unit_rows = rows[unit_start : unit_start + unit_lines]
            name = unit_name(group, part)
            indexes = []
            for start in range(0, len(unit_rows), chunk_size):
                part_rows = unit_rows[start : start + chunk_size]
                index = len(chunks)
                chunks.append(
                    Chunk(
                        index=index,
                        group=group,
                        unit=name,
                        devices=len(part_rows),
                        first_row=part_rows[0],
                        last_row=part_rows[-1],
                    )
                )
                rows_of_chunk[index] = part_rows
                indexes.append(index)
            units.append(
                RegistrationUnit(
                    unit=name,
                    group=group,
                    part=part,
                    lines=len(unit_rows),
                    chunks=indexes,
                    run_id=files.run_id,
                    params_key=files.params(name),
                    template_key=files.template(group),
                    bucket=files.bucket,
                )
            )
    return Work(chunks=chunks, units=units, rows_of_chunk=rows_of_chunk)


@dataclass(frozen=True)
class DeadRunPlan:
    """What a run does with the devices a dead run of the same batch claimed."""

    adopt: list[RegistrationUnit]  # units the dead run started (or may have): resumed, never issued again
    adopted_rows: dict[int, str]  # manifest row -> adopted unit
    take_over: list[int]  # rows the dead run claimed but never registered: this run issues them
    give_up: list[str]  # thing names the dead run claimed that this run does not provision: released


def plan_dead_run(
    dead_run: str,
    claimed: Mapping[str, int],
    started_units: Sequence[RegistrationUnit],
    rows_in_unit: Mapping[str, Sequence[int]],
    wanted_rows: set[int],
) -> DeadRunPlan:
    """Split a dead run's claims (thing name -> its manifest row) between its started units and the rest.

    `started_units` are the units it recorded an intent or a task for; `rows_in_unit` the manifest rows its
    ledgers put in each; `wanted_rows` the rows this run accepted.
    """
    still_claimed = set(claimed.values())
    adopted_rows: dict[int, str] = {}
    adopt = []
    for unit in started_units:
        rows = [row for row in rows_in_unit.get(unit.unit, ()) if row in still_claimed]
        if not rows:  # reconciled before the run died: nothing left to resume
            continue
        adopt.append(unit.model_copy(update={"adopted_from": dead_run}))
        adopted_rows.update((row, unit.unit) for row in rows)
    take_over = sorted(row for row in claimed.values() if row not in adopted_rows and row in wanted_rows)
    give_up = sorted(
        name for name, row in claimed.items() if row not in adopted_rows and row not in wanted_rows
    )
    return DeadRunPlan(adopt=adopt, adopted_rows=adopted_rows, take_over=take_over, give_up=give_up)
