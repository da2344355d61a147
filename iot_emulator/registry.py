"""Things, thing types, thing groups, policies and principal attachments."""

from __future__ import annotations


class RegistryMixin:
    def _init_registry(self) -> None:
        pass
