"""The batch report and the device history in Airflow's UI: a FastAPI app the api-server mounts at /factory.

Every route requires an Airflow login (the UI's session cookie or a REST API bearer token) with read access
to the DAG's runs, through the auth manager's own check (``requires_access_dag``): plugin apps are not
behind Airflow's login by themselves. Files (quarantine.csv, failed.csv, report.md, summary.json) are
streamed from S3 by the api-server with the ``aws_default`` connection, so readers need no S3 credentials.

- ``/factory/dags/{dag_id}/runs/{run_id}/report``: the HTML batch report (the run's page links it as the
  "Batch report" tab): outcome and reason charts, stage durations, registration tasks, a searchable
  per-row table, download links. Its numbers are the run's summary, the one XCom value of ``summarize``.
- ``/factory/dags/{dag_id}/runs/{run_id}/rows?q=&outcome=&offset=&limit=``: the per-row outcomes (JSON).
- ``/factory/dags/{dag_id}/runs/{run_id}/files/{name}``: a file of the run, from S3.
- ``/factory/devices?serial=...``: a device's history (every run, outcome, certificate, thing); the UI's
  "Device history" menu entry. ``/factory/api/devices/{serial}`` is the same as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, StreamingResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from plugins.iot_provisioning.connections import AWS_CONN_ID

PIPELINE_DAG_ID = "provision_factory_batch"
SUMMARY_TASK_ID = "summarize"
URL_PREFIX = "/factory"
# name in the report -> key of summary["files"]
FILES = {
    "quarantine.csv": "quarantine",
    "failed.csv": "failed",
    "report.md": "report",
    "summary.json": "summary",
}
MEDIA_TYPES = {".csv": "text/csv", ".md": "text/markdown", ".json": "application/json"}
OUTCOME_COLOURS = {
    "provisioned": "#2e7d32",
    "failed": "#c62828",
    "quarantined": "#ef6c00",
    "skipped": "#757575",
}
MAX_PAGE = 500

templates = Environment(
    loader=PackageLoader("plugins.iot_provisioning", "templates"), autoescape=select_autoescape(["html"])
)
run_access = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
pipeline_access = Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=PIPELINE_DAG_ID))
app = FastAPI(title="Factory provisioning: batch reports and device history", docs_url=None, redoc_url=None)


def _settings() -> Any:
    from plugins.iot_provisioning.settings_source import server_settings

    return server_settings()


def _engine() -> sa.Engine:
    from include.inventory_schema import engine_for

    return engine_for(_settings().inventory_url)


def run_summary(dag_id: str, run_id: str) -> dict[str, Any] | None:
    """The run's summary: the return value of its ``summarize`` task (one XCom value), if it ran."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            sa.select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == SUMMARY_TASK_ID,
                XComModel.key == "return_value",
                XComModel.map_index == -1,
            )
        ).first()
        if row is None:
            return None
        value = XComModel.deserialize_value(row)
    return json.loads(value) if isinstance(value, str) else value


def run_state(dag_id: str, run_id: str) -> str | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        state = session.scalar(
            sa.select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
    return str(state) if state is not None else None


def bar_chart(counts: dict[str, int], colours: dict[str, str] | None = None) -> dict[str, Any]:
    """Horizontal bars (rendered as inline SVG by the template): label, value, width in % of the largest."""
    largest = max(counts.values(), default=0) or 1
    bars = [
        {
            "label": label,
            "value": value,
            "width": round(100 * value / largest, 1),
            "colour": (colours or {}).get(label, "#1565c0"),
        }
        for label, value in counts.items()
    ]
    return {"bars": bars, "height": 26 * len(bars) + 4}


def report_context(dag_id: str, run_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    outcomes = {name: int(summary.get(name) or 0) for name in OUTCOME_COLOURS}
    reasons = {
        **{f"quarantined: {code}": n for code, n in (summary.get("reasons") or {}).items()},
        **{f"failed: {code}": n for code, n in (summary.get("errors") or {}).items()},
        **{f"skipped: {code}": n for code, n in (summary.get("skip_reasons") or {}).items()},
    }
    durations = summary.get("durations") or {}
    stages = {
        str(stage["stage"]): round(float(stage["seconds"]), 2) for stage in durations.get("stages") or []
    }
    files = summary.get("files") or {}
    base = f"{URL_PREFIX}/dags/{dag_id}/runs/{_quote(run_id)}"
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "summary": summary,
        "outcomes": outcomes,
        "outcome_chart": bar_chart(outcomes, OUTCOME_COLOURS),
        "reason_chart": bar_chart(dict(sorted(reasons.items(), key=lambda kv: -kv[1]))),
        "stage_chart": bar_chart({k: v for k, v in stages.items()}, {}),
        "stages": stages,
        "total_seconds": durations.get("total_seconds"),
        "tasks": summary.get("registration_tasks") or [],
        "downloads": [
            {"name": name, "href": f"{base}/files/{name}"} for name, key in FILES.items() if files.get(key)
        ],
        "rows_url": f"{base}/rows",
        "history_url": f"{URL_PREFIX}/devices",
    }


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


@app.get("/dags/{dag_id}/runs/{run_id}/report", response_class=HTMLResponse, dependencies=[run_access])
def batch_report(dag_id: str, run_id: str) -> HTMLResponse:
    state = run_state(dag_id, run_id)
    if state is None:
        raise HTTPException(404, f"no run {run_id!r} of DAG {dag_id!r}")
    summary = run_summary(dag_id, run_id)
    if summary is None:
        page = templates.get_template("no_report.html").render(dag_id=dag_id, run_id=run_id, state=state)
        return HTMLResponse(page)
    page = templates.get_template("batch_report.html").render(**report_context(dag_id, run_id, summary))
    return HTMLResponse(page)


@app.get("/dags/{dag_id}/runs/{run_id}/rows", dependencies=[run_access])
def batch_rows(
    dag_id: str,
    run_id: str,
    q: str = Query("", max_length=128, description="part of a serial number, thing name or reason"),
    outcome: str | None = Query(None, pattern="^(provisioned|failed|quarantined|skipped|pending)$"),
    offset: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=MAX_PAGE),
) -> dict[str, Any]:
    from include.inventory_schema import row_outcomes as table

    if run_state(dag_id, run_id) is None:
        raise HTTPException(404, f"no run {run_id!r} of DAG {dag_id!r}")
    where = [table.c.run_id == run_id]
    if outcome:
        where.append(table.c.outcome == outcome)
    if q:
        pattern = f"%{q.replace('%', '').replace('_', '')}%"
        where.append(
            sa.or_(
                table.c.serial_number.ilike(pattern),
                table.c.thing_name.ilike(pattern),
                table.c.reason_code.ilike(pattern),
                table.c.reason.ilike(pattern),
            )
        )
    columns = [
        table.c.manifest_row,
        table.c.serial_number,
        table.c.model,
        table.c.thing_name,
        table.c.outcome,
        table.c.reason_code,
        table.c.reason,
        table.c.unit,
        table.c.certificate_id,
    ]
    with _engine().connect() as connection:
        total = connection.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar()
        found = connection.execute(
            sa.select(*columns).where(*where).order_by(table.c.manifest_row).offset(offset).limit(limit)
        )
        rows = [dict(row) for row in found.mappings()]
    return {"total": int(total or 0), "offset": offset, "limit": limit, "rows": rows}


