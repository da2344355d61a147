"""Bulk thing registration tasks, run in the background like AWS runs them."""

from __future__ import annotations


class BulkMixin:
    def _init_bulk(self) -> None:
        pass
