"""Private keys are only in the POST /things response: never in a log line, the inventory or S3."""

from __future__ import annotations

import logging

import pytest

from include.inventory_schema import engine_for


@pytest.mark.parametrize(
    ("template", "extra"),
    [
        ("cdf-own-ca", None),
        ("cdf-aws-issued", None),
        ("cdf-acmpca", {"acmpcaCaAlias": "dev", "awsiotCaAlias": "dev"}),
        ("TH-100", None),
    ],
)
def test_the_key_is_only_in_the_response(
    cdf_api, caplog: pytest.LogCaptureFixture, template: str, extra: dict | None
) -> None:
    caplog.set_level(logging.INFO)  # botocore's DEBUG logs bodies, ours never log key material at any level
    thing = f"secret-{template}"
    parameters = {"serial_number": thing} if template == "TH-100" else {"ThingName": thing}
    body = {"provisioningTemplateId": template, "parameters": parameters}
    if extra:
        body["cdfProvisioningParameters"] = extra
    response = cdf_api.call("POST", "/things", body)
    assert response.status_code == 201, response.text
    key = response.json()["privateKey"]
    secret = key.splitlines()[1]  # a line of the key's base64: any copy of the key contains it
    assert all(secret not in record.getMessage() for record in caplog.records)
    engine = engine_for(cdf_api.settings.inventory_url)
    with engine.connect() as connection:
        for table in ("devices", "row_outcomes", "runs", "batches"):
            dump = repr(connection.exec_driver_sql(f"SELECT * FROM {table}").fetchall())
            assert secret not in dump, table
    for page in cdf_api.s3.get_paginator("list_objects_v2").paginate(Bucket=cdf_api.settings.bucket):
        for item in page.get("Contents", []):
            if item["Key"].endswith((".fkb",)):
                continue  # the encrypted bundles: ciphertext only
            data = cdf_api.s3.get_object(Bucket=cdf_api.settings.bucket, Key=item["Key"])["Body"].read()
            assert secret.encode() not in data, item["Key"]
