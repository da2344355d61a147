"""The summary of a lifecycle run: counts that add up to the selected devices, every device's steps in
changes.csv, and the Markdown report for S3 and the task log."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from include.csv_safety import write_csv
from include.inventory import Inventory
from include.lifecycle_files import ActionFiles
from include.lifecycle_records import ChunkActions, LifecyclePlan
from include.lifecycle_store import LifecycleStore
from include.outcomes import ACTION_DONE, ACTION_FAILED, ACTION_PLANNED, ACTION_STARTED, ACTION_UNCHANGED
from include.settings import Settings
from include.storage import put_bytes

CHANGE_COLUMNS = (
    "thing_name",
    "batch_id",
    "action",
    "state",
    "step",
    "certificate_id",
    "new_certificate_id",
    "retries",
    "error_code",
    "reason",
    "updated_at",
)


def _change_rows(actions: Iterable[dict[str, Any]]) -> Iterable[tuple]:
    for a in actions:
        base = [a.get(c) for c in CHANGE_COLUMNS]
        for step in a["steps"] or [""]:
            base[4] = step
            yield tuple(base)


def summarize(
    s3: Any, settings: Settings, plan: LifecyclePlan, chunks: Iterable[ChunkActions]
) -> dict[str, Any]:
    """Counts by state (adding up to the selected devices), retries, calls; changes.csv and the report."""
    files = ActionFiles(settings.bucket, plan.run_id)
    actions = LifecycleStore(Inventory(settings.inventory_url)).actions(plan.run_id)
    states = Counter(a["state"] for a in actions)
    calls: Counter[str] = Counter()
    resumed = 0
    for chunk in chunks:
        calls.update(chunk.calls)
        resumed += chunk.resumed
    put_bytes(
        s3, settings.bucket, files.changes, write_csv(CHANGE_COLUMNS, _change_rows(actions)), "text/csv"
    )
    summary: dict[str, Any] = {
        "run_id": plan.run_id,
        "action": plan.action,
        "dry_run": plan.dry_run,
        "selection": plan.selection,
        "reason": plan.reason,
        "devices": plan.devices,
        **{
            state: states.get(state, 0)
            for state in (ACTION_DONE, ACTION_UNCHANGED, ACTION_FAILED, ACTION_PLANNED)
        },
        "accounted": sum(states.values()) == plan.devices and not states.get(ACTION_STARTED),
        "resumed": resumed,
        "retries": sum(a["retries"] or 0 for a in actions),
        "changes": sum(
            len(a["steps"] or [])
            for a in actions
            if a["state"] in (ACTION_DONE, ACTION_PLANNED, ACTION_FAILED)
        ),
        "errors": dict(Counter(a["error_code"] for a in actions if a["error_code"])),
        "calls": dict(sorted(calls.items())),
        "files": {
            "bucket": settings.bucket,
            "plan": files.plan,
            "changes": files.changes,
            "summary": files.summary,
            "report": files.report,
            # rekey: the new keys for the factory line, and the certificates AWS signed
            "bundles": _keys_under(s3, settings.bucket, f"{files.prefix}bundles/"),
            "certificates": _keys_under(s3, settings.bucket, f"{files.prefix}certificates/"),
        },
    }
    put_bytes(
        s3,
        settings.bucket,
        files.summary,
        json.dumps(summary, indent=2, default=str).encode(),
        "application/json",
    )
    put_bytes(s3, settings.bucket, files.report, render_report(summary).encode(), "text/markdown")
    return summary


def _keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def render_report(summary: dict[str, Any]) -> str:
    """The run's report (Markdown) for S3 and the task log."""
    title = f"# {summary['action']} — run {summary['run_id']}" + (
        "  (dry run: nothing changed)" if summary["dry_run"] else ""
    )
    lines = [title, "", f"Selection: {summary['selection']}; reason: {summary['reason']}", ""]
    lines += ["| devices | count |", "|---|---:|"]
    for state in (ACTION_DONE, ACTION_UNCHANGED, ACTION_FAILED, ACTION_PLANNED):
        lines.append(f"| {state} | {summary[state]} |")
    lines.append(f"| **selected** | **{summary['devices']}** |")
    lines += [
        "",
        f"Steps {'planned' if summary['dry_run'] else 'done'}: {summary['changes']}; "
        f"eventual-consistency retries: {summary['retries']}; "
        f"devices a died try had finished: {summary['resumed']}.",
    ]
    if summary["errors"]:
        lines += ["", "| error | devices |", "|---|---:|"] + [
            f"| `{c}` | {n} |" for c, n in sorted(summary["errors"].items())
        ]
    lines += ["", "AWS requests: " + (", ".join(f"{op} {n}" for op, n in summary["calls"].items()) or "none")]
    lines += ["", f"Every device's steps: `{summary['files']['changes']}`"]
    return "\n".join(lines) + "\n"
