"""Durable state under --state-dir: one lock per dir, atomic writes, IoT state as versioned JSON, saving.

moto's S3 and SQS are mirrored by ``moto_state``; this module owns the IoT files and the shared plumbing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from iot_emulator.state import IotState, StateTooNew

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

IOT_DIR = "iot"
S3_DIR = "s3"
SQS_FILE = "sqs.json"
MQTT_DIR = "mqtt"  # the MQTT endpoint's root CA (kept by a reset: devices keep trusting it)
LOCK_FILE = ".lock"
DEBOUNCE_SECONDS = 0.5


# ---------------------------------------------------------------- one emulator per state dir


class StateDirError(RuntimeError):
    """The state dir cannot be used; the command line prints the message and exits 2."""


class StateDirInUse(StateDirError):
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


class StateFileTooNew(StateDirError):
    """A state file saved by a newer emulator: refuse to start rather than save over it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"state file {path}: {reason}")


def iot_state_path(state_dir: Path, account_id: str, region: str) -> Path:
    return state_dir / IOT_DIR / f"{account_id}-{region}.json"


def save_iot_state(state_dir: Path, state: IotState, lock: Any) -> None:
    """Write one region's state; ``lock`` is its service's, so no operation runs while it is serialised."""
    with lock:
        data = orjson.dumps(state.to_document())
    atomic_write(iot_state_path(state_dir, state.account_id, state.region), data)


def load_iot_states(state_dir: Path) -> list[IotState]:
    """Every region's saved state, upgraded to the current version; unreadable files are set aside."""
    directory = state_dir / IOT_DIR
    legacy = sorted(p.name for p in directory.glob("*.pickle"))
    if legacy:
        log.warning(
            "ignoring IoT state pickled by an older emulator in %s (%s): state is saved as JSON now, and "
            "a pickle is never loaded since unpickling runs code from the file; those regions start empty",
            directory,
            ", ".join(legacy),
        )
    states = []
    for path in sorted(directory.glob("*.json")):
        try:
            states.append(IotState.from_document(orjson.loads(path.read_bytes())))
        except StateTooNew as exc:
            raise StateFileTooNew(path, str(exc)) from None
        # orjson's errors and StateFormatError are ValueErrors; a record of the wrong shape, a TypeError
        except (OSError, ValueError, TypeError) as exc:
            aside = path.with_name(path.name + ".unreadable")
            path.replace(aside)  # the next save must not overwrite what could still be recovered by hand
            log.error(
                "could not load IoT state %s (%s); moved it to %s, that region starts empty", path, exc, aside
            )
    return states


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
            # saving (which holds each region's lock) never takes more than a fifth of the time.
            self._stopping.wait(max(self._interval - took, 4 * took))


def clear_state_dir(state_dir: Path) -> None:
    """Remove every persisted file (admin reset)."""
    for name in (IOT_DIR, S3_DIR):
        shutil.rmtree(state_dir / name, ignore_errors=True)
    for name in (SQS_FILE, "secretsmanager.json", "acm-pca.json"):
        (state_dir / name).unlink(missing_ok=True)
