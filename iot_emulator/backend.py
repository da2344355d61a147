"""The IoT backend: plain Python state and rules per account and region, knowing nothing of HTTP.

Each public method is one IoT operation, named as botocore names it in snake_case (``create_thing``),
taking the operation's input members as keyword arguments (botocore's member names, ``thingName``)
and returning the output shape as a dict. Errors are raised as ``IotError``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from iot_emulator.bulk import BulkMixin
from iot_emulator.certificates import CertificatesMixin
from iot_emulator.faults import Faults
from iot_emulator.provisioning import ProvisioningMixin
from iot_emulator.registry import RegistryMixin

DEFAULT_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"


class IotBackend(RegistryMixin, CertificatesMixin, ProvisioningMixin, BulkMixin):
    """State of one account and region. Attributes starting with ``_rt_`` are runtime-only (not persisted)."""

    def __init__(
        self,
        account_id: str = DEFAULT_ACCOUNT,
        region: str = DEFAULT_REGION,
        s3: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.account_id = account_id
        self.region = region
        self._rt_s3 = s3  # iot_emulator.s3_store.S3Store (bulk tasks read input and write reports there)
        self._rt_clock = clock
        self._rt_lock = threading.RLock()
        self._init_runtime_hooks()
        self._init_registry()
        self._init_certificates()
        self._init_provisioning()
        self._init_bulk()

    def arn(self, resource: str) -> str:
        """ARN of an IoT resource, e.g. ``arn("thing/foo")``."""
        return f"arn:aws:iot:{self.region}:{self.account_id}:{resource}"

    def now(self) -> float:
        return self._rt_clock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_rt_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._rt_s3 = None
        self._rt_clock = time.time
        self._rt_lock = threading.RLock()
        self._init_runtime_hooks()

    def _init_runtime_hooks(self) -> None:
        # The server replaces these: shared fault settings and its debounced state saver.
        self._rt_faults = Faults()
        self._rt_on_change: Callable[[], None] = _no_change_hook


def _no_change_hook() -> None:
    """Without a server (unit tests) nothing is persisted."""
