"""The per-device crypto floor (the primitives alone, one core) beside include.credentials' CPU per device.

Own-CA floor: ECDSA P-256 key generation + one raw ECDSA-SHA256 signature by the CA over a TBSCertificate of
the real size + PEM of the private key (PKCS#8, unencrypted) and of the certificate. Device-CSR floor: CSR
parse + one signature verification + that one signature + certificate PEM. Nothing else counts: no
certificate builder, no subject, no JSON.

    python -m scripts.bench_floor [--devices N] [--csr-devices N] [--workers W] [--chunk-size C] [--rounds R]

measures both floors, then issue_chunk (chunk after chunk) on own-CA P-256 devices and on device CSRs:
inline, on W workers started and stopped inside the measurement ("cold": RUSAGE_SELF + RUSAGE_CHILDREN),
and on W long-lived workers already running ("warm": this process's CPU + the workers' CPU clocks). It
prints CPU µs per device of every process and the wall rate, each against the floor; rounds interleave
floor and path (others share the machine) and the best of each figure is kept. scripts/bench.py imports
the floor functions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import pyarrow as pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from include.certificate_authority import CertificateAuthority
from include.certificate_template import pem
from include.credentials import ProductSpec, issue_chunk
from include.worker_pool import shutdown_workers, worker_pids
from scripts.generate_manifest import device_csr

PEM = serialization.Encoding.PEM
PKCS8, NO_ENCRYPTION = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
SHA256 = hashes.SHA256()
# The sample catalog's attribute mapping (catalog/products.yaml), so parameter lines have their real size.
ATTRIBUTES = (
    ("serial_number", "SerialNumber"),
    ("model", "Model"),
    ("mac_address", "MacAddress"),
    ("hardware_revision", "HardwareRevision"),
    ("firmware_version", "FirmwareVersion"),
    ("manufactured_at", "ManufacturedAt"),
    ("factory", "Factory"),
    ("line", "Line"),
)


@dataclass(frozen=True)
class Floor:
    """Microseconds per device of each primitive, on one core."""

    devices: int
    keygen_us: float  # ECDSA P-256 key generation (own-CA mode) or CSR parse + verify (device-CSR mode)
    sign_us: float  # one raw signature by the P-256 CA over a TBSCertificate of the real size
    serialise_us: float  # certificate PEM (+ private key PKCS#8 PEM in own-CA mode)

    @property
    def per_device_us(self) -> float:
        return self.keygen_us + self.sign_us + self.serialise_us

    @property
    def per_second(self) -> float:
        """Devices per second on one core."""
        return 1e6 / self.per_device_us

    def as_dict(self) -> dict[str, float]:
        return {
            **{k: round(v, 2) for k, v in asdict(self).items()},
            "per_device_us": round(self.per_device_us, 2),
            "devices_per_s": round(self.per_second, 1),
        }


def _authority(ca_certificate_pem: str, ca_key_pem: str) -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    """The CA key, and the TBSCertificate and DER of a real device certificate it issued."""
    ca = CertificateAuthority.from_pem(ca_certificate_pem, ca_key_pem)
    if not isinstance(ca.private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        ca.private_key.curve, ec.SECP256R1
    ):
        raise ValueError("the floor is defined for a P-256 CA")
    device_key = ec.generate_private_key(ec.SECP256R1())
    sample = ca.issue_device_certificate(device_key.public_key(), "TH-100-TH024000001", "TH024000001")
    return ca.private_key, sample.tbs_certificate_bytes, sample.public_bytes(serialization.Encoding.DER)


def own_key_floor(ca_certificate_pem: str, ca_key_pem: str, devices: int) -> Floor:
    """Own-CA mode: new P-256 key, one signature, key PEM + certificate PEM; single-threaded."""
    key, tbs, der = _authority(ca_certificate_pem, ca_key_pem)
    ecdsa = ec.ECDSA(SHA256)
    clock = time.perf_counter
    keygen = sign = serialise = 0.0
    for _ in range(devices):
        t0 = clock()
        device_key = ec.generate_private_key(ec.SECP256R1())
        t1 = clock()
        key.sign(tbs, ecdsa)
        t2 = clock()
        device_key.private_bytes(PEM, PKCS8, NO_ENCRYPTION)
        pem(der, "CERTIFICATE")
        t3 = clock()
        keygen, sign, serialise = keygen + t1 - t0, sign + t2 - t1, serialise + t3 - t2
    return Floor(devices, keygen / devices * 1e6, sign / devices * 1e6, serialise / devices * 1e6)


def busy_floor(ca_certificate_pem: str, ca_key_pem: str, devices: int, processes: int) -> float:
    """The own-CA floor (µs per device, mean) with `processes` copies running at once, one per core.

    Cores of one machine share caches, memory bandwidth and (on a VM) the host's cores: the same primitives
    cost more per device when every core works, which is how the credential workers run. The ratios use the
    single-core floor; this one says how much of a pool's excess is the machine's, not the code's.
    """
    if processes < 2:
        return own_key_floor(ca_certificate_pem, ca_key_pem, devices).per_device_us
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            pool.submit(own_key_floor, ca_certificate_pem, ca_key_pem, devices) for _ in range(processes)
        ]
        return sum(f.result().per_device_us for f in futures) / processes


def device_csr_floor(ca_certificate_pem: str, ca_key_pem: str, csrs: Sequence[str]) -> Floor | None:
    """Device-CSR mode: CSR parse + signature verify, one signature, certificate PEM; None without CSRs."""
    if not csrs:
        return None
    key, tbs, der = _authority(ca_certificate_pem, ca_key_pem)
    ecdsa = ec.ECDSA(SHA256)
    clock = time.perf_counter
    verify = sign = serialise = 0.0
    for text in csrs:
        t0 = clock()
        if not x509.load_pem_x509_csr(text.encode("ascii")).is_signature_valid:
            raise ValueError("a manifest CSR does not verify")
        t1 = clock()
        key.sign(tbs, ecdsa)
        t2 = clock()
        pem(der, "CERTIFICATE")
        t3 = clock()
        verify, sign, serialise = verify + t1 - t0, sign + t2 - t1, serialise + t3 - t2
    n = len(csrs)
    return Floor(n, verify / n * 1e6, sign / n * 1e6, serialise / n * 1e6)


def device_table(count: int, model: str, csrs: Sequence[str] = ()) -> pa.Table:
    """`count` devices as the pipeline hands them to issue_chunk, with the sample's attribute columns."""
    serials = [f"{model[:2]}{24_000_000 + i:09d}" for i in range(count)]
    columns = {
        "row": pa.array(range(1, count + 1), pa.int64()),
        "model": [model] * count,
        "serial_number": serials,
        "thing_name": [f"{model}-{serial}" for serial in serials],
        "csr": pa.array([csrs[i % len(csrs)] for i in range(count)] if csrs else [None] * count, pa.string()),
        "mac_address": [
            f"00:1a:2b:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}" for i in range(count)
        ],
        "hardware_revision": ["C"] * count,
        "firmware_version": ["2.4.1"] * count,
        "manufactured_at": ["2026-05-01T08:00:00Z"] * count,
        "factory": ["Eindhoven"] * count,
        "line": ["L3"] * count,
    }
    return pa.table(columns)


