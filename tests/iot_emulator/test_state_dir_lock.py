"""One emulator per --state-dir: a second fails fast (in-process and CLI); a killed one does not block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot_emulator.persistence import LOCK_FILE, StateDirInUse
from iot_emulator.server import EmulatorServer

ROOT = Path(__file__).resolve().parents[2]


def in_use_message(state_dir: Path, pid: int) -> str:
    return (
        f"state dir {state_dir.resolve()} is in use by another emulator (pid {pid}); "
        "stop it first or use another --state-dir"
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def running(state_dir: Path) -> Iterator[EmulatorServer]:
    server = EmulatorServer("127.0.0.1", 0, state_dir=state_dir).start()
    try:
        yield server
    finally:
        server.stop()


def start_cli(state_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iot_emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_a_second_server_on_the_same_state_dir_fails_until_the_first_stops(
    running: EmulatorServer, state_dir: Path
) -> None:
    with pytest.raises(StateDirInUse) as raised:
        EmulatorServer("127.0.0.1", 0, state_dir=state_dir)
    assert raised.value.pid == os.getpid()
    assert str(raised.value) == in_use_message(state_dir, os.getpid())

    running.stop()
    second = EmulatorServer("127.0.0.1", 0, state_dir=state_dir).start()
    try:
        assert second.state_dir == state_dir
    finally:
        second.stop()


def test_other_state_dirs_and_in_memory_servers_are_not_blocked(
    running: EmulatorServer, tmp_path: Path
) -> None:
    for other in (
        EmulatorServer("127.0.0.1", 0, state_dir=tmp_path / "other"),
        EmulatorServer("127.0.0.1", 0),
    ):
        other.stop()


def test_the_command_line_exits_2_with_one_line_naming_the_dir_and_pid(
    running: EmulatorServer, state_dir: Path
) -> None:
    process = start_cli(state_dir)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2
    assert stderr.decode() == f"error: {in_use_message(state_dir, os.getpid())}\n"


def test_a_lock_left_by_a_killed_emulator_does_not_block(state_dir: Path) -> None:
    process = start_cli(state_dir)
    try:
        lock = state_dir / LOCK_FILE
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip() == str(process.pid)):
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the emulator did not take the lock"
            time.sleep(0.05)
        with pytest.raises(StateDirInUse) as raised:
            EmulatorServer("127.0.0.1", 0, state_dir=state_dir)
        assert raised.value.pid == process.pid

        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()
    assert lock.read_text().strip() == str(
        process.pid
    )  # the stale file stays; its flock went with the process

    server = EmulatorServer("127.0.0.1", 0, state_dir=state_dir).start()
    try:
        assert lock.read_text().strip() == str(os.getpid())
    finally:
        server.stop()
