"""Lifecycle actions on a provisioned batch, through the domain stages against the emulator over HTTP:
the safe order, eventual-consistency retries, dry runs, resumability, rekey and its key bundle."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from include import lifecycle
from include.inventory import Inventory
from include.inventory_schema import device_actions, devices
from include.key_bundle import open_bundle
from include.lifecycle_files import ActionFiles
from include.lifecycle_registry import RateLimiter
from include.lifecycle_steps import Backoff
from include.lifecycle_store import LifecycleStore, Selection
from tests.lifecycle.conftest import Provisioned
from tests.lifecycle.registry import act, snapshot

NO_WAIT = Backoff(attempts=12, first=0.05, cap=0.4)


def inventory_devices(settings: Any) -> dict[str, dict[str, Any]]:
    with Inventory(settings.inventory_url).engine.connect() as connection:
        return {r["thing_name"]: dict(r) for r in connection.execute(sa.select(devices)).mappings()}


def test_delete_removes_the_batch_completely_and_a_second_run_changes_nothing(
    provisioned: Provisioned,
) -> None:
    p = provisioned
    before = snapshot(p.iot)
    assert len(before["things"]) == 12 and len(before["certificates"]) == 12

    summary = act(p.iot, p.s3, p.settings, "delete", batch_id=p.batch_id)
    assert (summary["devices"], summary["done"], summary["failed"], summary["accounted"]) == (12, 12, 0, True)
    assert snapshot(p.iot) == {"things": {}, "certificates": {}}
    policies = p.iot.list_targets_for_policy(policyName="FactoryDevicePolicy")["targets"]
    assert policies == []  # the policy itself stays: it is the product's, shared
    records = inventory_devices(p.settings)
    assert {r["status"] for r in records.values()} == {"deleted"}
    assert all(r["lifecycle_action"] == "delete" and r["lifecycle_at"] for r in records.values())
    assert all(r["lifecycle_reason"] for r in records.values())

    again = act(p.iot, p.s3, p.settings, "delete", batch_id=p.batch_id)
    assert (again["done"], again["unchanged"], again["calls"]) == (0, 12, {})


def test_delete_retries_eventual_consistency_conflicts_and_ends_clean(provisioned: Provisioned) -> None:
    p = provisioned
    p.emulator.faults.update({"detach_lag": 0.3})
    try:
        summary = act(p.iot, p.s3, p.settings, "delete", batch_id=p.batch_id)
    finally:
        p.emulator.faults.reset()
    assert summary["done"] == 12 and summary["failed"] == 0
    assert summary["retries"] > 0  # refused right after their detach, then accepted
    assert summary["calls"]["delete_certificate"] == 12 + summary["retries"] - _thing_retries(summary)
    assert snapshot(p.iot) == {"things": {}, "certificates": {}}
    steps = LifecycleStore(Inventory(p.settings.inventory_url)).actions(summary["run_id"])
    assert sum(a["retries"] for a in steps) == summary["retries"]


def _thing_retries(summary: dict[str, Any]) -> int:
    return summary["calls"]["delete_thing"] - 12


def test_a_dry_run_lists_exactly_what_would_change_and_changes_nothing(provisioned: Provisioned) -> None:
    p = provisioned
    before = snapshot(p.iot)
    summary = act(p.iot, p.s3, p.settings, "delete", batch_id=p.batch_id, dry_run=True)
    assert (summary["planned"], summary["done"], summary["dry_run"]) == (12, 0, True)
    assert snapshot(p.iot) == before
    assert {r["status"] for r in inventory_devices(p.settings).values()} == {"provisioned"}
    assert not {"update_certificate", "delete_thing", "detach_policy"} & set(summary["calls"])

    body = p.s3.get_object(Bucket=p.settings.bucket, Key=summary["files"]["changes"])["Body"].read()
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    thing = sorted(before["things"])[0]
    certificate = before["things"][thing][0].rsplit("/", 1)[1]
    policy = before["certificates"][certificate][1][0]
    assert [r["step"] for r in rows if r["thing_name"] == thing] == [
        f"deactivate certificate {certificate} (ACTIVE -> INACTIVE)",
        f"detach policy {policy} from certificate {certificate}",
        f"detach certificate {certificate} from {thing}",
        f"delete certificate {certificate}",
        f"delete thing {thing}",
    ]
    assert {r["state"] for r in rows} == {"planned"}

    done = act(p.iot, p.s3, p.settings, "delete", batch_id=p.batch_id)
    assert done["changes"] == summary["changes"]  # the dry run's list was exactly what the run did


def test_deactivate_reactivate_revoke(provisioned: Provisioned) -> None:
    p = provisioned
    serials = sorted(r["serial_number"] for r in inventory_devices(p.settings).values())[:3]

    def statuses() -> dict[str, str]:
        return {cid: status for cid, (status, _, _) in snapshot(p.iot)["certificates"].items()}

    assert act(p.iot, p.s3, p.settings, "deactivate", serials=serials)["done"] == 3
    assert sorted(statuses().values()).count("INACTIVE") == 3
    again = act(p.iot, p.s3, p.settings, "deactivate", serials=serials)
    assert (again["unchanged"], again["calls"]) == (3, {})  # the inventory knows: no call at all
    assert act(p.iot, p.s3, p.settings, "reactivate", serials=serials)["done"] == 3
    assert set(statuses().values()) == {"ACTIVE"}

    revoked = act(p.iot, p.s3, p.settings, "revoke", batch_id=p.batch_id)
    assert revoked["done"] == 12 and set(statuses().values()) == {"REVOKED"}
    refused = act(p.iot, p.s3, p.settings, "reactivate", serials=serials)
    assert (refused["failed"], refused["errors"]) == (3, {"CertificateRevoked": 3})
    records = inventory_devices(p.settings)
    assert {r["certificate_status"] for r in records.values()} == {"REVOKED"}


def test_selections(provisioned: Provisioned) -> None:
    p = provisioned
    store = LifecycleStore(Inventory(p.settings.inventory_url))
    assert store.select(Selection(run_id="manual__provision")).num_rows == 12
    assert store.select(Selection(run_id="manual__other")).num_rows == 0
    assert store.select(Selection(batch_id=p.batch_id, outcome="failed")).num_rows == 0
    one = sorted(inventory_devices(p.settings).values(), key=lambda r: r["thing_name"])[0]
    assert store.select(Selection(serials=(one["serial_number"], "nope"))).column(
        "thing_name"
    ).to_pylist() == [one["thing_name"]]
    with pytest.raises(ValueError, match="needs a batch id"):
        store.select(Selection())
    with pytest.raises(ValueError, match="action must be one of"):
        lifecycle.plan(p.s3, p.settings, run_id="r", action="explode", selection=Selection(batch_id="x"))


class DiesAfter:
    """An IoT client whose connection breaks after `limit` changing requests (a worker lost mid-chunk)."""

    def __init__(self, iot: Any, limit: int) -> None:
        self.iot, self.limit, self.changes = iot, limit, 0
        self.things: list[str] = []

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.iot, name)

        def wrapped(**kwargs: Any) -> Any:
            if not name.startswith(("list_", "describe_")):
                self.changes += 1
                if self.changes > self.limit:
                    raise ConnectionError("the worker lost its connection")
            if "thingName" in kwargs:
                self.things.append(kwargs["thingName"])
            return call(**kwargs)

        return wrapped


def test_a_chunk_that_dies_resumes_without_touching_a_finished_device_again(provisioned: Provisioned) -> None:
    p = provisioned
    plan = lifecycle.plan(
        p.s3, p.settings, run_id="manual__dies", action="delete", selection=Selection(batch_id=p.batch_id)
    )
    chunk = plan.chunks[0]  # 5 devices, one wave; each needs 5 changes
    dying = DiesAfter(p.iot, limit=12)
    with pytest.raises(ConnectionError):
        lifecycle.run_chunk(dying, p.s3, p.settings, plan, chunk, backoff=NO_WAIT)
    store = LifecycleStore(Inventory(p.settings.inventory_url))
    assert {a["state"] for a in store.actions("manual__dies")} == {"started"}  # the wave was in flight

    resumed = lifecycle.run_chunk(p.iot, p.s3, p.settings, plan, chunk, backoff=NO_WAIT)
    assert (resumed.done, resumed.resumed) == (5, 0)
    # The 12 changes the first try made are not made again (the registry shows them done): of the 25 the
    # wave needs (5 devices x deactivate, detach policy, detach, delete certificate, delete thing), 13 remain.
    changes = {op: n for op, n in resumed.calls.items() if not op.startswith(("list_", "describe_"))}
    assert sum(changes.values()) == 25 - 12
    assert changes["delete_certificate"] == changes["delete_thing"] == 5

    retried = lifecycle.run_chunk(DiesAfter(p.iot, limit=0), p.s3, p.settings, plan, chunk, backoff=NO_WAIT)
    assert (retried.resumed, retried.calls) == (5, {})  # every device final: not one request
    with Inventory(p.settings.inventory_url).engine.connect() as connection:
        count = connection.execute(
            sa.select(sa.func.count())
            .select_from(device_actions)
            .where(device_actions.c.run_id == "manual__dies")
        ).scalar()
    assert count == 5


def test_a_certificate_another_thing_holds_is_only_detached(provisioned: Provisioned) -> None:
    p = provisioned
    record = next(r for r in inventory_devices(p.settings).values() if r["model"] == "TH-100")
    p.iot.create_thing(thingName="bystander")
    p.iot.attach_thing_principal(thingName="bystander", principal=record["certificate_arn"])

    refused = act(p.iot, p.s3, p.settings, "deactivate", serials=[record["serial_number"]])
    assert refused["errors"] == {"SharedCertificate": 1}
    deleted = act(p.iot, p.s3, p.settings, "delete", serials=[record["serial_number"]])
    assert deleted["done"] == 1
    after = snapshot(p.iot)
    assert record["thing_name"] not in after["things"]
    assert after["certificates"][record["certificate_id"]] == (
        "ACTIVE",
        ["FactoryDevicePolicy"],
        ["bystander"],
    )


def test_rekey_issues_new_certificates_and_keys_then_deactivates_the_old(provisioned: Provisioned) -> None:
    p = provisioned
    before = inventory_devices(p.settings)
    gateways = sorted(n for n, r in before.items() if r["model"] == "GW-200")
    summary = act(p.iot, p.s3, p.settings, "rekey", ca_pems=p.ca_pems, batch_id=p.batch_id)
    assert (summary["done"], summary["failed"], summary["errors"]) == (
        12 - len(gateways),
        len(gateways),
        {"NoNewCsr": len(gateways)},
    )

    after = inventory_devices(p.settings)
    account = snapshot(p.iot)
    files = ActionFiles(p.settings.bucket, summary["run_id"])
    keys = {}
    certificate = Path(p.settings.bundle_recipient_public_key).read_bytes()
    assert summary["files"]["bundles"] == [files.bundle(0), files.bundle(1), files.bundle(2)]
    for key in summary["files"]["bundles"]:
        bundle = p.s3.get_object(Bucket=p.settings.bucket, Key=key)["Body"].read()
        keys.update(
            {r["thing_name"]: r for r in open_bundle(bundle, p.recipient_key.read_bytes(), certificate)}
        )
    for name, record in after.items():
        if name in gateways:
            assert record["certificate_id"] == before[name]["certificate_id"]
            continue
        old, new = before[name]["certificate_id"], record["certificate_id"]
        assert new != old and record["certificate_status"] == "ACTIVE"
        assert account["certificates"][new] == ("ACTIVE", ["FactoryDevicePolicy"], [name])
        assert account["certificates"][old][0] == "INACTIVE"
        assert sorted(account["things"][name]) == sorted(
            [record["certificate_arn"], before[name]["certificate_arn"]]
        )
        assert keys[name]["certificate_id"] == new and "PRIVATE KEY" in keys[name]["private_key_pem"]


def _csr(thing_name: str) -> tuple[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key.public_key()


def test_rekey_of_device_csr_products_signs_the_devices_new_csrs(provisioned: Provisioned) -> None:
    from cryptography import x509

    from include.csv_safety import write_csv

    p = provisioned
    before = inventory_devices(p.settings)
    gateways = sorted(n for n, r in before.items() if r["model"] == "GW-200")
    new_keys = {}
    rows = []
    for name in gateways:
        pem, public_key = _csr(name)
        new_keys[name] = public_key
        rows.append((name, pem))
    p.s3.put_object(
        Bucket=p.settings.bucket, Key="uploads/new-csrs.csv", Body=write_csv(("thing_name", "csr"), rows)
    )
    source = f"s3://{p.settings.bucket}/uploads/new-csrs.csv"

    dry = act(
        p.iot,
        p.s3,
        p.settings,
        "rekey",
        serials=[before[n]["serial_number"] for n in gateways],
        csr_source=source,
        dry_run=True,
    )
    assert dry["planned"] == len(gateways)
    summary = act(
        p.iot,
        p.s3,
        p.settings,
        "rekey",
        ca_pems=p.ca_pems,
        serials=[before[n]["serial_number"] for n in gateways],
        csr_source=source,
    )
    assert summary["done"] == len(gateways)
    after = inventory_devices(p.settings)
    for name in gateways:
        pem = p.iot.describe_certificate(certificateId=after[name]["certificate_id"])[
            "certificateDescription"
        ]["certificatePem"]
        assert x509.load_pem_x509_certificate(pem.encode()).public_key() == new_keys[name]
    files = ActionFiles(p.settings.bucket, summary["run_id"])
    with pytest.raises(ClientError):  # no key was made: nothing to seal
        p.s3.head_object(Bucket=p.settings.bucket, Key=files.bundle(0))


def test_the_rate_limiter_spaces_requests() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    with pytest.raises(ValueError):
        RateLimiter(0)


@pytest.mark.postgres
def test_delete_rekey_and_audit_on_postgresql(fresh_emulator: Any, tmp_path: Path, postgres_url: str) -> None:
    from tests.lifecycle.conftest import provision
    from tests.lifecycle.registry import audit

    p = provision(fresh_emulator, tmp_path, devices=8, inventory_url=postgres_url)
    assert p.summary["provisioned"] == 8
    serials = sorted(
        r["serial_number"] for r in inventory_devices(p.settings).values() if r["model"] == "TH-100"
    )
    assert act(p.iot, p.s3, p.settings, "rekey", ca_pems=p.ca_pems, serials=serials)["done"] == len(serials)
    assert audit(p.iot, p.s3, p.settings, p.batch_id)["drift"] is False
    assert act(p.iot, p.s3, p.settings, "delete", batch_id=p.batch_id)["done"] == 8
    assert snapshot(p.iot) == {"things": {}, "certificates": {}}
    assert audit(p.iot, p.s3, p.settings, None)["drift"] is False


def test_rekey_of_aws_issued_products_lets_aws_sign_the_new_keys(fresh_emulator: Any, tmp_path: Path) -> None:
    import tarfile

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from include.certificate_authority import CertificateAuthority
    from tests.include.flow import make_settings, prepare_account, run_flow

    iot, s3 = fresh_emulator.client("iot"), fresh_emulator.client("s3")
    settings, recipient_key = make_settings(tmp_path, f"sqlite:///{tmp_path / 'inventory.db'}", workers=1)
    ca = CertificateAuthority.create_development()
    prepare_account(iot, s3, settings, ca)
    manifest = tmp_path / "sensors.csv"
    manifest.write_text("serial_number,model\nSN0900001,SN-300\nSN0900002,SN-300\nSN0900003,SN-300\n")
    summary = run_flow(iot, s3, settings, ca, str(manifest), "manual__sensors")
    assert summary["provisioned"] == 3, summary
    before = inventory_devices(settings)

    rekeyed = act(
        iot,
        s3,
        settings,
        "rekey",
        ca_pems=(ca.certificate_pem, ca.private_key_pem()),
        batch_id=summary["batch_id"],
    )
    assert rekeyed["done"] == 3, rekeyed
    after = inventory_devices(settings)
    files = ActionFiles(settings.bucket, rekeyed["run_id"])
    bundle = s3.get_object(Bucket=settings.bucket, Key=files.bundle(0))["Body"].read()
    certificate = Path(settings.bundle_recipient_public_key).read_bytes()
    keys = {r["thing_name"]: r for r in open_bundle(bundle, recipient_key.read_bytes(), certificate)}
    archive = s3.get_object(Bucket=settings.bucket, Key=files.certificates(0))["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        pems = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".cert.pem")}
    assert len(pems) == 3
    for name, record in after.items():
        assert record["certificate_id"] != before[name]["certificate_id"] and record["issuer"] == "aws"
        described = iot.describe_certificate(certificateId=record["certificate_id"])["certificateDescription"]
        assert described["status"] == "ACTIVE" and "caCertificateId" not in described
        key = serialization.load_pem_private_key(keys[name]["private_key_pem"].encode(), None)
        signed = x509.load_pem_x509_certificate(described["certificatePem"].encode())
        assert signed.public_key().public_numbers() == key.public_key().public_numbers()
        assert described["certificatePem"].encode() in pems.values()
        old = iot.describe_certificate(certificateId=before[name]["certificate_id"])["certificateDescription"]
        assert old["status"] == "INACTIVE"
