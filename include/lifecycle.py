"""Lifecycle actions on provisioned devices (the manage_devices DAG): deactivate, revoke, reactivate, delete,
rekey; chunked and mapped like provisioning, resumable, every device's result in the inventory.

`plan` selects the devices from the inventory and cuts them into chunks (files in S3); `run_chunk` acts on
one chunk, in waves of devices (include.lifecycle_steps plans each device's steps from what the registry
shows, so a device already in the wanted state is left alone); include.lifecycle_report summarizes.
A dry run reads the registry and records what each device would get, changing nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa

from include.catalog import load_catalog
from include.inventory import Inventory
from include.lifecycle_chunk import TARGET_STATUS, ChunkWork, refusal
from include.lifecycle_files import ActionFiles
from include.lifecycle_records import ChunkActions, DeviceChunk, LifecyclePlan
from include.lifecycle_registry import Calls, DeviceView, RateLimiter, inspect
from include.lifecycle_rekey import (
    issue_certificates,
    put_aws_certificates,
    read_csr_source,
    rekey_one,
)
from include.lifecycle_steps import (
    Backoff,
    DeviceFailure,
    Outcome,
    Step,
    plan_steps,
    run_steps,
)
from include.lifecycle_store import ActionRecord, LifecycleStore, Selection
from include.outcomes import (
    ACTION_DONE,
    ACTION_FAILED,
    ACTION_PLANNED,
    ACTION_STARTED,
    ACTION_UNCHANGED,
    ACTIONS,
    DEACTIVATE,
    DELETE,
    DEVICE_DELETED,
    FINAL_ACTION_STATES,
    REKEY,
    REVOKE,
)
from include.settings import Settings
from include.storage import get_table, put_bytes, put_table

WAVE = 100  # devices planned, then changed phase by phase, together (see _act_wave)


def put_chunks(s3: Any, settings: Settings, files: ActionFiles, devices: pa.Table) -> list[DeviceChunk]:
    """The devices cut into chunks of settings.chunk_size, each written to its file."""
    chunks = []
    for index, start in enumerate(range(0, devices.num_rows, settings.chunk_size)):
        part = devices.slice(start, settings.chunk_size)
        names = part.column("thing_name").to_pylist()
        key = put_table(s3, settings.bucket, files.chunk_devices(index), part)
        chunks.append(
            DeviceChunk(index=index, devices=part.num_rows, first=names[0], last=names[-1], key=key)
        )
    return chunks


def plan(
    s3: Any,
    settings: Settings,
    *,
    run_id: str,
    action: str,
    selection: Selection,
    dry_run: bool = False,
    reason: str = "",
    rate_limit: float | None = None,
    csr_source: str | None = None,
    parallel_chunks: int = 1,
) -> LifecyclePlan:
    """The selected devices, in chunks of settings.chunk_size, and the plan file.

    `rate_limit` is the run's AWS requests per second, shared by the `parallel_chunks` chunk tasks that
    may run at once.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if rate_limit is not None and rate_limit <= 0:
        raise ValueError(f"rate_limit must be positive (requests per second), got {rate_limit}")
    files = ActionFiles(settings.bucket, run_id)
    devices = LifecycleStore(Inventory(settings.inventory_url)).select(selection)
    chunks = put_chunks(s3, settings, files, devices)
    result = LifecyclePlan(
        run_id=run_id,
        action=action,
        dry_run=dry_run,
        selection={k: v for k, v in selection.__dict__.items() if v},
        reason=reason or f"{action} requested by run {run_id}",
        rate_limit=rate_limit,
        parallel_chunks=parallel_chunks,
        csr_source=csr_source or None,
        devices=devices.num_rows,
        chunks=chunks,
        plan_key=files.plan,
    )
    put_bytes(
        s3, settings.bucket, files.plan, json.dumps(result.to_xcom(), indent=2).encode(), "application/json"
    )
    return result


def run_chunk(
    iot: Any,
    s3: Any,
    settings: Settings,
    plan: LifecyclePlan,
    chunk: DeviceChunk,
    *,
    ca_pems: tuple[str, str] | None = None,
    backoff: Backoff | None = None,
) -> ChunkActions:
    """Act on one chunk's devices; devices this run already finished (a retried chunk) are skipped.

    A transient AWS error (throttling beyond botocore's retries, 5xx, the network) fails the chunk after
    the devices before it are recorded: Airflow retries the chunk and it resumes. `ca_pems` (certificate,
    key) is needed for rekey only.
    """
    store = LifecycleStore(Inventory(settings.inventory_url))
    devices = get_table(s3, settings.bucket, chunk.key).to_pylist()
    states = store.states(plan.run_id, [d["thing_name"] for d in devices])
    finished = {name for name, state in states.items() if state in FINAL_ACTION_STATES}
    todo = [d for d in devices if d["thing_name"] not in finished]
    work = ChunkWork(
        plan,
        Calls(iot, RateLimiter(plan.chunk_rate())),
        store,
        load_catalog(settings.catalog_path),
        backoff or Backoff(),
        ca_certificate_pem=ca_pems[0] if ca_pems else "",
        interrupted={name for name, state in states.items() if state == ACTION_STARTED},
    )
    if plan.action == REKEY and todo:
        work.csrs = read_csr_source(s3, plan.csr_source) if plan.csr_source else None
    if plan.action == REKEY and not plan.dry_run and todo:
        if ca_pems is None:
            raise ValueError("rekey needs the factory CA (certificate and key PEMs)")
        files = ActionFiles(settings.bucket, plan.run_id)
        work.issued, work.refused = issue_certificates(
            s3, settings, files, chunk.index, pa.Table.from_pylist(todo), work.catalog, ca_pems, work.csrs
        )
    counts: Counter[str] = Counter()
    retries = 0
    wave = 1 if plan.action == REKEY else WAVE  # a rekey is recorded device by device (see _rekey)
    for start in range(0, len(todo), wave):
        part = todo[start : start + wave]
        records = [rekey_one(work, part[0])] if plan.action == REKEY else _act_wave(work, part)
        store.record(plan.run_id, records)
        counts.update(r.state for r in records)
        retries += sum(r.retries for r in records)
    if plan.action == REKEY and not plan.dry_run:
        put_aws_certificates(work, s3, settings, chunk.index, [d["thing_name"] for d in devices])
    return ChunkActions(
        index=chunk.index,
        devices=len(devices),
        done=counts[ACTION_DONE],
        unchanged=counts[ACTION_UNCHANGED],
        failed=counts[ACTION_FAILED],
        planned=counts[ACTION_PLANNED],
        resumed=len(finished),
        retries=retries,
        calls=dict(work.calls.counts),
    )


