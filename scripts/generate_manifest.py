"""Generate a factory manifest (CSV, contract v1) with TH-100 and GW-200 devices and optional bad rows.

python -m scripts.generate_manifest --devices 1000 --out data/sample/manifest.csv --bad-rows 20 --gw-share 0.1

Serial numbers are the prefix (TH or GW) and a 9-digit number counting from --first-serial (24000000, the
sample's); give another start for devices the sample (or an earlier batch) does not already hold.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

HEADER = [
    "serial_number",
    "model",
    "mac_address",
    "hardware_revision",
    "firmware_version",
    "manufactured_at",
    "factory",
    "line",
    "csr",
    "qa_station",  # not in manifest v1 nor mapped by the catalog: reported as an ignored column
]


def device_csr(common_name: str, key: object | None = None) -> str:
    """A CSR as a GW-200's secure element would make it (ECDSA P-256)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _tampered_csr(common_name: str) -> str:
    """A CSR whose signature no longer matches its content (one byte of the subject changed)."""
    der = bytearray(
        x509.load_pem_x509_csr(device_csr(common_name).encode()).public_bytes(serialization.Encoding.DER)
    )
    der[der.find(common_name.encode())] ^= 0x01
    text = base64.b64encode(bytes(der)).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return (
        "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE REQUEST-----\n"
    )


def _weak_rsa_csr(common_name: str) -> str:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point of this row
    return device_csr(common_name, weak)


FIRST_SERIAL = 24_000_000


def good_row(rng: random.Random, index: int, model: str, first: int = FIRST_SERIAL) -> dict[str, str]:
    prefix = "TH" if model == "TH-100" else "GW"
    serial = f"{prefix}{first + index:09d}"
    mac = ":".join(
        f"{b:02x}" for b in [0x00, 0x1A, 0x2B, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF]
    )
    return {
        "serial_number": serial,
        "model": model,
        "mac_address": mac,
        "hardware_revision": rng.choice(["A1", "A2", "B1"]),
        "firmware_version": rng.choice(["1.4.2", "1.5.0"]),
        "manufactured_at": f"2026-11-{1 + index % 20:02d}T{8 + index % 9:02d}:{index % 60:02d}:00Z",
        "factory": rng.choice(["SZX-1", "BRN-2"]),
        "line": f"L{1 + index % 4}",
        "csr": device_csr(f"{model}-{serial}") if model == "GW-200" else "",
        "qa_station": f"QA{index % 7}",
    }


# One bad row per reason code, in a fixed rotation; each takes a good row and breaks one thing.
BAD_ROWS = [
    ("missing_field", lambda r: r.update(serial_number="")),
    ("invalid_serial", lambda r: r.update(serial_number='=HYPERLINK("http://evil")')),
    ("unknown_model", lambda r: r.update(model="ZZ-900", csr="")),
    ("invalid_mac", lambda r: r.update(mac_address="00:1A:2B:3C:4D")),
    ("invalid_date", lambda r: r.update(manufactured_at="31/11/2026")),
    ("csr_required", lambda r: r.update(model="GW-200", csr="")),
    ("csr_not_allowed", lambda r: r.update(model="TH-100", csr=device_csr("x"))),
    (
        "csr_unparseable",
        lambda r: r.update(model="GW-200", csr="-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n"),
    ),
    (
        "csr_signature_invalid",
        lambda r: r.update(model="GW-200", csr=_tampered_csr("GW-200-" + r["serial_number"])),
    ),
    ("csr_key_unsupported", lambda r: r.update(model="GW-200", csr=_weak_rsa_csr("weak"))),
    ("thing_name_invalid", lambda r: r.update(serial_number=r["serial_number"] + ".v2")),
    ("thing_name_too_long", lambda r: r.update(serial_number="S" * 125)),
    ("invalid_attribute_value", lambda r: r.update(factory="Plant 3 (old)")),
    ("field_too_long", lambda r: r.update(hardware_revision="X" * 5000)),
    ("malformed_row", lambda r: r.update(qa_station="QA1,extra")),  # unquoted below: one field too many
]


def rows(
    devices: int, bad_rows: int, gw_share: float, seed: int, first: int = FIRST_SERIAL
) -> Iterator[list[str]]:
    rng = random.Random(seed)
    bad_at = set(rng.sample(range(devices), min(bad_rows, devices))) if bad_rows else set()
    emitted_bad = 0
    first_serial: list[str] = []
    for index in range(devices):
        model = "GW-200" if rng.random() < gw_share else "TH-100"
        row = good_row(rng, index, model, first)
        if index in bad_at:
            kind = emitted_bad % (len(BAD_ROWS) + 1)
            emitted_bad += 1
            if kind == len(BAD_ROWS) and first_serial:  # duplicate_serial: repeat an earlier device
                row = good_row(random.Random(seed), 0, "TH-100")
                row["serial_number"], row["model"] = first_serial[0], "TH-100"
            else:
                BAD_ROWS[kind % len(BAD_ROWS)][1](row)
        elif model == "TH-100" and not first_serial:
            first_serial.append(row["serial_number"])
        cells = [row[column] for column in HEADER]
        if row["qa_station"].endswith(",extra"):
            cells[-1:] = row["qa_station"].split(",")
        yield cells


def write_manifest(
    handle: io.TextIOBase,
    devices: int,
    bad_rows: int,
    gw_share: float,
    seed: int,
    first: int = FIRST_SERIAL,
) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows(devices, bad_rows, gw_share, seed, first))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, required=True, help="data rows to write")
    parser.add_argument("--out", required=True, help="output CSV path ('-' for stdout)")
    parser.add_argument(
        "--bad-rows", type=int, default=0, help="rows broken on purpose, one reason after another"
    )
    parser.add_argument("--gw-share", type=float, default=0.1, help="share of GW-200 rows (device CSRs)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--first-serial",
        type=int,
        default=FIRST_SERIAL,
        help=f"number of the first serial (default {FIRST_SERIAL}, the sample's)",
    )
    args = parser.parse_args(argv)
    if args.devices < 0 or not 0 <= args.gw_share <= 1:
        parser.error("--devices must be >= 0 and --gw-share within 0..1")
    if args.first_serial < 0 or args.first_serial + args.devices > 10**9:
        parser.error("--first-serial must be >= 0 and leave room for 9-digit serial numbers")
    if args.out == "-":
        write_manifest(sys.stdout, args.devices, args.bad_rows, args.gw_share, args.seed, args.first_serial)  # type: ignore[arg-type]
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as handle:
            write_manifest(handle, args.devices, args.bad_rows, args.gw_share, args.seed, args.first_serial)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
