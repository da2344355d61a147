"""The IoT service of one account and region: every implemented operation over plain state.

Each public method is one IoT operation, named as botocore names it in snake_case (``create_thing``),
taking the operation's input members as keyword arguments (botocore's member names, ``thingName``) and
returning the output shape as a dict; errors are raised as ``IotError``. It knows nothing of HTTP: the
wire layer in front of it and the MQTT device endpoint (``fleet_mqtt``) call the same methods under ``lock``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from iot_emulator.bulk import BulkMixin
from iot_emulator.bulk_runner import BulkRunner
from iot_emulator.certificates import CertificatesMixin
from iot_emulator.faults import Faults
from iot_emulator.fleet_provisioning import FleetProvisioningMixin
from iot_emulator.policy_versions import PolicyVersionsMixin
from iot_emulator.provisioning import ProvisioningMixin
from iot_emulator.s3_store import S3Store
from iot_emulator.service_base import no_change_hook, no_trust_hook
from iot_emulator.state import DEFAULT_ACCOUNT, DEFAULT_REGION, IotState
from iot_emulator.tagging import TaggingMixin
from iot_emulator.thing_groups import ThingGroupsMixin
from iot_emulator.things import ThingsMixin


class IotService(
    ThingsMixin,
    ThingGroupsMixin,
    PolicyVersionsMixin,
    CertificatesMixin,
    ProvisioningMixin,
    FleetProvisioningMixin,
    BulkMixin,
    TaggingMixin,
):
    """The operations, given their state and collaborators; its ``runner`` does the background work."""

    def __init__(
        self,
        state: IotState,
        *,
        s3: S3Store,
        faults: Faults,
        clock: Callable[[], float] = time.time,
        lock: threading.RLock | None = None,
        on_change: Callable[[], None] = no_change_hook,
        on_trust_anchor: Callable[[str], None] = no_trust_hook,
        device_endpoint_host: str = "localhost",
    ) -> None:
        self.state = state
        self.s3 = s3
        self.faults = faults
        self.clock = clock
        # Re-entrant: a template run holds it and calls other operations of the same service.
        self.lock = lock if lock is not None else threading.RLock()
        self.on_change = on_change
        self.on_trust_anchor = on_trust_anchor
        self.device_endpoint_host = device_endpoint_host
        self._ca_objects = {}
        self._ca_ids_by_pem = {}
        self._stand_in_amazon_ca = None
        self._stand_in_claim_ca = None
        self._detached_at = {}
        self.runner = BulkRunner(self)


def in_memory_service(account_id: str = DEFAULT_ACCOUNT, region: str = DEFAULT_REGION) -> IotService:
    """A service without a server: fresh state and faults, S3 in moto's in-process backend, nothing saved."""
    from iot_emulator.moto_backends import s3_backend

    return IotService(
        IotState(account_id, region), s3=S3Store(lambda: s3_backend(account_id)), faults=Faults()
    )
