"""Device credentials for a chunk: our keys (or device CSRs) signed by the factory CA, on a process pool.

`issue_chunk` is what the pipeline uses: workers take the chunk's devices.jsonl lines and do all per-device
work (key, certificate, PEMs, the parameter line, the ledger line, the bundle plaintext line), returning a few
bytes objects per slice, so the pipeline process only joins and uploads them.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from include.catalog import Product
from include.certificate_authority import CertificateAuthority
from include.parameter_file import encode_parameters

log = logging.getLogger(__name__)
# Below this many devices per worker a pool costs more (start-up, imports) than it saves.
MIN_DEVICES_PER_WORKER = 250
SLICES_PER_WORKER = 4
PEM = serialization.Encoding.PEM
SHA256 = hashes.SHA256()
PKCS8, NO_ENCRYPTION = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
T = TypeVar("T")


@dataclass(frozen=True)
class ProductSpec:
    """The part of a catalog product a worker needs (small and cheap to pickle)."""

    group: str
    key_algorithm: str
    device_csr: bool
    attributes: tuple[tuple[str, str], ...]  # (attribute name, template parameter)

    @classmethod
    def of(cls, product: Product) -> ProductSpec:
        return cls(
            group=product.group,
            key_algorithm=product.key_algorithm,
            device_csr=product.certificate_mode == "device_csr",
            attributes=tuple((a.name, a.parameter) for a in product.attributes),
        )


@dataclass
class ChunkOutput:
    """A slice's (or a whole chunk's) results as bytes: what the pipeline uploads, nothing to re-encode.

    params: group -> parameter-file lines; counts: group -> lines; ledger: one JSON line per device in input
    order {"row", "model", "serial_number", "thing_name", "group", "bytes", "certificate_id"}; bundle: the
    key bundle's plaintext lines (private keys: only ever for include.key_bundle.seal_payload).
    """

    params: dict[str, bytes] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    ledger: bytes = b""
    bundle: bytes = b""
    sealed: int = 0

    def __repr__(self) -> str:  # never show the bundle plaintext
        return f"ChunkOutput(counts={self.counts!r}, sealed={self.sealed})"


_ca_cache: dict[str, CertificateAuthority] = {}


def _authority(certificate_pem: str, private_key_pem: str) -> CertificateAuthority:
    fingerprint = hashlib.sha256((certificate_pem + private_key_pem).encode()).hexdigest()
    ca = _ca_cache.get(fingerprint)
    if ca is None:
        _ca_cache.clear()
        ca = _ca_cache[fingerprint] = CertificateAuthority.from_pem(certificate_pem, private_key_pem)
    return ca


def _new_key(algorithm: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _issue(
    ca: CertificateAuthority, thing_name: str, serial_number: str, key_algorithm: str, csr: str | None
) -> tuple[x509.Certificate, bytes | None]:
    """The device certificate and, when we made the key, its unencrypted PKCS#8 PEM."""
    if csr is not None:
        return ca.issue_from_csr(csr, thing_name, serial_number), None
    key = _new_key(key_algorithm)
    certificate = ca.issue_device_certificate(key.public_key(), thing_name, serial_number)
    return certificate, key.private_bytes(PEM, PKCS8, NO_ENCRYPTION)


def _certificate_pem_and_id(certificate: x509.Certificate) -> tuple[str, str]:
    """PEM and AWS certificate id: the SHA-256 fingerprint is of the DER the certificate already holds."""
    return certificate.public_bytes(PEM).decode("ascii"), certificate.fingerprint(SHA256).hex()


def issue_lines(
    ca_certificate_pem: str, ca_private_key_pem: str, products: Mapping[str, ProductSpec], lines: bytes
) -> ChunkOutput:
    """Issue credentials for devices.jsonl lines (one device record each); runs in a worker or inline."""
    ca = _authority(ca_certificate_pem, ca_private_key_pem)
    params: dict[str, list[bytes]] = defaultdict(list)
    ledger: list[bytes] = []
    bundle: list[bytes] = []
    for raw in lines.splitlines():
        if not raw:
            continue
        device = orjson.loads(raw)
        spec = products[device["model"]]
        csr = device.get("csr") if spec.device_csr else None
        certificate, key_pem = _issue(
            ca, device["thing_name"], device["serial_number"], spec.key_algorithm, csr
        )
        certificate_pem, certificate_id = _certificate_pem_and_id(certificate)
        line = encode_parameters(device, certificate_pem, spec.attributes)
        params[spec.group].append(line)
        ledger.append(_ledger_line(device, spec.group, len(line), certificate_id))
        if key_pem is not None:
            bundle.append(_bundle_line(device, certificate_id, certificate_pem, key_pem))
    return ChunkOutput(
        params={group: b"".join(group_lines) for group, group_lines in params.items()},
        counts={group: len(group_lines) for group, group_lines in params.items()},
        ledger=b"".join(ledger),
        bundle=b"".join(bundle),
        sealed=len(bundle),
    )


