"""Durable state under --state-dir: IoT backends pickled atomically, moto's S3 objects and SQS queues."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle  # noqa: S403 - our own state files, written by this process
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

IOT_DIR = "iot"
S3_DIR = "s3"
SQS_FILE = "sqs.json"
LOCK_FILE = ".lock"
DEBOUNCE_SECONDS = 0.5


# ---------------------------------------------------------------- one emulator per state dir


class StateDirInUse(RuntimeError):
    """Another emulator holds the state dir's lock: two would overwrite each other's snapshots."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"state dir {state_dir} is in use by another emulator ({holder}); "
            "stop it first or use another --state-dir"
        )
        self.state_dir = state_dir
        self.pid = pid


class StateDirLock:
    """An exclusive ``flock`` on ``DIR/.lock`` (holding our pid), for as long as the server runs.

    The kernel drops the lock when its holder exits, however it exits, so a ``.lock`` file left by a killed
    emulator does not block the next one. The file itself is never deleted (deleting it would let two
    processes lock two different inodes of the same name).
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; raise ``StateDirInUse`` naming the holder's pid if it is taken."""
        if fcntl is None:  # no flock on this platform: run unguarded, as before
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StateDirInUse(self.path.parent.resolve(), pid) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor of the open file releases the flock


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):  # the holder has not written it yet, or the file is not ours
        return None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it over: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- IoT


def save_iot_backend(state_dir: Path, backend: Any) -> None:
    """Pickle one IotBackend (its ``_rt_`` attributes are left out by ``__getstate__``)."""
    with backend._rt_lock:
        data = pickle.dumps(backend, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write(state_dir / IOT_DIR / f"{backend.account_id}-{backend.region}.pickle", data)


def load_iot_backends(state_dir: Path) -> list[Any]:
    backends = []
    for path in sorted((state_dir / IOT_DIR).glob("*.pickle")):
        try:
            backends.append(pickle.loads(path.read_bytes()))  # noqa: S301 - written by us
        except Exception:
            log.exception("could not load IoT state %s; starting that region empty", path)
    return backends


# ---------------------------------------------------------------- S3 (moto)


def _object_file(bucket: str, key: str) -> str:
    return hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()


class S3Snapshot:
    """Mirrors moto's S3 buckets and objects to files; writes only the objects that changed."""

    def __init__(self, state_dir: Path, account_id: str) -> None:
        self.root = state_dir / S3_DIR
        self.account_id = account_id
        self._saved_etags: dict[str, str] = {}  # file name -> etag last written

    def _backend(self) -> Any:
        from moto.s3.models import s3_backends

        return s3_backends[self.account_id]["aws"]

    def save(self) -> None:
        objects_dir = self.root / "objects"
        objects_dir.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {}
        wanted: set[str] = set()
        for name, bucket in list(self._backend().buckets.items()):
            entry: dict[str, Any] = {"region": bucket.region_name, "objects": {}}
            notification = getattr(bucket, "notification_configuration", None)
            if notification is not None:
                try:
                    entry["notification"] = pickle.dumps(notification).hex()
                except Exception:
                    log.warning("bucket %s: notification configuration not persisted", name)
            for key_name, key in list(bucket.keys.items()):
                file_name = _object_file(name, key_name)
                wanted.add(file_name)
                if self._saved_etags.get(file_name) != key.etag:
                    atomic_write(objects_dir / file_name, bytes(key.value))
                    self._saved_etags[file_name] = key.etag
                entry["objects"][key_name] = {"file": file_name, "metadata": dict(key.metadata)}
            index[name] = entry
        atomic_write(self.root / "index.json", json.dumps(index).encode())
        for stale in set(self._saved_etags) - wanted:
            (objects_dir / stale).unlink(missing_ok=True)
            del self._saved_etags[stale]

    def load(self) -> None:
        index_path = self.root / "index.json"
        if not index_path.exists():
            return
        backend = self._backend()
        index = json.loads(index_path.read_bytes())
        for name, entry in index.items():
            if name not in backend.buckets:
                backend.create_bucket(name, entry["region"])
            bucket = backend.buckets[name]
            if "notification" in entry:
                try:
                    bucket.notification_configuration = pickle.loads(bytes.fromhex(entry["notification"]))  # noqa: S301
                except Exception:
                    log.warning("bucket %s: notification configuration not restored", name)
            for key_name, obj in entry["objects"].items():
                path = self.root / "objects" / obj["file"]
                if not path.exists():
                    continue
                key = backend.put_object(name, key_name, path.read_bytes(), disable_notification=True)
                if obj.get("metadata"):
                    key.set_metadata(obj["metadata"])
                self._saved_etags[obj["file"]] = key.etag


# ---------------------------------------------------------------- SQS (moto)


def save_sqs(state_dir: Path, account_id: str) -> None:
    from moto.sqs.models import sqs_backends

    queues = []
    for region, backend in list(sqs_backends.get(account_id, {}).items()):
        for name, queue in list(backend.queues.items()):
            attributes = {
                k: json.dumps(v) if isinstance(v, dict) else str(v)
                for k, v in queue.attributes.items()
                if k in _SETTABLE_QUEUE_ATTRIBUTES and v not in (None, "", {})
            }
            messages = [m.body for m in list(queue._messages)]
            queues.append({"region": region, "name": name, "attributes": attributes, "messages": messages})
    atomic_write(state_dir / SQS_FILE, json.dumps(queues).encode())


def load_sqs(state_dir: Path, account_id: str) -> None:
    from moto.sqs.models import sqs_backends

    path = state_dir / SQS_FILE
    if not path.exists():
        return
    for queue in json.loads(path.read_bytes()):
        backend = sqs_backends[account_id][queue["region"]]
        if queue["name"] not in backend.queues:
            backend.create_queue(queue["name"], **queue["attributes"])
        for body in queue["messages"]:
            backend.send_message(queue["name"], body)


_SETTABLE_QUEUE_ATTRIBUTES = {
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "Policy",
}


# ---------------------------------------------------------------- debounced saving


class DebouncedSaver:
    """Runs ``save`` in a background thread at most once per ``interval`` after ``save_soon()`` calls."""

    def __init__(self, save: Callable[[], None], interval: float = DEBOUNCE_SECONDS) -> None:
        self._save = save
        self._interval = interval
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._run_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="emulator-state-saver", daemon=True)
        self._thread.start()

    def save_soon(self) -> None:
        self._wanted.set()

    def save_now(self) -> None:
        self._wanted.clear()
        with self._run_lock:
            try:
                self._save()
            except Exception:
                log.exception("saving the emulator state failed")

    def close(self, save: bool = True) -> None:
        """Stop the thread and write a final snapshot (unless ``save`` is false)."""
        self._stopping.set()
        self._wanted.set()
        self._thread.join(10)
        if save:
            self.save_now()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wanted.wait()
            if self._stopping.is_set():
                return
            started = time.monotonic()
            self.save_now()
            took = time.monotonic() - started
            # Requests arriving meanwhile only set the flag again: at most one save per interval, and
            # saving (which holds each backend's lock) never takes more than a fifth of the time.
            self._stopping.wait(max(self._interval - took, 4 * took))


def clear_state_dir(state_dir: Path) -> None:
    """Remove every persisted file (admin reset)."""
    for name in (IOT_DIR, S3_DIR):
        shutil.rmtree(state_dir / name, ignore_errors=True)
    (state_dir / SQS_FILE).unlink(missing_ok=True)