def _prepare(work: ChunkWork, device: dict[str, Any]) -> ActionRecord | list[Step]:
    """A device's steps, or its final record when it needs none (refused, nothing to do, a dry run)."""
    refused = refusal(work.plan, device)
    if refused is not None:
        state, reason = refused
        code = "NotApplicable" if state == ACTION_FAILED else None
        return work.record(device, state, reason=reason, error_code=code)
    try:
        view = inspect(work.calls, device["thing_name"], [device["certificate_id"]])
        steps = plan_steps(work.plan.action, view, device["certificate_id"])
        _refuse_shared(work.plan.action, view, steps)
    except DeviceFailure as failure:
        return work.record(device, ACTION_FAILED, error_code=failure.code, reason=failure.reason)
    if work.plan.dry_run:
        state = ACTION_PLANNED if steps else ACTION_UNCHANGED
        return work.record(device, state, steps=[s.text for s in steps], reason=work.plan.reason)
    if not steps:
        changes = _device_changes(work.plan.action)
        if device["thing_name"] in work.interrupted:  # a died try of this run did it all
            steps_done = ["(done by an earlier try of this run)"]
            return work.record(
                device, ACTION_DONE, steps=steps_done, reason=work.plan.reason, changes=changes
            )
        return work.record(device, ACTION_UNCHANGED, reason="nothing to change", changes=changes)
    return steps


def _phase(step: Step) -> int:
    """Deletes go last in a wave: by then AWS has long applied the wave's detaches."""
    return {"delete_certificate": 1, "delete_thing": 2}.get(step.operation, 0)


def _act_wave(work: ChunkWork, devices: list[dict[str, Any]]) -> list[ActionRecord]:
    """A wave of devices, phase by phase: every device's status changes and detaches, then every
    certificate delete, then every thing delete. Each device keeps the safe order; its deletes come
    seconds after its detaches, so AWS's eventual consistency rarely refuses them."""
    records: dict[str, ActionRecord] = {}
    planned: dict[str, list[Step]] = {}
    for device in devices:
        prepared = _prepare(work, device)
        if isinstance(prepared, ActionRecord):
            records[device["thing_name"]] = prepared
        else:
            planned[device["thing_name"]] = prepared
    by_name = {d["thing_name"]: d for d in devices}
    started = [work.record(by_name[n], ACTION_STARTED, reason=work.plan.reason) for n in planned]
    work.store.record(work.plan.run_id, started)
    outcomes = {name: Outcome() for name in planned}
    for phase in (0, 1, 2):
        for name, steps in planned.items():
            if name in records:
                continue  # failed in an earlier phase
            try:
                run_steps(work.calls, [s for s in steps if _phase(s) == phase], work.backoff, outcomes[name])
            except DeviceFailure as failure:
                records[name] = work.record(
                    by_name[name],
                    ACTION_FAILED,
                    steps=outcomes[name].done,
                    retries=outcomes[name].retries,
                    error_code=failure.code,
                    reason=failure.reason,
                )
    for name in planned:
        if name not in records:
            records[name] = work.record(
                by_name[name],
                ACTION_DONE,
                steps=outcomes[name].done,
                retries=outcomes[name].retries,
                reason=work.plan.reason,
                changes=_device_changes(work.plan.action),
            )
    return [records[d["thing_name"]] for d in devices]


def _refuse_shared(action: str, view: DeviceView, steps: list) -> None:
    """Deactivating or revoking a certificate other things hold too would cut them off as well."""
    if action not in (DEACTIVATE, REVOKE):
        return
    changing = {s.kwargs["certificateId"] for s in steps}
    for certificate in view.certificates.values():
        others = [t for t in certificate.things if t != view.thing_name]
        if certificate.certificate_id in changing and others:
            raise DeviceFailure(
                "SharedCertificate",
                f"certificate {certificate.certificate_id} is also attached to {', '.join(others)}: "
                f"not {action}d (it would cut them off too)",
            )


def _device_changes(action: str) -> dict[str, Any]:
    if action == DELETE:
        return {"status": DEVICE_DELETED, "certificate_status": None}
    return {"certificate_status": TARGET_STATUS[action]}
