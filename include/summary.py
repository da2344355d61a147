"""The batch summary: outcome counts (which must add up), reasons, durations, files; and a Markdown report."""

from __future__ import annotations

from typing import Any

from include.manifest import REASONS


def render_report(summary: dict[str, Any]) -> str:
    """A human-readable batch report (Markdown) for S3 and the task log."""
    lines = [
        f"# Factory batch {summary['batch_id'][:12]}… — run {summary['run_id']}",
        "",
        f"Source: `{summary['source']}`"
        + ("  (dry run: nothing was registered)" if summary.get("dry_run") else ""),
        "",
        "| outcome | devices |",
        "|---|---:|",
    ]
    for outcome in ("provisioned", "failed", "quarantined", "skipped"):
        lines.append(f"| {outcome} | {summary[outcome]} |")
    if summary.get("dry_run"):
        lines.append(f"| would be provisioned | {summary.get('planned', 0)} |")
    lines.append(f"| **manifest data rows** | **{summary['rows']}** |")
    if summary["reasons"]:
        lines += ["", "## Quarantined rows by reason", "", "| reason | rows | meaning |", "|---|---:|---|"]
        for code, count in sorted(summary["reasons"].items(), key=lambda item: -item[1]):
            lines.append(f"| `{code}` | {count} | {REASONS.get(code, '')} |")
    if summary["errors"]:
        lines += ["", "## Failed registrations by AWS error code", "", "| error code | rows |", "|---|---:|"]
        for code, count in sorted(summary["errors"].items(), key=lambda item: -item[1]):
            lines.append(f"| `{code}` | {count} |")
    if summary.get("registration_tasks"):
        lines += [
            "",
            "## Registration tasks",
            "",
            "| group | task id | status | ok | failed |",
            "|---|---|---|---:|---:|",
        ]
        for task in summary["registration_tasks"]:
            lines.append(
                f"| {task['group']} | `{task['task_id']}` | {task['status']} | {task['success_count']} "
                f"| {task['failure_count']} |"
            )
    orphans = summary.get("orphans") or {}
    if orphans.get("with_orphans"):
        lines += [
            "",
            f"## What failed lines left in AWS IoT (orphans setting: {orphans['policy']})",
            "",
            f"{orphans['with_orphans']} of {orphans['lines']} failed lines had made a certificate or a "
            f"thing: {orphans['cleaned']} cleaned up, {orphans['kept']} kept, {orphans['failed']} could not "
            "be cleaned.",
            "",
            *(f"- `{key}`" for key in orphans.get("reports", [])),
        ]
    lines += ["", "## Durations", "", "| stage | seconds | devices |", "|---|---:|---:|"]
    for stage in summary["durations"]["stages"]:
        lines.append(f"| {stage['stage']} | {stage['seconds']:.3f} | {stage['devices'] or ''} |")
    lines.append(f"| **whole run** | **{summary['durations']['total_seconds']:.1f}** | |")
    lines += ["", "## Files", ""]
    for name, location in summary["files"].items():
        if isinstance(location, dict):
            lines.extend(f"- {name} of {part}: `{key}`" for part, key in location.items())
        elif isinstance(location, list):
            lines.append(
                f"- {name}: {len(location)} object(s) under `{location[0].rsplit('/', 1)[0]}/`"
                if location
                else f"- {name}: none"
            )
        elif location:
            lines.append(f"- {name}: `{location}`")
    return "\n".join(lines) + "\n"
