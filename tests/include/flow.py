"""Test helpers: prepare an emulated account as the bootstrap would, and run the domain stages in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from include import pipeline, registration
from include.catalog import load_catalog
from include.certificate_authority import CertificateAuthority
from include.inventory import Inventory
from include.key_bundle import generate_recipient
from include.records import Batch, Reconciled, RegistrationUnit
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
    products = load_catalog(settings.catalog_path).products.values()
    for thing_type in sorted({p.thing_type for p in products if p.thing_type} - skip):
        iot.create_thing_type(thingTypeName=thing_type)
    for group in sorted({g for p in products for g in p.thing_groups} - skip):
        iot.create_thing_group(thingGroupName=group)
    for policy in sorted({name for p in products for name in (p.policy, *p.extra_policies)} - skip):
        iot.create_policy(policyName=policy, policyDocument=json.dumps(POLICY))
    code = iot.get_registration_code()["registrationCode"]
    iot.register_ca_certificate(
        caCertificate=ca.certificate_pem,
        verificationCertificate=ca.issue_verification_certificate(code),
        setAsActive=True,
    )


def register_unit(iot: Any, s3: Any, settings: Settings, batch: Batch, unit: RegistrationUnit) -> Reconciled:
    """What the register operator and reconcile task do, through the same domain code."""
    inventory = Inventory(settings.inventory_url)
    state = registration.run_to_end(
        iot, s3, inventory, batch, unit, settings.registration_role_arn, poll=0.05, timeout=120
    )
    return pipeline.reconcile_task(iot, s3, settings, batch, unit, state)


def run_flow(
    iot: Any,
    s3: Any,
    settings: Settings,
    ca: CertificateAuthority,
    source: str,
    run_id: str,
    *,
    is_live: Any = None,
    acm_pca: Any = None,
    **options: Any,
) -> dict:
    """intake -> validate -> preflight -> credentials per chunk -> parameter files -> register -> summary."""
    batch = pipeline.intake(s3, settings, source, run_id=run_id, **options)
    pipeline.validate(s3, settings, batch)
    checks = pipeline.preflight(
        s3, iot, settings, batch, ca_certificate_pem=ca.certificate_pem, is_live=is_live, acm_pca=acm_pca
    )
    reconciled = []
    if not checks.dry_run:
        results = [
            pipeline.issue_credentials(
                s3, settings, batch, chunk, ca.certificate_pem, ca.private_key_pem(), iot=iot, acm_pca=acm_pca
            )
            for chunk in checks.chunks
        ]
        for unit in pipeline.write_parameter_files(s3, settings, batch, checks, results):
            reconciled.append(register_unit(iot, s3, settings, batch, unit))
    summary = pipeline.summarize(s3, settings, batch)
    summary["_batch"], summary["_checks"], summary["_reconciled"] = batch, checks, reconciled
    return summary
