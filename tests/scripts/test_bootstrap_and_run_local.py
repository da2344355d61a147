"""Local tooling: bootstrap never invents a CA for a real account; a dry run still accounts every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scripts.bootstrap import BootstrapError, ensure_development_ca, main
from scripts.generate_manifest import rows
from tests.fixtures.make_dag import run_local


def test_missing_ca_is_an_error_unless_a_development_ca_is_wanted(tmp_path):
    with pytest.raises(BootstrapError, match="--create-dev-ca"):
        ensure_development_ca(tmp_path / "ca", create=False)
    assert not (tmp_path / "ca").exists()
    certificate, key, created = ensure_development_ca(tmp_path / "ca", create=True)
    assert created and "BEGIN CERTIFICATE" in certificate
    assert ensure_development_ca(tmp_path / "ca", create=False) == (certificate, key, False)


def test_unreachable_endpoint_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail at once instead of retrying the connection
    assert main(["--endpoint-url", "http://127.0.0.1:9"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("bootstrap failed against http://127.0.0.1:9") and error.count("\n") == 1


@pytest.mark.airflow
@pytest.mark.timeout(600)
def test_make_run_on_a_refused_manifest_says_why_and_still_ends_with_the_summary(tmp_path):
    """The `make run` path on a file that is not UTF-8: no retries, the reason, one JSON line last."""
    import time

    manifest = tmp_path / "latin1.csv"
    manifest.write_bytes("serial_number,model,factory\nA1,TH-100,Zürich\n".encode("latin-1"))
    env = {**os.environ, "STATE_DIR": str(tmp_path / "state")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "scripts.run_local", "--manifest", str(manifest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FAILED" in done.stderr and "not UTF-8" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 0 and summary["accounted"] is True
    assert "not UTF-8" in summary["error"] and "byte 0xfc" in summary["error"]
    log = next((tmp_path / "state" / "logs").glob("dag-run-*.log")).read_text()
    assert "up_for_retry" not in log  # refused at once: a retry cannot make the file UTF-8
    assert elapsed < 240


def test_a_missing_manifest_is_refused_before_anything_starts_and_still_ends_with_the_summary(tmp_path):
    summary = run_local(tmp_path / "state", "--manifest", str(tmp_path / "nope.csv"), exit_code=2)
    assert summary == {
        "source": str(tmp_path / "nope.csv"),
        "rows": 0,
        "accounted": True,
        "error": f"manifest not found: {tmp_path / 'nope.csv'}",
    }


@pytest.mark.airflow
@pytest.mark.timeout(600)
def test_make_dag_reports_its_own_run_never_an_earlier_ones(tmp_path):
    """A conf the DAG's params refuse makes no run: the result says so, not what the run before returned."""
    state = tmp_path / "state"
    report = run_local(state, "--dag", "manage_factory_ca", "--conf", '{"action": "report"}')
    assert report["action"] == "report"
    refused = run_local(state, "--dag", "manage_factory_ca", "--conf", '{"action": "rotat"}', exit_code=1)
    assert set(refused) == {"dag_id", "error"} and refused["dag_id"] == "manage_factory_ca"
    assert "Airflow started no run of manage_factory_ca" in refused["error"]
    assert "ParamValidationError" in refused["error"] and "'rotat' is not one of" in refused["error"]
    unknown = run_local(state, "--dag", "no_such_dag", exit_code=1)
    assert "no DAG 'no_such_dag' in dags/ (known: audit_drift" in unknown["error"]


def test_generated_serials_start_where_asked():
    first = [cells[0] for cells in rows(3, 0, 0.0, seed=1, first=30_000_000)]
    assert first == ["TH030000000", "TH030000001", "TH030000002"]


def test_the_development_pca_is_made_once_per_local_state(fresh_emulator, tmp_path):
    """`make cdf-api` asks for it at every start: the same PCA, and one CA of it in IoT, each time."""
    from include.settings import Settings
    from scripts.bootstrap import development_pca

    pca, iot = fresh_emulator.client("acm-pca"), fresh_emulator.client("iot")
    settings = Settings(inventory_url=f"sqlite:///{tmp_path / 'inventory.db'}")
    first = development_pca(pca, iot, tmp_path, settings)
    assert development_pca(pca, iot, tmp_path, settings) == first
    assert len(pca.list_certificate_authorities()["CertificateAuthorities"]) == 1
    registered = [ca["certificateArn"] for ca in iot.list_ca_certificates()["certificates"]]
    assert registered == [first[1]]
