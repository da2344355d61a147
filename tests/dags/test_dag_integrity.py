"""Every DAG parses without errors and follows the project's conventions (parse only, no DB)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.dags.airflow_support import DAGS_DIR

EXPECTED = {
    "provision_factory_batch",
    "provision_factory_batch_from_inbox",
    "scan_factory_inbox",
    "manage_factory_ca",
    "prepare_fleet_claim",
    "reconcile_fleet_devices",
    "manage_devices",
    "audit_drift",
}


@pytest.fixture(scope="module")
def dagbag():
    import os

    from airflow.models import DagBag

    # With a queue configured the inbox asset carries its SQS watcher; parse that shape.
    os.environ.setdefault("PIPELINE_INBOX_QUEUE_URL", "http://127.0.0.1:1/123456789012/factory-inbox")
    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors_and_every_dag_present(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) >= EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_conventions(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.catchup is False
    assert dag.tags and "iot" in dag.tags
    assert dag.doc_md and dag.doc_md.lstrip().startswith("#")
    assert dag.max_active_runs >= 1
    assert dag.start_date is not None
    assert dag.default_args["retries"] >= 1
    assert dag.default_args["retry_delay"] <= timedelta(minutes=1)
    assert dag.default_args["execution_timeout"] > timedelta(0)


def test_provision_params_form(dagbag):
    params = dagbag.dags["provision_factory_batch"].params
    specs = {name: params.get_param(name).schema for name in params}
    assert set(specs) == {"manifest", "product", "catalog", "dry_run", "max_devices"}
    for name in specs:
        param = params.get_param(name)
        assert param.schema.get("title") and param.description and param.schema.get("section")
    assert specs["manifest"]["type"] == "string"
    assert specs["product"]["type"] == ["null", "string"]
    assert specs["dry_run"]["type"] == "boolean"
    assert specs["max_devices"] == {**specs["max_devices"], "type": ["null", "integer"], "minimum": 1}


def test_params_are_validated(dagbag):
    params = dagbag.dags["provision_factory_batch"].params
    assert params.get_param("max_devices").resolve(5) == 5
    assert params.get_param("product").resolve(None) is None
    assert params.get_param("product").resolve("GW-200") == "GW-200"
    assert params.get_param("product").schema["enum"] == [
        None,
        "CM-400",
        "GW-200",
        "RL-500",
        "SN-300",
        "TH-100",
    ]
    from airflow.sdk.exceptions import ParamValidationError

    refused = (("max_devices", 0), ("dry_run", "yes"), ("product", "no spaces allowed"), ("manifest", ""))
    for name, bad in refused:
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)


def test_provision_shape(dagbag):
    dag = dagbag.dags["provision_factory_batch"]
    order = [
        "intake",
        "validate",
        "preflight",
        "chunk_plan",
        "issue_credentials",
        "write_parameter_files",
        "register",
        "reconcile",
        "summarize",
    ]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids or upstream == "preflight"
    assert "continue_unless_dry_run" in dag.get_task("preflight").downstream_task_ids
    short_circuited = dag.get_task("continue_unless_dry_run").downstream_task_ids
    assert {"chunk_plan", "write_parameter_files"} <= short_circuited
    register = dag.get_task("register")
    assert register.partial_kwargs["pool"] == "iot_bulk_registration"
    assert dag.get_task("summarize").outlets[0].name == "provisioned_factory_batches"
    for mapped in ("issue_credentials", "register", "reconcile"):
        assert dag.get_task(mapped).partial_kwargs.get("map_index_template")
    assert dag.get_task("write_parameter_files").trigger_rule == "none_failed"
    assert dag.get_task("summarize").trigger_rule == "none_failed"


def test_inbox_dags(dagbag):
    event_dag = dagbag.dags["provision_factory_batch_from_inbox"]
    from dags.provision_factory_batch_from_inbox import FACTORY_INBOX

    assert list(event_dag.timetable.asset_condition.objects) == [FACTORY_INBOX]
    watchers = FACTORY_INBOX.watchers
    assert [type(w.trigger).__name__ for w in watchers] == ["SqsSensorTrigger"]
    scan = dagbag.dags["scan_factory_inbox"]
    assert type(scan.timetable).__name__ == "DeltaTriggerTimetable"
    for dag in (event_dag, scan):
        trigger = dag.get_task("start_provisioning_runs.start_provisioning_run")
        assert trigger.partial_kwargs["trigger_dag_id"] == "provision_factory_batch"
        assert trigger.partial_kwargs["skip_when_already_exists"] is True


def test_unit_task_bodies():
    from dags.provision_factory_batch import chunk_plan, continue_unless_dry_run

    assert continue_unless_dry_run.function({"dry_run": True}) is False
    assert continue_unless_dry_run.function({"dry_run": False}) is True
    assert chunk_plan.function({"chunks": [{"index": 0}]}) == [{"index": 0}]
