"""CA certificates, device certificates and the emulator's stand-in for Amazon's CA."""

from __future__ import annotations


class CertificatesMixin:
    def _init_certificates(self) -> None:
        pass
