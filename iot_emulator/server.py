"""One HTTP endpoint: IoT to our service, every other AWS service to moto in-process, admin routes guarded.

``EmulatorServer`` is the composition root: it builds each region's ``IotService`` from plain state and
its collaborators (the S3 store, the shared faults, the debounced saver), loads and saves the state dir,
and dispatches requests.
"""

from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from werkzeug.serving import make_server

from iot_emulator import moto_backends
from iot_emulator.admin import ADMIN_PREFIX, AdminGuard, admin_app, is_admin_path
from iot_emulator.faults import Faults
from iot_emulator.http_io import error_response, json_response
from iot_emulator.iot_handler import READ_METHODS, iot_app
from iot_emulator.moto_documents import load_private_cas, load_secrets, save_private_cas, save_secrets
from iot_emulator.moto_state import S3Snapshot, load_sqs, save_sqs
from iot_emulator.mqtt_endpoint import MqttEndpoint
from iot_emulator.persistence import (
    MQTT_DIR,
    DebouncedSaver,
    StateDirLock,
    clear_state_dir,
    load_iot_states,
    save_iot_state,
)
from iot_emulator.provisioning_hooks import HookTarget, ProvisioningHooks
from iot_emulator.s3_store import S3Store
from iot_emulator.service import IotService
from iot_emulator.state import DEFAULT_ACCOUNT, DEFAULT_REGION, IotState

