"""The device endpoint: TLS material, the broker and its fleet provisioning responder, on a loop thread."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from iot_emulator.fleet_mqtt import FleetProvisioningResponder
from iot_emulator.mqtt_broker import Broker
from iot_emulator.mqtt_tls import ROOT_CA_FILE, ClientTrust, issue_server_certificate, load_or_create_root_ca
from iot_emulator.provisioning_hooks import ProvisioningHooks

if TYPE_CHECKING:
    from iot_emulator.service import IotService

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
# Service calls run here, off the loop: few threads, as the region's lock serialises them anyway; more
# than one so that a pre-provisioning hook waiting on its target does not stall every other device.
WORKERS = 8


class MqttEndpoint:
    """MQTT over mutual TLS on ``host:port``; ``start()`` returns once the port accepts connections.

    ``tls_dir`` keeps the root CA across restarts (``<state-dir>/mqtt``); without one a temporary
    directory is used and removed by ``stop()``. ``service`` gives the served region's ``IotService``.
    """

    def __init__(
        self,
        service: Callable[[], IotService],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_dir: Path | None = None,
        endpoint_host: str = "localhost",
        hooks: ProvisioningHooks | None = None,
    ) -> None:
        self.host = host
        self.endpoint_host = endpoint_host
        self.hooks = hooks or ProvisioningHooks()
        self._requested_port = port
        self._service = service
        self._temp_dir = None if tls_dir is not None else Path(tempfile.mkdtemp(prefix="iot-emulator-mqtt-"))
        self.tls_dir = tls_dir if tls_dir is not None else self._temp_dir
        assert self.tls_dir is not None
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._broker: Broker | None = None
        self.trust: ClientTrust | None = None

    @property
    def root_ca_path(self) -> Path:
        """The CA devices must trust (``--ca_file`` / ``ca_filepath`` of the SDK)."""
        assert self.tls_dir is not None
        return self.tls_dir / ROOT_CA_FILE

    def start(self) -> MqttEndpoint:
        assert self.tls_dir is not None
        root_key, root = load_or_create_root_ca(self.tls_dir)
        cert_path, key_path = issue_server_certificate(self.tls_dir, root_key, root, self._host_names())
        self.trust = ClientTrust(cert_path, key_path)
        for pem in self._service().device_trust_anchors():
            self.trust.add(pem)
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="iot-emulator-mqtt-worker")
        self._broker = Broker(FleetProvisioningResponder(self._service, self.hooks, self._executor))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="iot-emulator-mqtt", daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            self._broker.start(self.host, self._requested_port, self.trust.context), self._loop
        )
        try:
            self.port = started.result(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def add_trust_anchor(self, pem: str) -> None:
        """A new issuer of device certificates (a registered CA): trusted from the next handshake on."""
        if self.trust is not None:
            self.trust.add(pem)

    def stop(self) -> None:
        """Close every connection and the port, end the loop thread and the workers: nothing left running."""
        loop, broker = self._loop, self._broker
        if loop is not None and broker is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(START_TIMEOUT)
            except Exception:  # a stuck connection must not keep the process from stopping
                log.exception("the MQTT endpoint did not stop cleanly")
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT)
        if loop is not None and not loop.is_running():
            loop.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._loop = self._thread = self._executor = self._broker = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def _host_names(self) -> list[str]:
        """Names the server certificate is valid for: the endpoint host, the bound address, loopback."""
        names = [self.endpoint_host]
        try:
            bound = ipaddress.ip_address(self.host)
        except ValueError:
            names.append(self.host)  # a host name to bind to is a name devices may use
        else:
            if not bound.is_unspecified:
                names.append(self.host)
        return names
