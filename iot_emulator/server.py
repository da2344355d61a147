"""One HTTP endpoint: IoT to our wire layer, every other AWS service to moto in-process, admin routes."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from werkzeug.serving import make_server

from iot_emulator import wire
from iot_emulator.backend import DEFAULT_ACCOUNT, DEFAULT_REGION, IotBackend
from iot_emulator.errors import IotError
from iot_emulator.faults import Faults
from iot_emulator.persistence import (
    DebouncedSaver,
    S3Snapshot,
    StateDirLock,
    clear_state_dir,
    load_iot_backends,
    load_sqs,
    save_iot_backend,
    save_sqs,
)
from iot_emulator.s3_store import S3Store, request_endpoint

log = logging.getLogger(__name__)

_CREDENTIAL = re.compile(r"Credential=[^/,\s]*/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
_QUERY_CREDENTIAL = re.compile(r"(?:^|&)X-Amz-Credential=([^&]+)")
_READ_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
ADMIN_PREFIX = "/_emulator/"


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


def _json_response(
    start_response: Any, status: int, doc: Any, headers: dict[str, str] | None = None
) -> list[bytes]:
    body = json.dumps(doc).encode()
    return _respond(start_response, status, body, headers)


def _respond(
    start_response: Any, status: int, body: bytes, headers: dict[str, str] | None = None
) -> list[bytes]:
    out = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if headers:
        out.extend(headers.items())
    start_response(_status_line(status), out)
    return [body]


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:  # a status the standard library does not name
        return f"{status} Status"


def error_response(start_response: Any, error: IotError, request_id: str) -> list[bytes]:
    """AWS's error encoding: modeled status, ``x-amzn-ErrorType: <Name>:``, JSON message + extra members."""
    headers = {"x-amzn-ErrorType": f"{error.code}:", "x-amzn-RequestId": request_id}
    return _json_response(start_response, error.status, error.body(), headers)


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
    ) -> None:
        self.host = host
        self.state_dir = Path(state_dir) if state_dir else None
        self.faults = faults or Faults()
        self.verbose = verbose
        self._public_url = public_url
        self.s3 = S3Store()
        self._backends: dict[tuple[str, str], IotBackend] = {}
        self._backends_lock = threading.Lock()
        self._moto_app: Any = None
        self._moto_lock = threading.Lock()
        self._saver: DebouncedSaver | None = None
        self._snapshot: S3Snapshot | None = None
        self._thread: threading.Thread | None = None
        # One emulator per state dir (else StateDirInUse): two would each save their copy over the other's.
        self._state_lock: StateDirLock | None = None
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
        except BaseException:
            if self._saver is not None:  # a half-loaded state must not be saved over the files
                self._saver.close(save=False)
                self._saver = None
            if getattr(self, "_server", None) is not None:
                self._server.server_close()
            self._release_state_dir()
            raise

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
        for backend in list(self._backends.values()):
            stop_workers = getattr(backend, "shutdown_bulk_workers", None)
            if stop_workers is not None:
                stop_workers()
        if self._saver is not None:
            self._saver.close()
            self._saver = None
        self._release_state_dir()  # after the final save

    def _release_state_dir(self) -> None:
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    # ------------------------------------------------------------ state

    def backend(self, account_id: str = DEFAULT_ACCOUNT, region: str = DEFAULT_REGION) -> IotBackend:
        """The IoT backend of one account and region (created on first use)."""
        key = (account_id, region)
        backend = self._backends.get(key)
        if backend is None:
            with self._backends_lock:
                backend = self._backends.get(key)
                if backend is None:
                    backend = self._attach(IotBackend(account_id, region))
                    self._backends[key] = backend
        return backend

    def _attach(self, backend: IotBackend) -> IotBackend:
        backend._rt_s3 = self.s3
        backend._rt_faults = self.faults
        backend._rt_on_change = self.save_soon
        return backend

    def save_soon(self) -> None:
        """Ask for a snapshot (debounced); a no-op without a state dir."""
        if self._saver is not None:
            self._saver.save_soon()

    def save_now(self) -> None:
        if self._saver is not None:
            self._saver.save_now()

    def _save(self) -> None:
        assert self.state_dir is not None and self._snapshot is not None
        with self._backends_lock:  # a reset must not be followed by a save of what it forgot
            for backend in list(self._backends.values()):
                save_iot_backend(self.state_dir, backend)
            self._snapshot.save()
            save_sqs(self.state_dir, self.s3.account_id)

    def _load_state(self) -> None:
        if self.state_dir is None:
            return
        self._snapshot = S3Snapshot(self.state_dir, self.s3.account_id)
        self._snapshot.load()
        load_sqs(self.state_dir, self.s3.account_id)
        for backend in load_iot_backends(self.state_dir):
            self._backends[(backend.account_id, backend.region)] = self._attach(backend)
        self._saver = DebouncedSaver(self._save)
        for backend in self._backends.values():
            resume = getattr(backend, "resume_interrupted_tasks", None)
            if resume is not None:
                resume()

    def reset(self) -> None:
        """Forget every IoT and moto resource (and the persisted files), and clear the faults."""
        from moto.core.base_backend import BackendDict
        from moto.core.model_instances import reset_model_data

        with self._backends_lock:
            for backend in list(self._backends.values()):
                stop_workers = getattr(backend, "shutdown_bulk_workers", None)
                if stop_workers is not None:
                    stop_workers()
            self._backends.clear()
            BackendDict.reset()
            reset_model_data()
            self.faults.reset()
            if self.state_dir is not None:
                clear_state_dir(self.state_dir)
                self._snapshot = S3Snapshot(self.state_dir, self.s3.account_id)

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(ADMIN_PREFIX):
            return self._admin(environ, start_response, path[len(ADMIN_PREFIX) :])
        service, region = credential_scope(environ)
        if service == "iot":
            return self._iot(environ, start_response, region or DEFAULT_REGION)
        if environ.get("REQUEST_METHOD") not in _READ_METHODS:
            self.save_soon()
        return self._moto()(environ, start_response)

    def _moto(self) -> Any:
        if self._moto_app is None:
            with self._moto_lock:
                if self._moto_app is None:
                    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

                    self._moto_app = DomainDispatcherApplication(create_backend_app)
        return self._moto_app

    def _iot(self, environ: dict[str, Any], start_response: Any, region: str) -> list[bytes]:
        request_id = str(uuid.uuid4())
        method = environ.get("REQUEST_METHOD", "GET")
        raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", ""))
        raw_path = raw_path.split("?", 1)[0]
        found = wire.match_route(method, raw_path)
        if found is None:
            error = IotError("UnknownOperationException", f"No IoT operation matches {method} {raw_path}.")
            error.status = 404
            return error_response(start_response, error, request_id)
        route, labels = found
        backend = self.backend(DEFAULT_ACCOUNT, region)
        operation = getattr(backend, wire.snake_case(route.name), None)
        if operation is None:
            error = IotError("NotImplemented", f"Operation {route.name} is not implemented by the emulator.")
            error.status = 501
            return error_response(start_response, error, request_id)
        try:
            fault = self.faults.request_fault(route.name)
            if fault is not None:
                raise fault
            body = _read_body(environ)
            params = wire.parse_input(route, labels, environ.get("QUERY_STRING", ""), _Headers(environ), body)
            token = request_endpoint.set(self._public_url or _caller_endpoint(environ))
            try:
                with backend._rt_lock:
                    result = operation(**params)
            finally:
                request_endpoint.reset(token)
            status, headers, payload = wire.serialise_output(route, result)
        except IotError as error:
            return error_response(start_response, error, request_id)
        except Exception:
            # The traceback names the operation only: request bodies can hold private keys.
            log.exception("IoT operation %s failed (request %s)", route.name, request_id)
            error = IotError("InternalFailureException", "An internal error occurred.")
            return error_response(start_response, error, request_id)
        if method not in _READ_METHODS:
            self.save_soon()
        headers["x-amzn-RequestId"] = request_id
        return _respond(start_response, status, payload, headers)

    def _admin(self, environ: dict[str, Any], start_response: Any, route: str) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        route = route.rstrip("/")
        if route == "health" and method == "GET":
            return _json_response(
                start_response,
                200,
                {
                    "status": "ok",
                    "endpoint": self.endpoint_url,
                    "stateDir": str(self.state_dir) if self.state_dir else None,
                    "regions": sorted(region for _, region in self._backends),
                },
            )
        if route == "reset" and method == "POST":
            self.reset()
            return _json_response(start_response, 200, {"status": "reset"})
        if route == "save" and method == "POST":
            self.save_now()
            return _json_response(start_response, 200, {"status": "saved" if self._saver else "in-memory"})
        if route == "faults":
            if method == "GET":
                return _json_response(start_response, 200, self.faults.settings())
            if method == "DELETE":
                self.faults.reset()
                return _json_response(start_response, 200, self.faults.settings())
            if method == "POST":
                try:
                    settings = json.loads(_read_body(environ) or b"{}")
                    if not isinstance(settings, dict):
                        raise ValueError("the body must be a JSON object of fault settings")
                    if settings.pop("reset", False):
                        self.faults.reset()
                    self.faults.update(settings)
                except (ValueError, TypeError) as exc:
                    return _json_response(start_response, 400, {"message": str(exc)})
                return _json_response(start_response, 200, self.faults.settings())
        return _json_response(
            start_response, 404, {"message": f"no admin route {method} {ADMIN_PREFIX}{route}"}
        )


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    if length > 0:
        return stream.read(length)
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""):
        return stream.read()
    return b""


def _caller_endpoint(environ: dict[str, Any]) -> str | None:
    host = environ.get("HTTP_HOST")
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}" if host else None


class _Headers:
    """Case-insensitive header lookup straight on the WSGI environ."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        return self._environ.get("HTTP_" + name.upper().replace("-", "_"))


def _request_handler(verbose: bool) -> type:
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class Handler(MotoRequestHandler):
        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            if verbose:
                super().log_request(code, size)

    return Handler
