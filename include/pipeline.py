"""The pipeline stages as plain functions: one Airflow task calls one (JSON-safe dicts in and out)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from include.errors import PreflightError
from include.settings import Settings

__all__ = [
    "PreflightError",
    "intake",
    "validate",
    "preflight",
    "issue_credentials",
    "write_parameter_files",
    "reconcile",
    "summarize",
    "registration_task_for",
    "record_registration_task",
    "record_registration_status",
]


def intake(
    s3: Any,
    settings: Settings,
    source: str,
    *,
    run_id: str,
    product: str | None = None,
    dry_run: bool = False,
    max_devices: int | None = None,
) -> dict:
    """Read the manifest (s3:// URI or local path), key the batch by its SHA-256, copy it to the work prefix.

    Returns {"batch_id", "run_id", "source", "manifest_key", "product", "dry_run", "max_devices",
    "work_prefix",
    "run_prefix"}.
    """
    raise NotImplementedError("landing next")


def validate(s3: Any, settings: Settings, batch: dict) -> dict:
    """Validate the manifest against contract v1 and the catalog; write accepted rows and quarantine.csv.

    Returns {"rows", "accepted", "quarantined", "reasons": {code: n}, "quarantine_key", "ignored_columns"}.
    """
    raise NotImplementedError("landing next")


def preflight(
    s3: Any, iot: Any, settings: Settings, batch: dict, *, ca_certificate_pem: str | None = None
) -> dict:
    """Check IoT prerequisites and the inventory, mark already-provisioned devices skipped, cut chunks.

    Raises PreflightError listing every missing prerequisite. Returns {"to_provision", "skipped", "chunks",
    "groups", "report_key", "dry_run"}.
    """
    raise NotImplementedError("landing next")


def issue_credentials(
    s3: Any, settings: Settings, batch: dict, chunk: dict, ca_certificate_pem: str, ca_private_key_pem: str
) -> dict:
    """Make keys and certificates for one chunk; write parameter-line parts, ledger part and the key bundle.

    Returns {"index", "devices", "bundle_key", "groups": {group: lines}}.
    """
    raise NotImplementedError("landing next")


def write_parameter_files(s3: Any, settings: Settings, batch: dict, chunks: list[dict]) -> list[dict]:
    """Concatenate chunk parts into one parameter file per registration group; upload its template.

    Returns [{"group", "lines", "params_key", "template_key", "bucket"}], one per registration task to start.
    """
    raise NotImplementedError("landing next")


def reconcile(
    s3: Any,
    settings: Settings,
    batch: dict,
    group: dict,
    registration: dict,
    results_lines: Iterable[bytes | str],
    errors_lines: Iterable[bytes | str],
) -> dict:
    """Map report lines back to manifest rows, upsert the inventory, write the group's failed.csv.

    Returns {"group", "provisioned", "failed", "failed_key"}.
    """
    raise NotImplementedError("landing next")


def summarize(s3: Any, settings: Settings, batch: dict) -> dict:
    """Count outcomes for the run (asserting nothing is lost), write summary.json and report.md."""
    raise NotImplementedError("landing next")


def registration_task_for(settings: Settings, batch: dict, group: str) -> str | None:
    """The registration task id already started for this run and group, if any."""
    raise NotImplementedError("landing next")


def record_registration_task(settings: Settings, batch: dict, group: str, task_id: str) -> None:
    """Remember the registration task started for this run and group (resume instead of starting again)."""
    raise NotImplementedError("landing next")


def record_registration_status(settings: Settings, batch: dict, group: str, registration: dict) -> None:
    """Store the final status of a registration task ({"task_id", "status", "success_count", ...})."""
    raise NotImplementedError("landing next")
