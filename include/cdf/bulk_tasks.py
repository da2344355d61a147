"""Bulk tasks: the request's record and manifest in S3 (one folder per task id), and its CDF status.

A task id is ours and stable: the pipeline run's id (`cdf_bulk__<UTC time>_<8 hex>`), not one of the AWS
registration tasks a batch may need. Its status combines the run in the inventory (validation, pre-flight,
credentials, every registration task, reconcile) with whatever runs it (a thread, an Airflow DAG run).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from include.aws_errors import is_not_found
from include.cdf.aws import aws_errors
from include.cdf.bulk_plan import BulkPlan
from include.cdf.inventory_records import action_id
from include.inventory import Inventory
from include.outcomes import FAILED, PENDING, PROVISIONED, QUARANTINED, RUN_FAILED, RUN_FINISHED, SKIPPED
from include.run_files import RunFiles

TASK_PREFIX = "cdf_bulk__"
TASK_ID = re.compile(r"^cdf_bulk__\d{8}T\d{6}\.\d{6}Z_[0-9a-f]{8}$")
LINK_SECONDS = 3600
TERMINAL = ("Completed", "Failed")


class BulkTask(BaseModel):
    """The record of one POST /bulkthings (no key material: the manifest holds only the parameters)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    created_at: dt.datetime
    template_id: str
    source: str
    model: str
    mode: str
    rows: int
    bucket: str
    manifest_key: str
    catalog_path: str | None = None
    acm_pca_arn: str | None = None
    runner: str
    dag_id: str | None = None

    @property
    def manifest_uri(self) -> str:
        return f"s3://{self.bucket}/{self.manifest_key}"


@dataclass(frozen=True)
class RunnerState:
    """What the runner knows that the inventory may not yet: queued, running, failed (why), finished."""

    state: str
    message: str | None = None
    links: dict[str, str] | None = None


class TaskStore:
    """Bulk task records under s3://<bucket>/<work prefix>bulk/<task id>/."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, f"{prefix}bulk/"

    def _key(self, task_id: str, name: str) -> str:
        return f"{self.prefix}{task_id}/{name}"

    def create(self, plan: BulkPlan, runner: str, dag_id: str | None = None) -> BulkTask:
        task_id = action_id(TASK_PREFIX)
        manifest_key = self._key(task_id, "manifest.csv")
        task = BulkTask(
            task_id=task_id,
            created_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
            template_id=plan.template_id,
            source=plan.source,
            model=plan.model,
            mode=plan.mode,
            rows=plan.rows,
            bucket=self.bucket,
            manifest_key=manifest_key,
            catalog_path=plan.catalog_path,
            acm_pca_arn=plan.acm_pca_arn,
            runner=runner,
            dag_id=dag_id,
        )
        with aws_errors(f"storing bulk task {task_id}"):
            self.s3.put_object(
                Bucket=self.bucket, Key=manifest_key, Body=plan.manifest, ContentType="text/csv"
            )
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self._key(task_id, "task.json"),
                Body=task.model_dump_json().encode(),
                ContentType="application/json",
            )
        return task

    def get(self, task_id: str) -> BulkTask | None:
        if not TASK_ID.match(task_id):
            return None
        with aws_errors(f"reading bulk task {task_id}"):
            try:
                found = self.s3.get_object(Bucket=self.bucket, Key=self._key(task_id, "task.json"))
            except Exception as exc:
                if is_not_found(exc):
                    return None
                raise
            return BulkTask.model_validate_json(found["Body"].read())

    def task_ids(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
        )
        found = [
            p["Prefix"][len(self.prefix) :].rstrip("/")
            for page in pages
            for p in page.get("CommonPrefixes", [])
        ]
        return sorted(t for t in found if TASK_ID.match(t))


def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _live_lines(iot: Any, tasks: list[dict[str, Any]]) -> int:
    """Lines AWS has done in registration tasks still running (their rows are pending in the inventory)."""
    done = 0
    for task in tasks:
        if task.get("status") != "InProgress" or not task.get("task_id"):
            continue
        try:
            found = iot.describe_thing_registration_task(taskId=task["task_id"])
        except Exception:  # noqa: S112 (progress is best effort; the counts stay right without it)
            continue
        done += int(found.get("successCount") or 0) + int(found.get("failureCount") or 0)
    return done


def _links(
    s3: Any, task: BulkTask, settings_bucket: str, work_prefix: str, run: dict[str, Any]
) -> dict[str, str]:
    """Presigned links (an hour) to the run's report, summary, failed.csv and quarantine.csv, once written."""
    if not run.get("batch_id"):
        return {}
    files = RunFiles(settings_bucket, work_prefix, run["batch_id"], task.task_id)
    wanted = {"quarantine": files.quarantine}
    if run.get("state") == RUN_FINISHED:
        wanted |= {"report": files.report, "summary": files.summary, "failedCsv": files.failed}
    return {
        name: s3.generate_presigned_url(
            "get_object", Params={"Bucket": settings_bucket, "Key": key}, ExpiresIn=LINK_SECONDS
        )
        for name, key in wanted.items()
    }


def status(
    task: BulkTask,
    inventory: Inventory,
    iot: Any,
    s3: Any,
    *,
    bucket: str,
    work_prefix: str,
    runner: RunnerState | None = None,
) -> dict[str, Any]:
    """The CDF BulkRegistrationTask of a task, plus the outcome counts, message and links."""
    run = inventory.run(task.task_id) or {}
    counts = inventory.outcome_counts(task.task_id) if run else {}
    registrations = inventory.registration_tasks(task.task_id) if run else []
    rows = int(run.get("rows") or task.rows)
    message = run.get("error") or (runner.message if runner else None)
    state = run.get("state")
    if state == RUN_FINISHED:
        name = "Completed"
    elif state == RUN_FAILED or (runner is not None and runner.state == "failed"):
        name = "Failed"
    elif state == "abandoned":
        name, message = "Failed", f"the run was abandoned; run {run.get('adopted_by')} took its work over"
    elif state:
        name = "InProgress"
    else:
        name = "Pending"
    settled = sum(counts.get(o, 0) for o in (PROVISIONED, FAILED, QUARANTINED, SKIPPED))
    done = settled + (_live_lines(iot, registrations) if name == "InProgress" else 0)
    progress = 100 if name == "Completed" else min(99, done * 100 // rows) if rows else 0
    moments = [task.created_at, run.get("started_at"), run.get("finished_at")]
    moments += [t.get("updated_at") for t in registrations]
    latest = max(_aware(m) for m in moments if m is not None)
    result: dict[str, Any] = {
        "taskId": task.task_id,
        "status": name,
        "percentageProgress": progress,
        "successCount": counts.get(PROVISIONED, 0) + counts.get(SKIPPED, 0),
        "failureCount": counts.get(FAILED, 0) + counts.get(QUARANTINED, 0),
        "creationDate": _iso(task.created_at),
        "lastModifiedDate": _iso(latest),
        "rows": rows,
        "outcomes": {o: counts.get(o, 0) for o in (PROVISIONED, FAILED, QUARANTINED, SKIPPED, PENDING)},
        "provisioningTemplateId": task.template_id,
        "registrationTasks": [
            {"taskId": t["task_id"], "unit": t["unit"], "status": t["status"]}
            for t in registrations
            if t.get("task_id")
        ],
    }
    if message:
        result["message"] = str(message)
    with aws_errors("presigning the run's files"):
        links = _links(s3, task, bucket, work_prefix, run)
    links |= (runner.links or {}) if runner else {}
    if links:
        result["links"] = links
    return result


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
