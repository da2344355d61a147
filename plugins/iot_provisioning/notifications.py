"""Batch-end notifications through Airflow's own notifiers, configured in an Airflow Variable, not in code.

The DAG attaches ``BatchEndNotifier`` to its success and failure callbacks. When a run ends it reads the
Variable ``factory_notifications`` (Admin > Variables), for example::

    {"sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:factory-batches",
     "smtp_to": ["line-lead@example.com"], "smtp_conn_id": "smtp_default",
     "from_email": "airflow@example.com"}

and sends the batch's outcome (counts, reasons, the report's address) with the amazon provider's
``SnsNotifier`` (connection ``aws_default``) and/or the smtp provider's ``SmtpNotifier``. Without the
Variable, or with neither key, nothing is sent. A failing notification is logged by Airflow and never
changes the run's state.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import quote

from airflow.sdk.bases.notifier import BaseNotifier

from plugins.iot_provisioning.connections import AWS_CONN_ID

NOTIFICATIONS_VARIABLE = "factory_notifications"
log = logging.getLogger(__name__)


def batch_message(
    dag_id: str, run_id: str, state: str, summary: dict[str, Any] | None, base_url: str
) -> tuple[str, str]:
    """(subject, body) of a batch-end notification: plain data, testable without Airflow."""
    report = f"{base_url.rstrip('/')}/factory/dags/{dag_id}/runs/{quote(run_id, safe='')}/report"
    if not summary:
        return (
            f"Factory batch {state}: {run_id}",
            f"Run {run_id} of {dag_id} ended {state}.\nReport: {report}\n",
        )
    counts = {key: summary.get(key, 0) for key in ("rows", "provisioned", "failed", "quarantined", "skipped")}
    subject = (
        f"Factory batch {state}: {counts['provisioned']}/{counts['rows']} provisioned, "
        f"{counts['failed']} failed, {counts['quarantined']} quarantined"
    )
    lines = [
        f"Run {run_id} of {dag_id} ended {state}.",
        f"Manifest: {summary.get('source')}",
        *(f"{key}: {value}" for key, value in counts.items()),
        f"accounted: {summary.get('accounted')}",
    ]
    for label, key in (("quarantine reasons", "reasons"), ("AWS errors", "errors")):
        if summary.get(key):
            lines.append(f"{label}: {json.dumps(summary[key], sort_keys=True)}")
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    lines.append(f"Report: {report}")
    return subject[:100], "\n".join(lines) + "\n"


class BatchEndNotifier(BaseNotifier):
    """Tells whoever ``factory_notifications`` names how a batch ended (SNS and/or e-mail)."""

    template_fields = ()

    def __init__(self, *, state: str, variable: str = NOTIFICATIONS_VARIABLE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.variable = variable

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render (no template fields). Airflow's own rendering asks the context's DAG for a
        jinja environment, which a run by dag.test (make run, make dag) gives as a SerializedDAG that has
        none: the callback failed there before it sent anything (Airflow 3.3)."""

    def _configuration(self) -> dict[str, Any]:
        from airflow.sdk import Variable

        raw = Variable.get(self.variable, default=None)
        if not raw:
            return {}
        return raw if isinstance(raw, dict) else json.loads(raw)

    def notify(self, context: Any) -> None:
        try:
            configuration = self._configuration()
        except Exception:  # no Variable service here (dag.test) or a malformed Variable: say so, send nothing
            log.exception("could not read Variable %s; no batch-end notification sent", self.variable)
            return
        if not configuration.get("sns_topic_arn") and not configuration.get("smtp_to"):
            return
        dag_run = context["dag_run"]
        summary = _summary(dag_run.run_id)
        base_url = os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080")
        subject, body = batch_message(dag_run.dag_id, dag_run.run_id, self.state, summary, base_url)
        if configuration.get("sns_topic_arn"):
            from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

            SnsNotifier(
                aws_conn_id=configuration.get("aws_conn_id", AWS_CONN_ID),
                target_arn=configuration["sns_topic_arn"],
                subject=subject,
                message=body,
            ).notify(context)
        if configuration.get("smtp_to"):
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            SmtpNotifier(
                to=configuration["smtp_to"],
                from_email=configuration.get("from_email"),
                smtp_conn_id=configuration.get("smtp_conn_id", "smtp_default"),
                subject=subject,
                html_content=f"<pre>{_escape(body)}</pre>",
            ).notify(context)


def _summary(run_id: str) -> dict[str, Any] | None:
    from include.pipeline import run_summary
    from plugins.iot_provisioning.settings_source import pipeline_settings

    try:
        return run_summary(pipeline_settings(), run_id)
    except Exception:  # the notification still goes out, without counts
        log.exception("could not read the summary of %s", run_id)
        return None


def _escape(text: str) -> str:
    from html import escape

    return escape(text)
