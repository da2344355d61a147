"""scripts.bench's figures: each stage's rates and CPU beside the floor, the pipeline side, and the table."""

from __future__ import annotations

import os
from typing import Any

from scripts import bench_measure
from scripts.bench_floor import Floor
from scripts.bench_measure import MemoryPeak, Stage


def pipeline_side_figures(
    stages: list[Stage], devices: int, floor_rate: float, memory: MemoryPeak
) -> dict[str, Any]:
    """Wall time of every stage but the emulator's registration, beside the credentials floor on all cores."""
    cores = os.cpu_count() or 1
    seconds = sum(s.seconds for s in stages if not s.name.startswith("register["))
    floor_seconds = devices / (floor_rate * cores)
    return {
        "seconds": round(seconds, 3),
        "cores": cores,
        "credentials_floor_seconds": round(floor_seconds, 3),
        "x_credentials_floor_time": round(seconds / floor_seconds, 3),
        "peak_pss_mb": round(memory.peak / 2**20, 1),
        "peak_rss_mb": round(memory.peak_rss / 2**20, 1),
    }


def figures(stage: Stage, floor: Floor) -> dict[str, Any]:
    floor_rate = floor.per_second * stage.cores
    cpu_us = stage.cpu_seconds / stage.devices * 1e6 if stage.devices else 0.0
    return {
        "stage": stage.name,
        "devices": stage.devices,
        "seconds": round(stage.seconds, 3),
        "devices_per_s": round(stage.per_second, 1),
        "cores": stage.cores,
        "floor_devices_per_s": round(floor_rate, 1),
        "x_floor": round(stage.per_second / floor_rate, 3),
        "cpu_seconds": round(stage.cpu_seconds, 3),
        "cpu_us_per_device": round(cpu_us, 1),
        "floor_us_over_cpu_us": round(floor.per_device_us / cpu_us, 3) if cpu_us else None,
        "emulator_cpu_us_per_device": round(stage.emulator_cpu_seconds / stage.devices * 1e6, 1)
        if stage.devices
        else None,
        **(
            {"server_cpu_us_per_device": round(stage.server_cpu_seconds / stage.devices * 1e6, 1)}
            if bench_measure.COUNT_POSTGRES and stage.devices
            else {}
        ),
    }


def render(
    header: list[str],
    rows_: list[dict[str, Any]],
    floor: Floor,
    csr_floor: Floor | None,
    mix: float | None,
    busy: float,
) -> str:
    lines = list(header)
    lines.append(
        f"crypto floor, 1 core, {floor.devices:,} devices: keygen {floor.keygen_us:.1f} µs + sign "
        f"{floor.sign_us:.1f} µs + PEM {floor.serialise_us:.1f} µs = {floor.per_device_us:.1f} µs/device "
        f"= {floor.per_second:,.0f} devices/s; the same with every core busy: {busy:.1f} µs/device"
    )
    if csr_floor is not None and mix is not None:
        lines.append(
            f"device-CSR floor, 1 core, {csr_floor.devices:,} CSRs: "
            f"parse+verify {csr_floor.keygen_us:.1f} µs "
            f"+ sign {csr_floor.sign_us:.1f} µs + PEM {csr_floor.serialise_us:.1f} µs = "
            f"{csr_floor.per_device_us:.1f} µs/device; this manifest's mix: {mix:,.0f} devices/s per core"
        )
    lines.append("")
    columns = (
        "stage",
        "devices",
        "seconds",
        "devices/s",
        "cores",
        "floor(cores)/s",
        "× floor",
        "CPU µs/device",
        "floor µs/CPU µs",
    )
    table = [columns] + [
        (
            r["stage"],
            f"{r['devices']:,}",
            f"{r['seconds']:.2f}",
            f"{r['devices_per_s']:,.0f}",
            str(r["cores"]),
            f"{r['floor_devices_per_s']:,.0f}",
            f"{r['x_floor']:.2f}",
            f"{r['cpu_us_per_device']:,.1f}",
            f"{r['floor_us_over_cpu_us']:.2f}" if r["floor_us_over_cpu_us"] else "-",
        )
        for r in rows_
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for number, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if number == 0 or number == len(table) - 2:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        "× floor = devices/s ÷ (floor devices/s × cores); floor µs/CPU µs = floor cost ÷ CPU the stage spent "
        "per device (all its processes and threads; unaffected by other load on the machine)"
    )
    return "\n".join(lines)
