"""Test helpers: what the emulated account holds, read through boto3 like anyone would, and runs of the
lifecycle and audit stages without Airflow."""

from __future__ import annotations

import itertools
from typing import Any

from include import drift, lifecycle, lifecycle_report
from include.lifecycle_store import Selection
from include.settings import Settings

_runs = itertools.count(1)


def snapshot(iot: Any) -> dict[str, Any]:
    """Things (with principals), certificates (with status, policies and things): the whole account."""
    things = {
        t["thingName"]: sorted(iot.list_thing_principals(thingName=t["thingName"])["principals"])
        for page in iot.get_paginator("list_things").paginate()
        for t in page["things"]
    }
    certificates = {}
    for page in iot.get_paginator("list_certificates").paginate():
        for c in page["certificates"]:
            arn = c["certificateArn"]
            policies = [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]]
            holders = iot.list_principal_things(principal=arn)["things"]
            certificates[c["certificateId"]] = (c["status"], sorted(policies), sorted(holders))
    return {"things": things, "certificates": certificates}


def act(
    iot: Any, s3: Any, settings: Settings, action: str, ca_pems: tuple[str, str] | None = None, **options: Any
) -> dict[str, Any]:
    """One manage_devices run through the domain stages: plan, every chunk, summary."""
    selection = Selection(
        **{k: options.pop(k) for k in ("batch_id", "run_id", "serials", "outcome") if k in options}
    )
    run_id = options.pop("lifecycle_run_id", f"manual__lifecycle_{next(_runs)}")
    plan = lifecycle.plan(s3, settings, run_id=run_id, action=action, selection=selection, **options)
    results = [lifecycle.run_chunk(iot, s3, settings, plan, c, ca_pems=ca_pems) for c in plan.chunks]
    return lifecycle_report.summarize(s3, settings, plan, results)


def audit(
    iot: Any, s3: Any, settings: Settings, batch_id: str | None = None, repair: bool = False
) -> dict[str, Any]:
    """One audit_drift run through the domain stages."""
    plan = drift.plan_audit(
        s3, settings, run_id=f"manual__audit_{next(_runs)}", batch_id=batch_id, repair=repair
    )
    results = [drift.audit_chunk(iot, s3, settings, plan, c) for c in plan.chunks]
    return drift.report(s3, settings, plan, [*results, drift.find_unknown(iot, s3, settings, plan)])


def drift_rows(s3: Any, summary: dict[str, Any]) -> list[dict[str, str]]:
    import csv
    import io

    body = s3.get_object(Bucket=summary["files"]["bucket"], Key=summary["files"]["drift"])["Body"].read()
    return list(csv.DictReader(io.StringIO(body.decode())))
