"""`make bench`: devices/s of each pipeline stage on the emulator, beside the crypto floor of the same run.

Generates one manifest of N devices (TH-100 with pipeline-made keys, plus the default share of GW-200 with
device CSRs), starts the emulator in a process of its own on a free loopback port, bootstraps the account into
a temporary state dir, then calls the stages of include/pipeline.py directly and in order: intake, validate,
preflight, credentials per chunk (one after another on settings.workers processes, or --slots at a time),
parameter files, one bulk registration task per unit (include.registration, as the register operator),
reconcile, summary. Airflow is not used: scheduling costs per task, not per device. The floor (ECDSA P-256
key generation + one raw signature over a TBS of the real size + PEM of key and certificate) is timed on
one core in the same process, and every stage is compared with it times the cores that stage uses. The
pipeline side (every stage but the emulator's registration) is set beside the credentials floor time on
all cores, and the peak memory of all processes is sampled.

    python -m scripts.bench [--devices N] [--workers W] [--slots S] [--chunk-size C] [--keep]
                            [--inventory POSTGRESQL_URL] [--profile STAGE ...]

--inventory keeps the inventory on PostgreSQL, in a schema of its own dropped at the end; a server on this
machine has its processes' CPU counted in every stage's (they do the inventory's work), printed apart too.

--slots 2 runs two credentials tasks at a time, each in a process of its own issuing its chunk on
cores/2 processes (inline on 2 cores), as `make cluster`'s two Celery workers of concurrency 1 do; the
default runs them one after another on all cores, as `make run` does.

The emulator's CPU is not the pipeline's (it stands for AWS), but here it runs on the same cores: it is
printed apart per stage (`emulator_cpu_us_per_device` in the JSON line), which tells how much of a stage's
wall time went to it.

--profile prints cProfile's top functions by CPU time, of this process (not the credential workers), for
each stage whose name starts with STAGE, to stderr.

Progress goes to stderr; stdout gets the table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import psutil
import sqlalchemy as sa

from include import pipeline, registration
from include.credentials import MIN_DEVICES_PER_WORKER
from include.inventory import Inventory
from include.inventory_schema import dispose_engines, scratch_schema
from include.settings import Settings
from scripts import bench_measure
from scripts.bench_floor import busy_floor, device_csr_floor, own_key_floor
from scripts.bench_measure import (
    EXCLUDED_PIDS,
    MemoryPeak,
    Stage,
    Stopwatch,
    cpu_seconds,
    emulator_cpu_seconds,
    machine,
    note,
    server_cpu_seconds,
)
from scripts.bench_report import figures, pipeline_side_figures, render
from scripts.bootstrap import bootstrap
from scripts.generate_manifest import HEADER, rows
from scripts.run_local import emulator

REGION = "us-east-1"
FLOOR_DEVICES = 5000
CSR_FLOOR_DEVICES = 1000
REGISTRATION_TIMEOUT = 3600.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", None)


def write_manifest(
    path: Path, devices: int, gw_share: float, bad_rows: int, seed: int
) -> tuple[Counter, list[str]]:
    """Write the manifest; returns rows per model and up to CSR_FLOOR_DEVICES device CSRs (CSR floor)."""
    models: Counter = Counter()
    csrs: list[str] = []
    model_at, csr_at = HEADER.index("model"), HEADER.index("csr")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for index, cells in enumerate(rows(devices, bad_rows, gw_share, seed)):
            writer.writerow(cells)
            models[cells[model_at]] += 1
            if cells[model_at] == "GW-200" and cells[csr_at] and len(csrs) < CSR_FLOOR_DEVICES:
                csrs.append(cells[csr_at])
            if (index + 1) % 20_000 == 0:
                note(f"manifest: {index + 1:,} rows")
    return models, csrs


def aws_environment(endpoint_url: str, state_dir: Path) -> None:
    """Point boto3 (and anything reading STATE_DIR) at the emulator and the temporary state."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint_url,
            "STATE_DIR": str(state_dir),
        }
    )


_slot: dict[str, Any] = {}  # a credentials slot process's own S3 client and run


