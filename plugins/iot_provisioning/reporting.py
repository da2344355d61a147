"""The batch summary as a short human-readable report for the task log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OUTCOMES = ("provisioned", "failed", "quarantined", "skipped")


def format_summary(summary: Mapping[str, Any]) -> str:
    """Counts per outcome (adding up to the rows), reasons, AWS errors and where the files are."""
    rows = summary.get("rows", 0)
    lines = [f"batch {summary.get('batch_id', '?')} run {summary.get('run_id', '?')}: {rows} rows"]
    if summary.get("dry_run"):
        lines.append("dry run: nothing was created in AWS IoT")
    for outcome in OUTCOMES:
        lines.append(f"  {outcome:<12}{summary.get(outcome, 0):>10}")
    for title, key in (("quarantine reasons", "reasons"), ("AWS errors", "errors")):
        counts = summary.get(key) or {}
        if counts:
            lines.append(f"{title}:")
            lines.extend(f"  {name:<28}{count:>8}" for name, count in sorted(counts.items()))
    files = summary.get("files") or {}
    if files:
        lines.append("files:")
        lines.extend(f"  {name:<28}{location}" for name, location in sorted(files.items()))
    return "\n".join(lines)
