"""Report lines (AWS's real ERRORS sample), the streamed download, formula-safe CSV, settings."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from include.csv_safety import neutralise, restore, write_csv
from include.errors import ReconcileError
from include.reports import download_report_lines, parse_error_message, parse_report_line
from include.settings import Settings

SAMPLE_ERRORS = Path("/work/shared/reference/real-bulk-errors-report-sample.jsonl")
REFERENCE_LINE = (
    b'{"errorMessage":"com.amazonaws.services.iot.model.ResourceRegistrationFailureException: Register thing '
    b"workflow execution terminates due to: Thing Type 250602908823:vehicle not found. (Service: AWSIot; "
    b"Status Code: 400; Error Code: ResourceRegistrationFailureException; Request ID: "
    b'9025178d-3f7f-4eec-8298-e19a33069579; Proxy: null)","lineNumber":1,"offset":70,"response":null}'
)


def test_real_errors_report_line():
    report = parse_report_line(REFERENCE_LINE)
    assert (report.line_number, report.offset, report.succeeded) == (1, 70, False)
    assert report.error_code == "ResourceRegistrationFailureException"
    assert (
        report.error_message
        == "Register thing workflow execution terminates due to: Thing Type 250602908823:vehicle not found."
    )


@pytest.mark.skipif(not SAMPLE_ERRORS.exists(), reason="shared reference sample not on this machine")
def test_whole_reference_sample_parses():
    reports = [parse_report_line(line) for line in SAMPLE_ERRORS.read_bytes().splitlines() if line]
    assert [r.line_number for r in reports] == list(range(1, 11))
    assert [r.offset for r in reports] == [70 * n for n in range(1, 11)]
    assert {r.error_code for r in reports} == {"ResourceRegistrationFailureException"}


def test_results_line():
    line = (
        '{"errorMessage":null,"lineNumber":3,"offset":2100,"response":{"CertificatePem":"-----BEGIN...",'
        '"ResourceArns":{"certificate":"arn:aws:iot:us-east-1:123456789012:cert/' + "a" * 64 + '",'
        '"thing":"arn:aws:iot:us-east-1:123456789012:thing/TH-100-A1"}}}'
    )
    report = parse_report_line(line)
    assert report.succeeded and report.certificate_id == "a" * 64
    assert report.thing_arn.endswith(":thing/TH-100-A1")


def test_error_message_without_java_wrapping():
    assert parse_error_message("Something odd") == ("UnknownError", "Something odd")
    assert parse_error_message("com.amazonaws.services.iot.model.ThrottlingException: Rate exceeded")[0] == (
        "ThrottlingException"
    )


def test_garbage_line_names_itself():
    with pytest.raises(ReconcileError, match="not a bulk-registration report record: 'hello'"):
        parse_report_line(b"hello")


def test_download_streams_lines_over_plain_http():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = (
                REFERENCE_LINE
                + b"\n\n"
                + REFERENCE_LINE.replace(b'"lineNumber":1', b'"lineNumber":2')
                + b"\n"
            )
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lines = list(download_report_lines(f"http://127.0.0.1:{server.server_port}/report?X-Amz-Signature=x"))
    finally:
        server.shutdown()
    assert [parse_report_line(line).line_number for line in lines] == [1, 2]
    with pytest.raises(ReconcileError, match="not an http"):
        list(download_report_lines("file:///etc/passwd"))


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_are_neutralised_and_restored(cell):
    assert neutralise(cell) == "'" + cell
    assert restore(pa.array([neutralise(cell)])).to_pylist() == [cell]
    assert neutralise("plain") == "plain" and neutralise(None) == ""


def test_restore_leaves_other_quoted_cells_alone():
    cells = ["'a", "'", "''=", "plain", "", "'=x"]
    assert restore(pa.array(cells)).to_pylist() == ["'a", "'", "''=", "plain", "", "=x"]


def test_write_csv_neutralises_header_and_cells():
    data = write_csv(["=a", "b"], [["-----BEGIN X-----\nY", "ok"]]).decode()
    assert data.startswith("'=a,b\r\n")
    assert '"\'-----BEGIN X-----\nY",ok' in data


def test_settings_from_env(tmp_path):
    settings = Settings.from_env(
        {
            "STATE_DIR": str(tmp_path),
            "PIPELINE_BUCKET": "b1",
            "PIPELINE_WORK_PREFIX": "w",
            "PIPELINE_CHUNK_SIZE": "10",
            "PIPELINE_WORKERS": "3",
        }
    )
    assert (settings.bucket, settings.work_prefix, settings.chunk_size, settings.workers) == (
        "b1",
        "w/",
        10,
        3,
    )
    assert settings.inventory_url == f"sqlite:///{tmp_path / 'inventory.db'}"
    assert settings.bundle_recipient_public_key == str(tmp_path / "factory-line" / "recipient.cert.pem")
    with pytest.raises(ValueError, match="PIPELINE_CHUNK_SIZE must be an integer"):
        Settings.from_env({"PIPELINE_CHUNK_SIZE": "many"})


@pytest.mark.parametrize(
    "data",
    [
        b"serial_number,model\nA1,TH-100\n",
        '\ufeff\r\n ,\r\nSerial_Number , Model,"multi\r\nline"\r\nA1,TH-100,x\r\n'.encode(),
        b"serial_number,model",
    ],
)
def test_retry_manifest_header_without_parsing_rows_is_read_manifests(data):
    from include.manifest import read_header, read_manifest, retry_csv

    table = read_manifest(data)
    assert read_header(data) == table.header
    assert write_csv(read_header(data), []) == retry_csv(table, [])
