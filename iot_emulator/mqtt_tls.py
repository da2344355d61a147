"""The MQTT endpoint's TLS: the emulator's root CA, a server certificate it signs, and the client trust store.

Devices trust ``root-ca.pem`` (kept in ``<state-dir>/mqtt/`` so it survives restarts, like Amazon's root
CA). The server certificate is issued at each start for the endpoint's host names. Python's ssl module
verifies client certificates itself and has no verify callback, so the trust store must hold every issuer
a device certificate may have: the registry's CA certificates, the stand-in Amazon and claim CAs, and
certificates registered without a CA (trusted as themselves, with partial chains allowed). Whether a
verified certificate may connect (registered, ACTIVE, claim not expired) is the registry's answer after
the handshake.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_CA_FILE = "root-ca.pem"
ROOT_KEY_FILE = "root-ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
ROOT_CA_NAME = "IoT Emulator MQTT Root CA"
ROOT_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_or_create_root_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The root CA in ``directory``, created on first use (ECDSA P-256, ten years)."""
    cert_path, key_path = directory / ROOT_CA_FILE, directory / ROOT_KEY_FILE
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        still_valid = cert.not_valid_after_utc > _now() + SERVER_VALIDITY
        if isinstance(key, ec.EllipticCurvePrivateKey) and still_valid:
            return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iot_emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CA_NAME),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, _private_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _subject_alternative_names(host_names: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in dict.fromkeys([*host_names, *LOOPBACK_NAMES]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def issue_server_certificate(
    directory: Path, root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate, host_names: list[str]
) -> tuple[Path, Path]:
    """A server certificate for ``host_names`` and the loopback names, written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_names[0])]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_VALIDITY, root.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(host_names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    cert_path, key_path = directory / SERVER_CERT_FILE, directory / SERVER_KEY_FILE
    _write_private(key_path, _private_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class ClientTrust:
    """The server's SSL context and the issuers it trusts; anchors may be added from any thread."""

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        # A device without a certificate, or with one no known issuer signed, fails the handshake, as on
        # AWS IoT (and s2n, the SDK's TLS, insists that the server asks for one).
        context.verify_mode = ssl.CERT_REQUIRED
        # Certificates registered without a CA are anchors themselves: accept a chain ending at one.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.context = context
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    def add(self, pem: str) -> None:
        """Trust ``pem`` as an issuer (or as itself) for handshakes from now on; repeats are ignored."""
        digest = hashlib.sha256(pem.strip().encode()).hexdigest()
        with self._lock:
            if digest in self._loaded:
                return
            self._loaded.add(digest)
            # An SSLError: the same certificate in another PEM spelling (already trusted), or unusable.
            with contextlib.suppress(ssl.SSLError):
                self.context.load_verify_locations(cadata=pem)
