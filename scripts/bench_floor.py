"""The raw per-device crypto floor: key generation + one CA signature + serialisation, timed on one core."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from include.certificate_authority import CLIENT_AUTH, EC_DEVICE_KEY_USAGE, END_ENTITY

PEM, DER = serialization.Encoding.PEM, serialization.Encoding.DER
PKCS8, NO_ENCRYPTION = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()


@dataclass(frozen=True)
class Floor:
    """Microseconds per device of each step, on one core."""

    devices: int
    keygen_us: float  # ECDSA P-256 key generation (own-CA mode) or CSR parse + verify (device-CSR mode)
    sign_us: float  # certificate build + signature by the P-256 CA
    serialise_us: float  # certificate PEM (+ private key PKCS8 PEM in own-CA mode)

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


def _certificate(
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    authority_key_id: x509.AuthorityKeyIdentifier,
    public_key: ec.EllipticCurvePublicKey,
    name: str,
) -> x509.Certificate:
    """A device client certificate with the fields a real one needs (as the pipeline's, built directly)."""
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.SERIAL_NUMBER, name)]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * 20))
        .add_extension(authority_key_id, critical=False)
        .add_extension(END_ENTITY, critical=True)
        .add_extension(EC_DEVICE_KEY_USAGE, critical=True)
        .add_extension(CLIENT_AUTH, critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _authority(
    ca_certificate_pem: str, ca_key_pem: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    certificate = x509.load_pem_x509_certificate(ca_certificate_pem.encode())
    key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the floor is defined for a P-256 CA")
    return certificate, key


def own_key_floor(ca_certificate_pem: str, ca_key_pem: str, devices: int) -> Floor:
    """Own-CA mode: new P-256 key, certificate from its public key, cert PEM + key PEM; single-threaded."""
    certificate, key = _authority(ca_certificate_pem, ca_key_pem)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    clock = time.perf_counter
    keygen = sign = serialise = 0.0
    for index in range(devices):
        t0 = clock()
        device_key = ec.generate_private_key(ec.SECP256R1())
        t1 = clock()
        cert = _certificate(certificate, key, aki, device_key.public_key(), f"FLOOR-{index:07d}")
        t2 = clock()
        cert.public_bytes(PEM)
        device_key.private_bytes(PEM, PKCS8, NO_ENCRYPTION)
        t3 = clock()
        keygen, sign, serialise = keygen + t1 - t0, sign + t2 - t1, serialise + t3 - t2
    return Floor(devices, keygen / devices * 1e6, sign / devices * 1e6, serialise / devices * 1e6)


def device_csr_floor(ca_certificate_pem: str, ca_key_pem: str, csrs: Sequence[str]) -> Floor | None:
    """Device-CSR mode: parse the CSR and verify its signature, sign its key, cert PEM; None without CSRs."""
    if not csrs:
        return None
    certificate, key = _authority(ca_certificate_pem, ca_key_pem)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    clock = time.perf_counter
    verify = sign = serialise = 0.0
    for index, pem in enumerate(csrs):
        t0 = clock()
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
        if not csr.is_signature_valid:
            raise ValueError("a manifest CSR does not verify")
        public_key = csr.public_key()
        t1 = clock()
        cert = _certificate(certificate, key, aki, public_key, f"FLOOR-CSR-{index:07d}")  # type: ignore[arg-type]
        t2 = clock()
        cert.public_bytes(PEM)
        t3 = clock()
        verify, sign, serialise = verify + t1 - t0, sign + t2 - t1, serialise + t3 - t2
    n = len(csrs)
    return Floor(n, verify / n * 1e6, sign / n * 1e6, serialise / n * 1e6)
