"""Device credentials for a chunk: our keys (or device CSRs) signed by the factory CA, on a process pool."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from include.certificate_authority import CertificateAuthority

log = logging.getLogger(__name__)
# Below this many devices per worker a pool costs more (start-up, imports) than it saves.
MIN_DEVICES_PER_WORKER = 250
SLICES_PER_WORKER = 4


@dataclass(frozen=True)
class DeviceRequest:
    """What one device needs: a name for the certificate subject and either a key algorithm or a CSR."""

    thing_name: str
    serial_number: str
    key_algorithm: str  # ec-p256 | rsa-2048, used when csr is None
    csr: str | None = None


@dataclass(frozen=True)
class IssuedCredential:
    certificate_pem: str
    certificate_id: str
    private_key_pem: str | None  # None when the device holds its own key (CSR mode)

    def __repr__(self) -> str:  # never show the key
        return f"IssuedCredential(certificate_id={self.certificate_id!r})"


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


def issue_slice(
    ca_certificate_pem: str, ca_private_key_pem: str, requests: Sequence[DeviceRequest]
) -> list[IssuedCredential]:
    """Issue credentials for a slice of devices (runs in a worker process or inline)."""
    ca = _authority(ca_certificate_pem, ca_private_key_pem)
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    pkcs8, no_encryption = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    issued = []
    for request in requests:
        if request.csr is not None:
            certificate = ca.issue_from_csr(request.csr, request.thing_name, request.serial_number)
            key_pem = None
        else:
            key = _new_key(request.key_algorithm)
            certificate = ca.issue_device_certificate(
                key.public_key(), request.thing_name, request.serial_number
            )
            key_pem = key.private_bytes(pem, pkcs8, no_encryption).decode("ascii")
        issued.append(
            IssuedCredential(
                certificate_pem=certificate.public_bytes(pem).decode("ascii"),
                certificate_id=hashlib.sha256(certificate.public_bytes(der)).hexdigest(),
                private_key_pem=key_pem,
            )
        )
    return issued


def _slices(requests: Sequence[DeviceRequest], count: int) -> list[Sequence[DeviceRequest]]:
    size = max(1, -(-len(requests) // count))
    return [requests[i : i + size] for i in range(0, len(requests), size)]


def issue_credentials(
    requests: Sequence[DeviceRequest], ca_certificate_pem: str, ca_private_key_pem: str, *, workers: int = 1
) -> Iterator[IssuedCredential]:
    """Credentials in request order, spread over `workers` processes when the chunk is big enough."""
    _authority(ca_certificate_pem, ca_private_key_pem)  # fail fast, in this process, on a bad CA
    workers = max(1, min(workers, len(requests) // MIN_DEVICES_PER_WORKER))
    if workers == 1:
        yield from issue_slice(ca_certificate_pem, ca_private_key_pem, requests)
        return
    # fork: workers start in milliseconds with everything imported. spawn/forkserver re-run the parent's
    # __main__ in every worker (under Airflow's console script: Airflow imported again, seconds per worker).
    context = multiprocessing.get_context("fork")
    slices = _slices(requests, workers * SLICES_PER_WORKER)
    done = 0
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [
                pool.submit(issue_slice, ca_certificate_pem, ca_private_key_pem, part) for part in slices
            ]
            for future in futures:
                yield from future.result()
                done += 1
    except BrokenProcessPool:
        # A worker died (e.g. killed for memory): finish the remaining slices inline.
        log.warning(
            "credentials process pool unavailable; issuing the remaining %d slices inline", len(slices) - done
        )
        for part in slices[done:]:
            yield from issue_slice(ca_certificate_pem, ca_private_key_pem, part)
