"""Settings from an Airflow connection and Variable (env fallback), and the batch-end notification text."""

from __future__ import annotations

import pytest
from airflow.models.connection import Connection

from include.settings import Settings
from plugins.iot_provisioning.notifications import batch_message
from plugins.iot_provisioning.settings_source import inventory_url_from_connection


def test_overrides_win_over_the_environment_and_are_checked():
    environ = {"PIPELINE_BUCKET": "from-env", "PIPELINE_CHUNK_SIZE": "100", "STATE_DIR": "/tmp/s"}
    settings = Settings.from_sources({"chunk_size": 2500, "inventory_url": "postgresql://h/db"}, environ)
    assert (settings.bucket, settings.chunk_size, settings.inventory_url) == (
        "from-env",
        2500,
        "postgresql://h/db",
    )
    assert Settings.from_sources({}, environ) == Settings.from_env(environ)
    with pytest.raises(ValueError, match="PIPELINE_CHUNK_SIZE must be at least 1"):
        Settings.from_sources({"chunk_size": 0}, environ)
    with pytest.raises(ValueError, match="unknown pipeline settings"):
        Settings.from_sources({"chunksize": 1}, environ)


def test_the_inventory_connection_becomes_a_psycopg2_url():
    connection = Connection(
        conn_id="factory_inventory", conn_type="postgres", host="db", port=5432, schema="inventory", login="u"
    )
    assert inventory_url_from_connection(connection) == "postgresql+psycopg2://u@db:5432/inventory"
    assert inventory_url_from_connection(Connection(conn_id="x", uri="sqlite:///tmp/i.db")).startswith(
        "sqlite"
    )


def test_the_notification_says_how_the_batch_ended_and_where_the_report_is():
    summary = {
        "rows": 1000,
        "provisioned": 984,
        "failed": 0,
        "quarantined": 16,
        "skipped": 0,
        "accounted": True,
        "source": "s3://b/inbox/m.csv",
        "reasons": {"invalid_mac": 16},
    }
    subject, body = batch_message(
        "provision_factory_batch", "manual__1+00:00", "success", summary, "http://af/"
    )
    assert subject == "Factory batch success: 984/1000 provisioned, 0 failed, 16 quarantined"
    assert 'quarantine reasons: {"invalid_mac": 16}' in body
    assert "http://af/factory/dags/provision_factory_batch/runs/manual__1%2B00%3A00/report" in body
    subject, body = batch_message("provision_factory_batch", "r", "failed", None, "http://af")
    assert subject == "Factory batch failed: r" and "ended failed" in body