def _cpu_seconds() -> tuple[float, float]:
    """CPU of this process, and of its children that ended (credential workers are stopped first)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    own, children = (u.ru_utime + u.ru_stime for u in usage)
    return own, children


@dataclass(frozen=True)
class Run:
    """One issue_chunk run over a device table: CPU of this process and of the workers, wall time."""

    devices: int
    own_seconds: float
    worker_seconds: float
    wall_seconds: float

    @property
    def cpu_us(self) -> float:
        """CPU per device, all processes."""
        return (self.own_seconds + self.worker_seconds) / self.devices * 1e6

    @property
    def per_second(self) -> float:
        return self.devices / self.wall_seconds

    def best(self, other: Run | None) -> Run:
        """The least disturbed of two runs of the same work, figure by figure."""
        if other is None:
            return self
        return Run(
            self.devices,
            *min((self.own_seconds, self.worker_seconds), (other.own_seconds, other.worker_seconds), key=sum),
            min(self.wall_seconds, other.wall_seconds),
        )


def _worker_cpu_seconds() -> float:
    """CPU of the live credential workers: Linux's /proc/PID/schedstat, in nanoseconds (stat has ticks)."""
    total = 0
    for pid in worker_pids():
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as handle:
            total += int(handle.read().split()[0])
    return total / 1e9


