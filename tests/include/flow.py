"""Test helpers: prepare an emulated account as the bootstrap would, and run the domain stages in order."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from include import pipeline
from include.catalog import load_catalog
from include.certificate_authority import CertificateAuthority
from include.key_bundle import generate_recipient
from include.reports import download_report_lines
from include.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "manifest.csv"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}],
}


def make_settings(tmp_path: Path, inventory_url: str, **overrides: Any) -> tuple[Settings, Path]:
    """Settings for a test, plus the factory-line private key path."""
    private_key, public_key = generate_recipient(tmp_path / "factory-line")
    values: dict[str, Any] = {
        "inventory_url": inventory_url,
        "bundle_recipient_public_key": str(public_key),
        "chunk_size": 400,
        "workers": 2,
    }
    values.update(overrides)
    return Settings(**values), private_key


def prepare_account(
    iot: Any, s3: Any, settings: Settings, ca: CertificateAuthority, skip: set[str] = frozenset()
) -> None:
    """Bucket, thing types, groups, policies of the catalog and the factory CA (registered, ACTIVE)."""
    s3.create_bucket(Bucket=settings.bucket)
    catalog = load_catalog(settings.catalog_path)
    for product in catalog.products.values():
        if product.thing_type and product.thing_type not in skip:
            iot.create_thing_type(thingTypeName=product.thing_type)
        for group in product.thing_groups:
            if group not in skip:
                iot.create_thing_group(thingGroupName=group)
        if product.policy not in skip:
            iot.create_policy(policyName=product.policy, policyDocument=json.dumps(POLICY))
    code = iot.get_registration_code()["registrationCode"]
    iot.register_ca_certificate(
        caCertificate=ca.certificate_pem,
        verificationCertificate=ca.issue_verification_certificate(code),
        setAsActive=True,
    )


def register_group(iot: Any, s3: Any, settings: Settings, batch: dict, group: dict) -> dict:
    """Start (or resume) the group's registration task, wait for it, reconcile its reports."""
    task_id = pipeline.registration_task_for(settings, batch, group["group"])
    if task_id is None:
        task_id = iot.start_thing_registration_task(
            templateBody=pipeline.template_body(s3, settings, group),
            inputFileBucket=group["bucket"],
            inputFileKey=group["params_key"],
            roleArn=settings.registration_role_arn,
        )["taskId"]
        pipeline.record_registration_task(settings, batch, group["group"], task_id)
    deadline = time.monotonic() + 120
    while True:
        task = iot.describe_thing_registration_task(taskId=task_id)
        if task["status"] not in ("InProgress", "Cancelling") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    registration = {
        "task_id": task_id,
        "status": task["status"],
        "success_count": task.get("successCount", 0),
        "failure_count": task.get("failureCount", 0),
        "message": task.get("message"),
    }
    pipeline.record_registration_status(settings, batch, group["group"], registration)

    def lines(report_type: str):
        pages = iot.get_paginator("list_thing_registration_task_reports").paginate(
            taskId=task_id, reportType=report_type
        )
        links = [link for page in pages for link in page.get("resourceLinks", [])]
        return itertools.chain.from_iterable(download_report_lines(link) for link in links)

    return pipeline.reconcile(s3, settings, batch, group, registration, lines("RESULTS"), lines("ERRORS"))


def run_flow(
    iot: Any, s3: Any, settings: Settings, ca: CertificateAuthority, source: str, run_id: str, **options: Any
) -> dict:
    """intake -> validate -> preflight -> credentials per chunk -> parameter files -> register -> summary."""
    batch = pipeline.intake(s3, settings, source, run_id=run_id, **options)
    pipeline.validate(s3, settings, batch)
    checked = pipeline.preflight(s3, iot, settings, batch, ca_certificate_pem=ca.certificate_pem)
    reconciled = []
    if not checked["dry_run"]:
        chunks = [
            pipeline.issue_credentials(s3, settings, batch, chunk, ca.certificate_pem, ca.private_key_pem())
            for chunk in checked["chunks"]
        ]
        for group in pipeline.write_parameter_files(s3, settings, batch, chunks):
            reconciled.append(register_group(iot, s3, settings, batch, group))
    summary = pipeline.summarize(s3, settings, batch)
    summary["_batch"], summary["_reconciled"] = batch, reconciled
    return summary
