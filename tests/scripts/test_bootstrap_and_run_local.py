"""Local tooling: bootstrap never invents a CA for a real account; a dry run still accounts every row."""

from __future__ import annotations

import pytest

from scripts.bootstrap import BootstrapError, ensure_development_ca, main
from scripts.generate_manifest import rows
from scripts.run_local import dry_run_summary


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


def test_dry_run_summary_accounts_every_row():
    batch = {"batch_id": "b" * 64, "run_id": "manual__1", "source": "m.csv", "bucket": "bkt"}
    validation = {"rows": 10, "quarantined": 2, "reasons": {"invalid_mac": 2}, "quarantine_key": "q.csv"}
    checks = {"skipped": 3, "to_provision": 5, "problems": [], "report_key": "preflight.json"}
    summary = dry_run_summary(batch, validation, checks)
    assert (summary["provisioned"], summary["failed"], summary["planned"]) == (0, 0, 5)
    assert summary["accounted"] and summary["dry_run"]
    assert dry_run_summary(batch, validation, {**checks, "to_provision": 4})["accounted"] is False


def test_generated_serials_start_where_asked():
    first = [cells[0] for cells in rows(3, 0, 0.0, seed=1, first=30_000_000)]
    assert first == ["TH030000000", "TH030000001", "TH030000002"]