_CREDENTIAL = re.compile(r"Credential=[^/,\s]*/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
_QUERY_CREDENTIAL = re.compile(r"(?:^|&)X-Amz-Credential=([^&]+)")
MOTO_RESET_PATH = "/moto-api/reset"


def credential_scope(environ: dict[str, Any]) -> tuple[str | None, str | None]:
    """(service, region) of the request's SigV4 scope, from the Authorization header or a presigned query."""
    found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if found:
        return found.group(2), found.group(1)
    query = environ.get("QUERY_STRING", "")
    if "X-Amz-Credential" in query:
        found = _QUERY_CREDENTIAL.search(query)
        if found:
            parts = unquote(found.group(1)).split("/")
            if len(parts) == 5:
                return parts[3], parts[2]
    return None, None


class EmulatorServer:
    """The emulator, usable in-process (``start()``/``stop()``) or as a service (``serve_forever()``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: str | Path | None = None,
        faults: Faults | None = None,
        public_url: str | None = None,
        verbose: bool = False,
        admin_token: str | None = None,
        mqtt_port: int | None = None,
        mqtt_region: str = DEFAULT_REGION,
        mqtt_endpoint_host: str = "localhost",
        provisioning_hooks: dict[str, HookTarget] | None = None,
    ) -> None:
        self.host = host
        self.state_dir = Path(state_dir) if state_dir else None
        self.faults = faults or Faults()
        self.verbose = verbose
        self.public_url = public_url
        self.account_id = DEFAULT_ACCOUNT  # moto's S3 and SQS live in this account
        self.s3 = S3Store(self._s3_backend)
        self._admin_guard = AdminGuard(admin_token)
        self._services: dict[tuple[str, str], IotService] = {}
        self._services_lock = threading.Lock()
        self._moto_app: Any = None
        self._moto_lock = threading.Lock()
        self._saver: DebouncedSaver | None = None
        self._snapshot: S3Snapshot | None = None
        self._thread: threading.Thread | None = None
        # One emulator per state dir (else StateDirInUse): two would each save their copy over the other's.
        self._state_lock: StateDirLock | None = None
        self._server: Any = None
        # The device endpoint (MQTT over mutual TLS), serving one region; None without ``mqtt_port``.
        self.mqtt_region = mqtt_region
        self.mqtt_endpoint_host = mqtt_endpoint_host
        self.provisioning_hooks = ProvisioningHooks(provisioning_hooks or {})
        self._mqtt: MqttEndpoint | None = None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._state_lock = StateDirLock(self.state_dir)
            self._state_lock.acquire()
        try:
            self._server = make_server(
                host, port, self, threaded=True, request_handler=_request_handler(verbose)
            )
            self.port = self._server.server_port
            shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - display only
            self.endpoint_url = f"http://{shown_host}:{self.port}"
            self.s3.endpoint_url = public_url or self.endpoint_url
            self._load_state()
            if mqtt_port is not None:
                self._mqtt = MqttEndpoint(
                    lambda: self.backend(DEFAULT_ACCOUNT, self.mqtt_region),
                    host=host,
                    port=mqtt_port,
                    tls_dir=self.state_dir / MQTT_DIR if self.state_dir else None,
                    endpoint_host=mqtt_endpoint_host,
                    hooks=self.provisioning_hooks,
                ).start()
        except BaseException:
            if self._mqtt is not None:
                self._mqtt.stop()
            if self._saver is not None:  # a half-loaded state must not be saved over the files
                self._saver.close(save=False)
                self._saver = None
            if self._server is not None:
                self._server.server_close()
            self._release_state_dir()
            raise

    @property
    def mqtt_port(self) -> int | None:
        """The MQTT device endpoint's port (None when not serving MQTT)."""
        return self._mqtt.port if self._mqtt is not None else None

    @property
    def mqtt_root_ca(self) -> Path | None:
        """The root CA devices trust for MQTT (``<state-dir>/mqtt/root-ca.pem``, or in a temp dir)."""
        return self._mqtt.root_ca_path if self._mqtt is not None else None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> EmulatorServer:
        """Serve in a background thread; returns once the socket accepts requests."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="iot-emulator", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self._shutdown_state()

    def request_shutdown(self) -> None:
        """Make ``serve_forever()`` return (safe from a signal handler: does not block)."""
        threading.Thread(target=self._server.shutdown, daemon=True).start()

    def stop(self) -> None:
        """Stop serving, stop bulk workers (tasks stay InProgress for a restart to resume) and save."""
        if self._thread is not None:  # shutdown() would wait forever for a loop that never ran
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        self._shutdown_state()

    def _shutdown_state(self) -> None:
        if self._mqtt is not None:  # first: no device request may reach a service being shut down
            self._mqtt.stop()
            self._mqtt = None
        self.provisioning_hooks.close()
        for service in list(self._services.values()):
            service.runner.shutdown()
        if self._saver is not None:
            self._saver.close()
            self._saver = None
        self._release_state_dir()  # after the final save

    def _release_state_dir(self) -> None:
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    # ------------------------------------------------------------ services and state

    def backend(self, account_id: str = DEFAULT_ACCOUNT, region: str = DEFAULT_REGION) -> IotService:
        """The IoT service of one account and region (created on first use)."""
        key = (account_id, region)
        service = self._services.get(key)
        if service is None:
            with self._services_lock:
                service = self._services.get(key)
                if service is None:
                    service = self._services[key] = self._service(IotState(account_id, region))
        return service

    def _service(self, state: IotState) -> IotService:
        return IotService(
            state,
            s3=self.s3,
            faults=self.faults,
            on_change=self.save_soon,
            on_trust_anchor=self._trust_anchor,
            device_endpoint_host=self.mqtt_endpoint_host,
        )

    def _trust_anchor(self, pem: str) -> None:
        if self._mqtt is not None:
            self._mqtt.add_trust_anchor(pem)

    def _s3_backend(self) -> Any:
        return moto_backends.s3_backend(self.account_id)

    def _sqs_backends(self) -> Any:
        return moto_backends.sqs_backends(self.account_id)

    def save_soon(self) -> None:
        """Ask for a snapshot (debounced); a no-op without a state dir."""
        if self._saver is not None:
            self._saver.save_soon()

    def save_now(self) -> bool:
        """Write the state dir now; False when there is none (in memory)."""
        if self._saver is None:
            return False
        self._saver.save_now()
        return True

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "endpoint": self.endpoint_url,
            "stateDir": str(self.state_dir) if self.state_dir else None,
            "regions": sorted(region for _, region in self._services),
            "mqtt": None
            if self._mqtt is None
            else {
                "port": self._mqtt.port,
                "endpointHost": self.mqtt_endpoint_host,
                "region": self.mqtt_region,
                "rootCa": str(self._mqtt.root_ca_path),
            },
        }

    def _save(self) -> None:
        assert self.state_dir is not None and self._snapshot is not None
        with self._services_lock:  # a reset must not be followed by a save of what it forgot
            for service in list(self._services.values()):
                save_iot_state(self.state_dir, service.state, service.lock)
            self._snapshot.save()
            save_sqs(self.state_dir, self._sqs_backends)
            save_secrets(self.state_dir, lambda: moto_backends.secretsmanager_backends(self.account_id))
            save_private_cas(self.state_dir, lambda: moto_backends.acmpca_backends(self.account_id))

    def _load_state(self) -> None:
        if self.state_dir is None:
            return
        self._snapshot = S3Snapshot(self.state_dir, self._s3_backend)
        self._snapshot.load()
        load_sqs(self.state_dir, self._sqs_backends)
        load_secrets(self.state_dir, lambda: moto_backends.secretsmanager_backends(self.account_id))
        load_private_cas(self.state_dir, lambda: moto_backends.acmpca_backends(self.account_id))
        for state in load_iot_states(self.state_dir):
            self._services[(state.account_id, state.region)] = self._service(state)
        self._saver = DebouncedSaver(self._save)
        for service in self._services.values():
            service.runner.resume_interrupted()

    def reset(self) -> None:
        """Forget every IoT and moto resource (and the persisted files), and clear the faults."""
        with self._services_lock:
            for service in list(self._services.values()):
                service.runner.shutdown()
            self._services.clear()
            moto_backends.reset_moto()
            self.faults.reset()
            if self.state_dir is not None:
                clear_state_dir(self.state_dir)
                self._snapshot = S3Snapshot(self.state_dir, self._s3_backend)

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if is_admin_path(path):
            refusal = self._admin_guard.refusal(environ)
            if refusal is not None:
                return error_response(start_response, refusal, str(uuid.uuid4()))
            if path.rstrip("/") == MOTO_RESET_PATH and environ.get("REQUEST_METHOD") == "POST":
                # moto-style server-mode suites reset through moto's route: the IoT state must go too.
                self.reset()
                return json_response(start_response, 200, {"status": "ok"})
        if path.startswith(ADMIN_PREFIX):
            return admin_app(self, environ, start_response, path[len(ADMIN_PREFIX) :])
        service, region = credential_scope(environ)
        if service == "iot":
            return iot_app(self, environ, start_response, region or DEFAULT_REGION)
        if environ.get("REQUEST_METHOD") not in READ_METHODS:
            self.save_soon()
        return self._moto()(environ, start_response)

    def _moto(self) -> Any:
        if self._moto_app is None:
            with self._moto_lock:
                if self._moto_app is None:
                    self._moto_app = moto_backends.moto_wsgi_app()
        return self._moto_app


def _request_handler(verbose: bool) -> type:
    class Handler(moto_backends.moto_request_handler()):  # type: ignore[misc]
        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            if verbose:
                super().log_request(code, size)

    return Handler