def _ledger_line(device: Mapping[str, Any], group: str, size: int, certificate_id: str) -> bytes:
    record = {
        "row": device["row"],
        "model": device["model"],
        "serial_number": device["serial_number"],
        "thing_name": device["thing_name"],
        "group": group,
        "bytes": size,
        "certificate_id": certificate_id,
    }
    return orjson.dumps(record) + b"\n"


def _bundle_line(
    device: Mapping[str, Any], certificate_id: str, certificate_pem: str, key_pem: bytes
) -> bytes:
    """One record of the key bundle payload (include.key_bundle's format); never logged or returned alone."""
    record = {
        "thing_name": device["thing_name"],
        "serial_number": device["serial_number"],
        "model": device["model"],
        "row": device["row"],
        "certificate_id": certificate_id,
        "certificate_pem": certificate_pem,
        "private_key_pem": key_pem.decode("ascii"),
    }
    return orjson.dumps(record) + b"\n"


def merge(outputs: Sequence[ChunkOutput]) -> ChunkOutput:
    """Slice outputs joined in order: one bytes object per group, ledger and bundle."""
    groups = sorted({g for o in outputs for g in o.params})
    return ChunkOutput(
        params={g: b"".join(o.params[g] for o in outputs if g in o.params) for g in groups},
        counts={g: sum(o.counts.get(g, 0) for o in outputs) for g in groups},
        ledger=b"".join(o.ledger for o in outputs),
        bundle=b"".join(o.bundle for o in outputs),
        sealed=sum(o.sealed for o in outputs),
    )


def _slices(items: Sequence[T], count: int) -> list[Sequence[T]]:
    size = max(1, -(-len(items) // count))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _workers_for(devices: int, workers: int) -> int:
    return max(1, min(workers, devices // MIN_DEVICES_PER_WORKER))


def _run_slices(args: tuple, slices: Sequence[bytes], workers: int) -> Iterator[ChunkOutput]:
    """issue_lines(*args, slice) for every slice, in slice order; on `workers` processes when above 1."""
    if workers == 1:
        yield from (issue_lines(*args, part) for part in slices)
        return
    # fork: workers start in milliseconds with everything imported. spawn/forkserver re-run the parent's
    # __main__ in every worker (under Airflow's console script: Airflow imported again, seconds per worker).
    context = multiprocessing.get_context("fork")
    done = 0
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(issue_lines, *args, part) for part in slices]
            for future in futures:
                yield future.result()
                done += 1
    except BrokenProcessPool:
        # A worker died (e.g. killed for memory): finish the remaining slices inline.
        log.warning(
            "credentials process pool unavailable; issuing the remaining %d slices inline", len(slices) - done
        )
        yield from (issue_lines(*args, part) for part in slices[done:])


def issue_chunk(
    device_lines: Sequence[bytes],
    products: Mapping[str, ProductSpec],
    ca_certificate_pem: str,
    ca_private_key_pem: str,
    *,
    workers: int = 1,
) -> ChunkOutput:
    """Credentials, parameter lines, ledger lines and bundle plaintext for a chunk's device records.

    Each slice travels as one bytes object each way (no per-device pickling between processes).
    """
    _authority(ca_certificate_pem, ca_private_key_pem)  # fail fast, in this process, on a bad CA
    workers = _workers_for(len(device_lines), workers)
    parts = _slices(device_lines, workers * SLICES_PER_WORKER) if workers > 1 else [device_lines]
    slices = [b"\n".join(part) for part in parts]
    args = (ca_certificate_pem, ca_private_key_pem, dict(products))
    return merge(list(_run_slices(args, slices, workers)))