def _start_slot(settings: Settings, batch: Any, ca_pem: str, ca_key_pem: str) -> None:
    _slot.update(
        s3=boto3.session.Session(region_name=REGION).client("s3"),
        settings=settings,
        batch=batch,
        ca=(ca_pem, ca_key_pem),
    )


def _issue_in_slot(chunk: Any) -> Any:
    return pipeline.issue_credentials(_slot["s3"], _slot["settings"], _slot["batch"], chunk, *_slot["ca"])


def issue_all(
    s3: Any, settings: Settings, batch: Any, chunks: list[Any], ca_pem: str, ca_key_pem: str, slots: int
) -> list[Any]:
    """Every chunk's credentials task: one after another in this process (as `make run`), or `slots` at a
    time in processes of their own (as `make cluster`: Celery workers of concurrency 1, a chunk each)."""
    if slots == 1:
        results = []
        for chunk in chunks:
            results.append(pipeline.issue_credentials(s3, settings, batch, chunk, ca_pem, ca_key_pem))
            note(f"credentials: chunk {chunk.index + 1}/{len(chunks)}")
        return results
    dispose_engines()  # no pooled inventory connection crosses the fork
    context = multiprocessing.get_context("fork")
    initargs = (settings, batch, ca_pem, ca_key_pem)
    with ProcessPoolExecutor(slots, mp_context=context, initializer=_start_slot, initargs=initargs) as pool:
        results = []
        for result in pool.map(_issue_in_slot, chunks):
            results.append(result)
            note(f"credentials: chunk {len(results)}/{len(chunks)} ({slots} at a time)")
    return results


def run_pipeline(
    watch: Stopwatch,
    iot: Any,
    s3: Any,
    settings: Settings,
    manifest: Path,
    row_count: int,
    ca_pem: str,
    ca_key_pem: str,
    slots: int = 1,
) -> dict[str, Any]:
    """Every stage in order, as the DAG runs them (registration through include.registration); the summary."""
    inventory = Inventory(settings.inventory_url)
    run_id = f"bench-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    with watch("intake", row_count):
        batch = pipeline.intake(s3, settings, str(manifest), run_id=run_id)
    with watch("validate", row_count):
        validated = pipeline.validate(s3, settings, batch)
    with watch("preflight", validated.accepted):
        checks = pipeline.preflight(s3, iot, settings, batch, ca_certificate_pem=ca_pem)
    with watch("credentials", checks.to_provision, cores=settings.workers * slots) as stage:
        results = issue_all(s3, settings, batch, checks.chunks, ca_pem, ca_key_pem, slots)
        if checks.to_provision // max(1, len(checks.chunks)) < MIN_DEVICES_PER_WORKER * settings.workers:
            stage.cores = slots  # chunks this small run inline (include.credentials)
    with watch("parameter files", checks.to_provision):
        units = pipeline.write_parameter_files(s3, settings, batch, checks, results)
    for unit in units:
        with watch(f"register[{unit.unit}]", unit.lines):
            state = registration.run_to_end(
                iot,
                s3,
                inventory,
                batch,
                unit,
                settings.registration_role_arn,
                timeout=REGISTRATION_TIMEOUT,
                on_progress=lambda s, u=unit.unit: note(f"register[{u}]: {s.percentage_progress}%"),
            )
        with watch(f"reconcile[{unit.unit}]", unit.lines):
            pipeline.reconcile_task(iot, s3, settings, batch, unit, state)
    with watch("summarize", validated.rows):
        return pipeline.summarize(s3, settings, batch)


