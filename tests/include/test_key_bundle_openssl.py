"""The factory line opens a real bundle with openssl and tar alone, running the commands the docs show."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from include import key_bundle
from include.certificate_authority import CertificateAuthority
from include.credentials import ProductSpec, issue_chunk
from include.key_bundle_archive import file_stem

ROOT = Path(__file__).resolve().parents[2]
# The page whose commands these tests run; it becomes the README's section (then point this there).
DOC = ROOT / "docs" / "key-bundle.md"
PRODUCTS = {
    "TH-100": ProductSpec("TH-100", "ec-p256", attributes=()),
    "LK-300": ProductSpec("LK-300", "rsa-2048", attributes=()),
}
DEVICES = [("TH-100", f"SN{i:04d}") for i in range(40)] + [("LK-300", "R1")]


def _blocks() -> dict[str, str]:
    """The doc's bash blocks marked `<!-- key-bundle-test: NAME -->`, by name."""
    pattern = re.compile(r"<!-- key-bundle-test: (\w+) -->\n```bash\n(.*?)```", re.S)
    return dict(pattern.findall(DOC.read_text(encoding="utf-8")))


def _run(block: str, values: str, cwd: Path) -> str:
    """A doc block run by bash with our values for its variables (its own assignment line dropped)."""
    lines = block.splitlines()
    if re.match(r"\w+=", lines[0]):
        lines = lines[1:]
    done = subprocess.run(
        ["bash", "-c", "\n".join([values, *lines])], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def chunk(tmp_path_factory) -> dict:
    """A bundle sealed from a real chunk as the pipeline seals it (own CA: EC and RSA keys, certificates)."""
    assert shutil.which("openssl") and shutil.which("tar"), "openssl and tar are what the factory line uses"
    directory = tmp_path_factory.mktemp("chunk")
    key_path, certificate_path = key_bundle.generate_recipient(directory / "factory-line")
    ca = CertificateAuthority.create_development()
    devices = pa.table(
        {
            "row": pa.array(range(1, len(DEVICES) + 1), pa.int64()),
            "model": [model for model, _ in DEVICES],
            "serial_number": [serial for _, serial in DEVICES],
            "thing_name": [
                f"{model}-{serial}" if serial != "SN0007" else "TH-100:SN0007" for model, serial in DEVICES
            ],
            "csr": pa.array([None] * len(DEVICES), pa.string()),
        }
    )
    writer = key_bundle.BundleWriter(certificate_path.read_bytes(), batch_id="b", chunk=0)
    output = issue_chunk(devices, PRODUCTS, ca.certificate_pem, ca.private_key_pem(), bundle=writer.add)
    assert writer.count == len(DEVICES) and not output.failures
    sealed = writer.finish()
    bundle = directory / "chunk-00000.tar.p7m"
    bundle.write_bytes(sealed)
    return {"bundle": bundle, "key": key_path, "certificate": certificate_path, "directory": directory}


def test_openssl_opens_a_bundle_and_every_key_matches_its_certificate(chunk, tmp_path):
    blocks = _blocks()
    out = tmp_path / "keys"
    values = f"bundle={chunk['bundle']} line_key={chunk['key']} out={out}"
    _run(blocks["open"], values, tmp_path)
    assert _run(blocks["check"], values, tmp_path).endswith("keys without a matching certificate: 0\n")
    keys = sorted(out.glob("*.key.pem"))
    assert len(keys) == len(DEVICES) and len(list(out.glob("*.cert.pem"))) == len(DEVICES)
    assert (out / f"{file_stem('TH-100:SN0007')}.key.pem").exists() and (out / "index.csv").exists()
    assert all(stat.S_IMODE(os.stat(key).st_mode) == 0o600 for key in keys)

    # What openssl wrote is what the project's tool writes (and its own check passes).
    ours = tmp_path / "ours"
    args = ["open", str(chunk["bundle"]), "--key", str(chunk["key"]), "--cert", str(chunk["certificate"])]
    assert key_bundle.main([*args, "--out", str(ours)]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in ours.iterdir()}

    # The check does check: two certificates swapped, two keys without a matching certificate.
    first, second = out / "TH-100-SN0001.cert.pem", out / "TH-100-SN0002.cert.pem"
    first_pem = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_pem)
    report = _run(blocks["check"], values, tmp_path)
    assert "no matching certificate: TH-100-SN0001.key.pem" in report
    assert report.endswith("keys without a matching certificate: 2\n")


def test_keys_first_certificates_later(chunk, tmp_path):
    """AWS-issued mode: a bundle of keys only; the certificates archive, unpacked beside, completes it."""
    opened = list(
        key_bundle.open_bundle(
            chunk["bundle"].read_bytes(), chunk["key"].read_bytes(), chunk["certificate"].read_bytes()
        )
    )
    keys_only = [{**r, "certificate_id": None, "certificate_pem": None} for r in opened]
    bundle = tmp_path / "chunk-00001.tar.p7m"
    bundle.write_bytes(key_bundle.seal(keys_only, chunk["certificate"].read_bytes(), batch_id="b", chunk=1))
    certificates = tmp_path / "certificates.tar"
    certificates.write_bytes(
        key_bundle.certificates_archive(
            (r["thing_name"], r["certificate_id"], r["certificate_pem"]) for r in opened
        )
    )

    blocks = _blocks()
    out = tmp_path / "keys"
    values = f"bundle={bundle} line_key={chunk['key']} out={out}"
    _run(blocks["open"], values, tmp_path)
    assert not list(out.glob("*.cert.pem"))
    assert _run(blocks["check"], values, tmp_path).endswith(
        f"keys without a matching certificate: {len(DEVICES)}\n"
    )
    _run(blocks["certificates"], f"out={out} certificates={certificates}", tmp_path)
    assert _run(blocks["check"], values, tmp_path).endswith("keys without a matching certificate: 0\n")
    assert (out / "certificates.csv").read_text().count("\n") == len(DEVICES) + 1