def issue_run(
    table: pa.Table,
    products: Mapping[str, ProductSpec],
    ca: CertificateAuthority,
    workers: int,
    chunk: int,
    *,
    warm: bool,
) -> Run:
    """issue_chunk chunk after chunk, as the pipeline calls it.

    Cold: the worker pool starts and stops inside the measurement (RUSAGE_CHILDREN counts workers once
    they have ended). Warm: a first chunk starts the pool untimed, then its live workers' CPU clocks are
    read: the steady state of long-lived workers.
    """
    ca_pem, ca_key_pem = ca.certificate_pem, ca.private_key_pem()

    def issue_all() -> int:
        outputs = (
            issue_chunk(table.slice(start, chunk), products, ca_pem, ca_key_pem, workers=workers)
            for start in range(0, table.num_rows, chunk)
        )
        return sum(output.ledger.num_rows for output in outputs)

    shutdown_workers()
    if warm:
        issue_chunk(table.slice(0, chunk), products, ca_pem, ca_key_pem, workers=workers)
        own, children, wall = time.process_time(), _worker_cpu_seconds(), time.perf_counter()
        issued = issue_all()
        run = Run(
            issued,
            time.process_time() - own,
            _worker_cpu_seconds() - children,
            time.perf_counter() - wall,
        )
        shutdown_workers()
        return run
    (own, children), wall = _cpu_seconds(), time.perf_counter()
    issued = issue_all()
    shutdown_workers()
    own_after, children_after = _cpu_seconds()
    return Run(issued, own_after - own, children_after - children, time.perf_counter() - wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000, help="own-CA devices per round")
    parser.add_argument("--csr-devices", type=int, default=3_000, help="device-CSR devices per round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=5_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; each figure's best is kept"
    )
    args = parser.parse_args(argv)
    ca = CertificateAuthority.create_development()
    ca_pem, ca_key_pem = ca.certificate_pem, ca.private_key_pem()
    csrs = [device_csr(f"GW-200-GW{i:09d}") for i in range(1000)]
    products = {
        "TH-100": ProductSpec("TH-100", "ec-p256", mode="own_ca_key", attributes=ATTRIBUTES),
        "GW-200": ProductSpec("GW-200", "ec-p256", mode="device_csr", attributes=ATTRIBUTES),
    }
    modes: dict[str, tuple[pa.Table, Callable[[], Floor | None]]] = {
        "own-CA P-256": (
            device_table(args.devices, "TH-100"),
            lambda: own_key_floor(ca_pem, ca_key_pem, 3000),
        ),
        "device CSR": (
            device_table(args.csr_devices, "GW-200", csrs),
            lambda: device_csr_floor(ca_pem, ca_key_pem, csrs),
        ),
    }
    floors: dict[str, Floor] = {}
    runs: dict[tuple[str, int, bool], Run] = {}
    # Others share the machine: rounds interleave floor and path, and the least disturbed of each is kept.
    for _ in range(args.rounds):
        for mode, (table, floor_of) in modes.items():
            floor = floor_of()
            assert floor is not None
            if mode not in floors or floor.per_device_us < floors[mode].per_device_us:
                floors[mode] = floor
            for workers, warm in [(1, False), (args.workers, False), (args.workers, True)]:
                run = issue_run(table, products, ca, workers, args.chunk_size, warm=warm)
                runs[(mode, workers, warm)] = run.best(runs.get((mode, workers, warm)))
    for mode, floor in floors.items():
        print(json.dumps({"floor": mode, **floor.as_dict()}))
    busy = busy_floor(ca_pem, ca_key_pem, 3000, args.workers)
    print(
        json.dumps(
            {
                "floor": "own-CA P-256, every core busy",
                "processes": args.workers,
                "per_device_us": round(busy, 2),
            }
        )
    )
    for (mode, workers, warm), run in runs.items():
        floor = floors[mode]
        figures = {
            "mode": mode,
            "workers": workers,
            "pool": "inline" if workers == 1 else "warm" if warm else "cold",
            "devices": run.devices,
            "floor_us": round(floor.per_device_us, 1),
            "cpu_us_per_device": round(run.cpu_us, 1),
            "of_which_workers_us": round(run.worker_seconds / run.devices * 1e6, 1),
            "cpu_x_floor": round(run.cpu_us / floor.per_device_us, 3),
            "devices_per_s": round(run.per_second),
            "x_floor_rate_times_workers": round(run.per_second / (floor.per_second * workers), 3),
        }
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