def _inventory(
    stack: contextlib.ExitStack, work: Path, url: str | None, parser: argparse.ArgumentParser
) -> tuple[str, str]:
    """The inventory URL of this run and how the table describes it."""
    if url is None:
        return f"sqlite:///{work / 'inventory.db'}", "SQLite, a file in the temporary directory"
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        parser.error(f"--inventory takes a PostgreSQL URL, got {parsed.render_as_string(hide_password=True)}")
    bench_measure.COUNT_POSTGRES = parsed.host in LOCAL_HOSTS
    shown = parsed.render_as_string(hide_password=True)
    local = bench_measure.COUNT_POSTGRES
    counted = "its server's CPU counted in each stage" if local else "a remote server: its CPU not counted"
    return stack.enter_context(
        scratch_schema(url, "bench")
    ), f"PostgreSQL at {shown}, a schema of its own ({counted})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=None, help="credential processes (default: all cores)")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="devices per credentials chunk (default 5000)"
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=1,
        help="credentials tasks at once, each in a process of its own with cores/slots credential processes "
        "(2: make cluster's two Celery workers of concurrency 1); default 1, one after another (make run)",
    )
    parser.add_argument("--gw-share", type=float, default=0.1, help="share of GW-200 devices (device CSRs)")
    parser.add_argument("--bad-rows", type=int, default=0, help="rows broken on purpose (quarantined)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--inventory",
        metavar="URL",
        help="a PostgreSQL database for the inventory (a schema of its own, dropped at the end); default "
        "SQLite in the temporary directory",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile", nargs="*", default=(), metavar="STAGE", help="cProfile the stages named so (to stderr)"
    )
    args = parser.parse_args(argv)
    if args.devices < 1 or args.slots < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--devices, --slots and --workers must be at least 1")
    if args.chunk_size is not None and args.chunk_size < 1:
        parser.error("--chunk-size must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="iot-bench-"))
    stack = contextlib.ExitStack()
    try:
        local_state = work / "state"
        inventory_url, inventory_note = _inventory(stack, work, args.inventory, parser)
        overrides: dict[str, Any] = {
            "inventory_url": inventory_url,
            "bundle_recipient_public_key": str(local_state / "factory-line" / "recipient.cert.pem"),
        }
        if args.workers or args.slots > 1:
            overrides["workers"] = args.workers or max(1, (os.cpu_count() or 1) // args.slots)
        if args.chunk_size:
            overrides["chunk_size"] = args.chunk_size
        settings = Settings(**overrides)

        manifest = work / "manifest.csv"
        note(f"generating a manifest of {args.devices:,} devices in {work}")
        models, csrs = write_manifest(manifest, args.devices, args.gw_share, args.bad_rows, args.seed)

        # The emulator in a process of its own, as AWS is elsewhere: its work is not the pipeline's CPU.
        (work / "logs").mkdir()
        # In memory: a million devices' state written to disk over and over is not what is measured.
        endpoint = stack.enter_context(emulator(work, work / "logs", note, persist=False))
        EXCLUDED_PIDS.update(p.pid for p in psutil.Process().children(recursive=True))
        aws_environment(endpoint, local_state)
        note(f"emulator at {endpoint}; bootstrapping the account")
        account = bootstrap(endpoint_url=endpoint, local_state=local_state, settings=settings, region=REGION)
        ca_pem = Path(account["ca_certificate"]).read_text()
        ca_key_pem = Path(account["ca_key"]).read_text()
        session = boto3.session.Session(region_name=REGION)
        iot = session.client("iot", endpoint_url=endpoint)
        s3 = session.client("s3", endpoint_url=endpoint)

        floor_devices = min(args.devices, FLOOR_DEVICES)
        note(f"crypto floor on {floor_devices:,} devices, one core")
        floor = own_key_floor(ca_pem, ca_key_pem, floor_devices)
        csr_floor = device_csr_floor(ca_pem, ca_key_pem, csrs)
        cores = os.cpu_count() or 1
        busy = busy_floor(ca_pem, ca_key_pem, floor_devices, cores)
        csr_share = models.get("GW-200", 0) / max(1, sum(models.values()))
        mix = (
            1e6 / ((1 - csr_share) * floor.per_device_us + csr_share * csr_floor.per_device_us)
            if csr_floor is not None
            else None
        )

        watch = Stopwatch(tuple(args.profile))
        started, cpu_started, server_started = time.perf_counter(), cpu_seconds(), server_cpu_seconds()
        emulator_started = emulator_cpu_seconds()
        with MemoryPeak() as memory:
            summary = run_pipeline(
                watch, iot, s3, settings, manifest, args.devices, ca_pem, ca_key_pem, args.slots
            )
        total = Stage(
            "end to end",
            args.devices,
            time.perf_counter() - started,
            max(s.cores for s in watch.stages),
            cpu_seconds() - cpu_started,
        )
        total.server_cpu_seconds = server_cpu_seconds() - server_started
        total.emulator_cpu_seconds = emulator_cpu_seconds() - emulator_started

        rows_ = [figures(s, floor) for s in [*watch.stages, total]]
        host = machine()
        header = [
            f"bench: {args.devices:,} devices ("
            + ", ".join(f"{n:,} {m}" for m, n in sorted(models.items()))
            + f"), chunk {settings.chunk_size:,}, {args.slots} credentials task(s) at a time on "
            f"{settings.workers} credential process(es) each",
            f"machine: {host['nproc']} cores, {host['cpu']}, load {host['load_1m']} at the end, "
            f"Python {host['python']}",
            "measures the domain stages (include/pipeline.py) and the emulator; Airflow is not used "
            "(its scheduling overhead is per task, not per device)",
            f"inventory: {inventory_note}",
            f"outcome: {summary['provisioned']:,} provisioned, {summary['failed']:,} failed, "
            f"{summary['quarantined']:,} quarantined, {summary['skipped']:,} skipped, "
            f"accounted={summary['accounted']}",
        ]
        print(render(header, rows_, floor, csr_floor, mix, busy), flush=True)
        credentials = next(s for s in watch.stages if s.name == "credentials")
        if credentials.devices:
            workers_us = credentials.worker_cpu_seconds / credentials.devices * 1e6
            parent_us = (credentials.cpu_seconds - credentials.worker_cpu_seconds) / credentials.devices * 1e6
            print(
                f"credentials CPU per device: worker processes {workers_us:.1f} µs, this process "
                f"(pipeline loop, bundle sealing, S3 uploads) {parent_us:.1f} µs"
            )
        print(
            "emulator CPU per device (it stands for AWS: not in the figures above, but on the same cores): "
            + ", ".join(
                f"{r['stage']} {r['emulator_cpu_us_per_device']:.1f} µs"
                for r in rows_
                if r["devices"] and not r["stage"].startswith(("intake", "summarize"))
            )
        )
        if bench_measure.COUNT_POSTGRES:
            print(
                "PostgreSQL server CPU per device (in the figures above): "
                + ", ".join(
                    f"{r['stage']} {r['server_cpu_us_per_device']:.1f} µs" for r in rows_ if r["devices"]
                )
            )
        if mix is not None and credentials.devices:
            cpu_us = credentials.cpu_seconds / credentials.devices * 1e6
            print(
                f"credentials vs this manifest's mix floor ({csr_share:.0%} device CSRs, {1e6 / mix:.1f} µs "
                f"per device) on {credentials.cores} cores: wall rate "
                f"{credentials.per_second / (mix * credentials.cores):.2f} × floor, CPU per device "
                f"{cpu_us * mix / 1e6:.2f} × floor"
            )
        pipeline_side = pipeline_side_figures(watch.stages, args.devices, mix or floor.per_second, memory)
        print(
            f"pipeline side (every stage but the emulator's registration): {pipeline_side['seconds']:.3g} s "
            "= "
            f"{pipeline_side['x_credentials_floor_time']:.2f} × the credentials floor time on "
            f"{pipeline_side['cores']} cores ({pipeline_side['credentials_floor_seconds']:.3g} s); "
            f"peak memory of all processes together {pipeline_side['peak_pss_mb']:,.0f} MB (PSS summed; "
            f"RSS summed, shared pages counted in every process: {pipeline_side['peak_rss_mb']:,.0f} MB)"
        )
        print(
            json.dumps(
                {
                    "devices": args.devices,
                    "models": dict(models),
                    "chunk_size": settings.chunk_size,
                    "workers": settings.workers,
                    "slots": args.slots,
                    "machine": host,
                    "inventory": sa.engine.make_url(inventory_url).get_backend_name(),
                    "floor": floor.as_dict(),
                    "floor_device_csr": csr_floor.as_dict() if csr_floor else None,
                    "floor_every_core_busy_us": round(busy, 2),
                    "floor_mix_devices_per_s": round(mix, 1) if mix else None,
                    "stages": rows_,
                    "pipeline_side": pipeline_side,
                    "outcome": {
                        k: summary[k]
                        for k in ("provisioned", "failed", "quarantined", "skipped", "accounted")
                    },
                },
                ensure_ascii=False,
            ),
            flush=True,
        )
        return 0 if summary["accounted"] else 1
    finally:
        stack.close()
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