@app.get("/dags/{dag_id}/runs/{run_id}/files/{name}", dependencies=[run_access])
def batch_file(dag_id: str, run_id: str, name: str) -> StreamingResponse:
    if name not in FILES:
        raise HTTPException(404, f"no file {name!r}: one of {sorted(FILES)}")
    summary = run_summary(dag_id, run_id) or {}
    files = summary.get("files") or {}
    key = files.get(FILES[name])
    if not key:
        raise HTTPException(404, f"run {run_id!r} has no {name}")
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    body = S3Hook(aws_conn_id=AWS_CONN_ID).get_conn().get_object(Bucket=files["bucket"], Key=key)["Body"]
    suffix = name[name.rindex(".") :]
    return StreamingResponse(
        body.iter_chunks(1 << 16),
        media_type=MEDIA_TYPES[suffix],
        headers={"Content-Disposition": f'attachment; filename="{run_id.replace(":", "_")}-{name}"'},
    )


def device_history(serial: str) -> dict[str, Any]:
    """Every run that touched the serial number (outcome, reason, certificate, thing) and its things."""
    from include.inventory_schema import devices, row_outcomes

    with _engine().connect() as connection:
        runs = [
            dict(row)
            for row in connection.execute(
                sa.select(
                    row_outcomes.c.run_id,
                    row_outcomes.c.batch_id,
                    row_outcomes.c.manifest_row,
                    row_outcomes.c.model,
                    row_outcomes.c.thing_name,
                    row_outcomes.c.outcome,
                    row_outcomes.c.reason_code,
                    row_outcomes.c.reason,
                    row_outcomes.c.certificate_id,
                    row_outcomes.c.updated_at,
                )
                .where(row_outcomes.c.serial_number == serial)
                .order_by(row_outcomes.c.updated_at)
            ).mappings()
        ]
        things = [
            dict(row)
            for row in connection.execute(
                sa.select(
                    devices.c.thing_name,
                    devices.c.model,
                    devices.c.status,
                    devices.c.thing_arn,
                    devices.c.certificate_id,
                    devices.c.certificate_arn,
                    devices.c.run_id,
                    devices.c.provisioned_at,
                ).where(devices.c.serial_number == serial)
            ).mappings()
        ]
    return {"serial_number": serial, "runs": runs, "devices": things}


@app.get("/devices", response_class=HTMLResponse, dependencies=[pipeline_access])
def device_history_page(serial: str = Query("", max_length=128)) -> HTMLResponse:
    history = device_history(serial.strip()) if serial.strip() else None
    page = templates.get_template("device_history.html").render(
        serial=serial, history=history, dag_id=PIPELINE_DAG_ID
    )
    return HTMLResponse(page)


@app.get("/api/devices/{serial}", dependencies=[pipeline_access])
def device_history_json(serial: str) -> dict[str, Any]:
    history = device_history(serial)
    if not history["runs"] and not history["devices"]:
        raise HTTPException(404, f"no device with serial number {serial!r} in the inventory")
    return json.loads(json.dumps(history, default=str))
