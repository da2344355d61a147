"""What every IoT operation may use: the region's state, the collaborators, and ARNs and time from them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iot_emulator.faults import DETACH_LAG

if TYPE_CHECKING:
    from cryptography import x509

    from iot_emulator.faults import Faults
    from iot_emulator.s3_store import S3Store
    from iot_emulator.state import IotState


def no_change_hook() -> None:
    """Without a server nothing is persisted."""


def no_trust_hook(pem: str) -> None:
    """Without an MQTT endpoint no TLS trust store needs new issuers."""


class ServiceBase:
    """The attributes the operation mixins share; ``IotService.__init__`` sets every one of them.

    Given, never injected later: ``state`` (plain, saved as JSON), ``s3`` (bulk input and reports),
    ``faults`` (shared by every region), ``clock``, ``lock`` (held around each operation by the caller:
    request threads, the bulk runner and the MQTT endpoint), ``on_change`` (asks the server to save soon),
    ``on_trust_anchor`` (tells the MQTT endpoint's TLS of a new issuer of device certificates) and
    ``device_endpoint_host`` (what DescribeEndpoint answers).
    """

    state: IotState
    s3: S3Store
    faults: Faults
    clock: Callable[[], float]
    lock: threading.RLock
    on_change: Callable[[], None]
    on_trust_anchor: Callable[[str], None]
    device_endpoint_host: str
    # Runtime caches derived from the state, never saved: parsed CA certificates, CA ids by PEM, and the
    # stand-in Amazon and claim CAs (their keys derive from the account id, so nothing secret is stored).
    _ca_objects: dict[str, x509.Certificate]
    _ca_ids_by_pem: dict[str, str]
    _stand_in_amazon_ca: tuple[Any, x509.Certificate] | None
    _stand_in_claim_ca: tuple[Any, x509.Certificate] | None
    # When each thing or certificate was last detached (the detach_lag fault's clock; runtime only).
    _detached_at: dict[str, float]

    @property
    def account_id(self) -> str:
        return self.state.account_id

    @property
    def region(self) -> str:
        return self.state.region

    def arn(self, resource: str) -> str:
        """ARN of an IoT resource, e.g. ``arn("thing/foo")``."""
        return f"arn:aws:iot:{self.region}:{self.account_id}:{resource}"

    def now(self) -> float:
        return self.clock()

    def _note_detach(self, *keys: str) -> None:
        """Remember a detach, while the detach_lag fault is on (otherwise it propagates at once)."""
        if self.faults.detach_lag:
            now = self.now()
            self._detached_at.update(dict.fromkeys(keys, now))

    def _still_propagating(self, key: str) -> bool:
        """Whether a delete that depends on the detach of ``key`` must be refused (the detach_lag fault):
        AWS applies detaches eventually, so a delete right after one may still see the attachment."""
        detached_at = self._detached_at.get(key)
        if detached_at is None:
            return False
        if self.now() - detached_at < self.faults.detach_lag:
            self.faults.count(DETACH_LAG)
            return True
        del self._detached_at[key]
        return False
