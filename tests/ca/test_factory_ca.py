"""include.factory_ca against the emulator over HTTP: create, import, rotate, retire, report, JITP."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from include import factory_ca
from include.catalog import load_catalog
from include.certificate_authority import CertificateAuthority, certificate_id
from include.errors import CertificateAuthorityError
from include.settings import Settings

SECRET = "airflow/connections/factory_ca"


@pytest.fixture
def aws(fresh_emulator):
    return fresh_emulator.client("iot"), fresh_emulator.client("secretsmanager")


def test_create_then_rotate_keeps_both_active_and_the_new_one_current(aws):
    iot, secrets = aws
    first = CertificateAuthority.create_development("Factory CA 1")
    created = factory_ca.create_or_import(iot, secrets, SECRET, first)
    first_id = certificate_id(first.certificate)
    assert created["certificate_id"] == first_id and created["registered"]
    with pytest.raises(CertificateAuthorityError, match="use rotate"):
        factory_ca.create_or_import(iot, secrets, SECRET, CertificateAuthority.create_development("other"))

    planned = factory_ca.rotate(iot, secrets, SECRET, common_name="Factory CA 2", dry_run=True)
    assert planned["dry_run"] and len(iot.list_ca_certificates()["certificates"]) == 1
    rotated = factory_ca.rotate(iot, secrets, SECRET, common_name="Factory CA 2", validity_days=400)
    second_id = rotated["new_certificate_id"]
    current = factory_ca.read_secret(secrets, SECRET)
    assert certificate_id(current.certificate) == second_id != first_id
    archived = factory_ca.read_secret(secrets, rotated["archived_in"])
    assert certificate_id(archived.certificate) == first_id
    statuses = {c["certificateId"]: c["status"] for c in iot.list_ca_certificates()["certificates"]}
    assert statuses == {first_id: "ACTIVE", second_id: "ACTIVE"}

    found = factory_ca.report(iot, {first_id: 12, second_id: 3}, second_id)
    by_id = {ca["certificate_id"]: ca for ca in found["cas"]}
    assert by_id[first_id]["devices"] == 12 and by_id[second_id]["current"] and not by_id[first_id]["current"]
    assert 398 <= by_id[second_id]["days_left"] <= 400 and found["expiring"] == []
    # Within 90 days of its end a CA is flagged (the scheduled run of the DAG fails on it).
    soon = factory_ca.report(iot, {}, second_id, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=350))
    assert soon["expiring"] == [second_id]

    with pytest.raises(CertificateAuthorityError, match="current factory CA"):
        factory_ca.retire(iot, secrets, SECRET, second_id)
    assert factory_ca.retire(iot, secrets, SECRET, first_id, dry_run=True)["was"] == "ACTIVE"
    factory_ca.retire(iot, secrets, SECRET, first_id)
    assert (
        iot.describe_ca_certificate(certificateId=first_id)["certificateDescription"]["status"] == "INACTIVE"
    )


def test_import_reads_a_secret_and_a_bad_secret_is_refused_without_its_value(aws):
    iot, secrets = aws
    mine = CertificateAuthority.create_development("Our PKI team's CA")
    secrets.create_secret(Name="imports/our-ca", SecretString=factory_ca.connection_secret(mine))
    imported = factory_ca.read_secret(secrets, "imports/our-ca")
    factory_ca.create_or_import(iot, secrets, SECRET, imported)
    assert certificate_id(factory_ca.read_secret(secrets, SECRET).certificate) == certificate_id(
        mine.certificate
    )
    secrets.create_secret(
        Name="imports/broken", SecretString=json.dumps({"password": "-----BEGIN PRIVATE KEY-----x"})
    )
    with pytest.raises(CertificateAuthorityError) as refused:
        factory_ca.read_secret(secrets, "imports/broken")
    assert "PRIVATE KEY" not in str(refused.value)
    assert factory_ca.read_secret(secrets, "imports/none") is None
    with pytest.raises(CertificateAuthorityError, match="no current factory CA"):
        factory_ca.rotate(iot, secrets, "no/such/secret", common_name="x")


def test_a_rotated_ca_can_carry_just_in_time_provisioning(aws):
    iot, secrets = aws
    factory_ca.create_or_import(iot, secrets, SECRET, CertificateAuthority.create_development())
    product = load_catalog(Settings().catalog_path).products["TH-100"]
    config = factory_ca.jitp_registration_config(product, Settings().registration_role_arn)
    rotated = factory_ca.rotate(iot, secrets, SECRET, common_name="JITP CA", registration_config=config)
    described = iot.describe_ca_certificate(certificateId=rotated["new_certificate_id"])
    body = json.loads(described["registrationConfig"]["templateBody"])
    assert body["Resources"]["thing"]["Properties"]["ThingTypeName"] == "Thermostat"
    assert described["registrationConfig"]["roleArn"] == Settings().registration_role_arn
