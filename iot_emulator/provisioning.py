"""Provisioning templates and versions, provisioning claims and RegisterThing."""

from __future__ import annotations


class ProvisioningMixin:
    def _init_provisioning(self) -> None:
        pass
