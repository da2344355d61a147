"""`make cluster` / `make cluster-stop`: the services of docker-compose.yaml, as processes on this machine.

docker-compose.yaml is the one definition of the deployment. This script reads it and starts the same
commands with the same environment, in the same order (each service after what it depends on is healthy
or, for the init services, completed), waiting on the same health checks, against this machine's
PostgreSQL and Redis instead of containers. What has to differ when every service shares one host and
one network namespace, and nothing else:

- host names: `postgres:5432`, `redis:6379`, `emulator:4566` and `airflow-apiserver:8080` become the local
  server and ports (emulator and API on loopback; `0.0.0.0` binds become `127.0.0.1`);
- paths: /opt/airflow/project is this checkout, /opt/airflow/state the cluster's state directory, and
  AIRFLOW_HOME (/opt/airflow in the image) its airflow/ folder;
- secrets: generated once into <state>/secrets.env (mode 0600) unless the environment gives them;
- per process: FACTORY_HOSTNAME/HOSTNAME name each service (worker-1, worker-2, ...; the containers'
  host names in compose), each worker gets its own Celery node name and log-server port, the scheduler's
  health port is a free one, `replicas` becomes WORKERS processes, PostgreSQL's databases are created
  here when missing (the postgres image's init script does it in compose), and each worker's credential
  processes default to cores / WORKERS (PIPELINE_WORKERS) since the workers share this machine's cores.

    python -m scripts.cluster up [--workers N] [--state-dir DIR] [--api-port P] [--emulator-port P]
                                 [--postgres URL] [--airflow-db NAME] [--inventory-db NAME]
                                 [--redis URL] [--redis-db N]
    python -m scripts.cluster down [--state-dir DIR]       # stops exactly the processes `up` recorded
    python -m scripts.cluster status [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
VENV_BIN = Path(sys.executable).parent
# Compose services that this machine already runs: only their health is checked (they are not started).
EXTERNAL_SERVICES = ("postgres", "redis")
WORKER_SERVICE = "airflow-worker"
# Where the image's paths are on this machine (longest prefix first; a test checks every mount is covered).
IMAGE_PATHS = ("/opt/airflow/project", "/opt/airflow/state", "/opt/airflow/logs", "/opt/airflow")
# What a process takes from the calling shell (a container's image gives it the same); nothing else leaks in.
INHERITED_ENV = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONDONTWRITEBYTECODE")
GENERATED_SECRETS = (
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
)
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_SERVICE_ADDRESS = re.compile(r"\b(postgres|redis|emulator|airflow-apiserver):(\d+)\b")


class ClusterError(Exception):
    """A service did not start or become healthy; the message names it and its log."""


def say(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        current = variables.get(name)
        if operator in (":-", "-"):
            missing = current is None or (operator == ":-" and current == "")
            return argument if missing else str(current)
        if operator in (":?", "?"):
            if current is None:  # natively an explicitly empty value is accepted (trust authentication)
                raise ClusterError(f"docker-compose.yaml needs {name}: {argument}")
            return str(current)
        return "" if current is None else str(current)

    if isinstance(value, str):
        return _VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    return value


@dataclass
class ClusterConfig:
    """Where the cluster runs on this machine (documented in docs/deployment.md)."""

    state_dir: Path
    workers: int = 2
    api_port: int = 8080
    emulator_port: int = 4566
    postgres: str = "postgresql://postgres@127.0.0.1:5432"
    airflow_db: str = "factory_airflow"
    inventory_db: str = "factory_inventory"
    redis: str = "redis://127.0.0.1:6379"
    redis_db: int = 5
    # Values of docker-compose.yaml's variables (AIRFLOW_TASK_HEARTBEAT_TIMEOUT, ...), as .env would give.
    overrides: dict[str, str] = field(default_factory=dict)
    # Environment added to every process started here (tests: a Redis key prefix, a small chunk size).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "cluster"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def postgres_parts(self) -> tuple[str, int, str, str]:
        url = urlsplit(self.postgres)
        return url.hostname or "127.0.0.1", url.port or 5432, url.username or "postgres", url.password or ""

    def redis_parts(self) -> tuple[str, int]:
        url = urlsplit(self.redis)
        return url.hostname or "127.0.0.1", url.port or 6379


def load_secrets(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """Secrets from the environment, else from <state>/secrets.env, else generated there (mode 0600)."""
    stored: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip():
                stored[name.strip()] = value.strip()
    generated = False
    for name in GENERATED_SECRETS:
        if name not in stored:
            stored[name] = (
                base64.urlsafe_b64encode(os.urandom(32)).decode()
                if name == "AIRFLOW_FERNET_KEY"
                else secrets.token_urlsafe(24)
            )
            generated = True
    if generated:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(f"{name}={value}\n" for name, value in sorted(stored.items())))
    return {name: environ.get(name) or value for name, value in stored.items()}


@dataclass
class Service:
    """One process to run: a compose service (or one replica of it) translated to this machine."""

    name: str
    compose_name: str
    command: list[str]
    environment: dict[str, str]
    depends_on: dict[str, str]
    healthcheck: dict[str, Any] | None
    one_shot: bool


@dataclass
class Started:
    name: str
    pid: int
    start_ticks: int
    log: str


def process_start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (tells a recorded pid from a reused one)."""
    fields_after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields_after_name[19])


def is_same_process(pid: int, start_ticks: int) -> bool:
    """The recorded process still runs (not gone, not a zombie, not a new process with a reused pid)."""
    try:
        return process_start_ticks(pid) == start_ticks and not _is_zombie(pid)
    except (OSError, IndexError, ValueError):
        return False


class Cluster:
    """The compose services on this machine: translate, start in dependency order, check, stop."""

    def __init__(self, config: ClusterConfig, compose_file: Path = COMPOSE_FILE) -> None:
        self.config = config
        self.compose = yaml.safe_load(compose_file.read_text())
        self.state_file = config.run_dir / "cluster.json"
        self.logs = config.run_dir / "logs"
        self.started: list[Started] = []
        self._ports = {
            ("emulator", 4566): config.emulator_port,
            ("airflow-apiserver", 8080): config.api_port,
            ("airflow-scheduler", 8974): free_port(),
        }

    # -- translation -------------------------------------------------------------------------------

    def variables(self) -> dict[str, str]:
        """The values docker-compose.yaml's ${...} take on this machine (.env's role in compose)."""
        config = self.config
        _, _, user, password = config.postgres_parts()
        values = dict(os.environ)
        values.update(load_secrets(config.state_dir / "secrets.env", os.environ))
        values.update(
            {
                "POSTGRES_USER": user,
                "POSTGRES_PASSWORD": password,
                "AIRFLOW_DB": config.airflow_db,
                "INVENTORY_DB": config.inventory_db,
                "REDIS_DB": str(config.redis_db),
                "AIRFLOW_UID": str(os.getuid()),
                "AIRFLOW_GID": str(os.getgid()),
                "AIRFLOW_WORKERS": str(config.workers),
                "AIRFLOW_BASE_URL": config.api_url,
                "AIRFLOW_API_WORKERS": "1",
            }
        )
        values.update(config.overrides)
        return values

    def _address(self, match: re.Match[str]) -> str:
        service, port = match.group(1), int(match.group(2))
        if service == "postgres":
            host, local_port, _, _ = self.config.postgres_parts()
            return f"{host}:{local_port}"
        if service == "redis":
            host, local_port = self.config.redis_parts()
            return f"{host}:{local_port}"
        if (service, port) not in self._ports:
            raise ClusterError(f"docker-compose.yaml names {service}:{port}, which has no local address")
        return f"127.0.0.1:{self._ports[(service, port)]}"

    def localise(self, text: str, service: str) -> str:
        """A compose string (env value, argument, health check) as it reads on this machine."""
        text = _SERVICE_ADDRESS.sub(self._address, text)
        for (owner, container_port), local_port in self._ports.items():
            if owner == service:
                text = re.sub(rf"\b127\.0\.0\.1:{container_port}\b", f"127.0.0.1:{local_port}", text)
        text = text.replace("0.0.0.0", "127.0.0.1")  # noqa: S104 (this replaces the all-interfaces bind)
        for prefix in IMAGE_PATHS:
            text = re.sub(rf"{re.escape(prefix)}(?=/|\b|$)", str(self.image_path(prefix)), text)
        return text

    def image_path(self, prefix: str) -> Path:
        state = self.config.state_dir
        return {
            "/opt/airflow/project": ROOT,
            "/opt/airflow/state": state,
            "/opt/airflow/logs": state / "airflow" / "logs",
            "/opt/airflow": state / "airflow",
        }[prefix]

    def _command(self, service: str, command: Any) -> list[str]:
        argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
        argv = [self.localise(part, service) for part in argv]
        for index, part in enumerate(argv[:-1]):
            if part == "--port" and (service, int(argv[index + 1])) in self._ports:
                argv[index + 1] = str(self._ports[(service, int(argv[index + 1]))])
        return argv

    def services(self) -> list[Service]:
        """Every compose service this machine starts, in compose order, workers expanded to replicas."""
        document = interpolate(self.compose, self.variables())
        inherited = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
        base_env = {
            **inherited,
            "AIRFLOW_HOME": str(self.image_path("/opt/airflow")),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(
                self._ports[("airflow-scheduler", 8974)]
            ),
        }
        services: list[Service] = []
        for name, spec in document["services"].items():
            if name in EXTERNAL_SERVICES:
                continue
            environment = {
                key: self.localise(str(value), name) for key, value in (spec.get("environment") or {}).items()
            }
            depends = {
                dep: (cond or {}).get("condition", "service_started")
                for dep, cond in (spec.get("depends_on") or {}).items()
            }
            one_shot = spec.get("restart") == "no"
            replicas = int((spec.get("deploy") or {}).get("replicas", 1))
            for index in range(1, replicas + 1):
                label = name.removeprefix("airflow-")
                host = f"worker-{index}" if name == WORKER_SERVICE else label
                command = self._command(name, spec["command"])
                env = {
                    **base_env,
                    **environment,
                    **self.config.extra_env,
                    "HOSTNAME": host,
                    "FACTORY_HOSTNAME": host,
                }
                env["PATH"] = base_env["PATH"]
                if name == WORKER_SERVICE:
                    command += ["--celery-hostname", f"celery@{host}"]
                    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
                    env.setdefault(
                        "PIPELINE_WORKERS", str(max(1, (os.cpu_count() or 1) // self.config.workers))
                    )
                if name == "airflow-triggerer":
                    env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
                healthcheck = spec.get("healthcheck")
                if healthcheck:
                    test = healthcheck["test"]
                    healthcheck = {
                        **healthcheck,
                        "test": [test[0], *(self.localise(t, name) for t in test[1:])],
                    }
                services.append(
                    Service(
                        host if replicas > 1 else name, name, command, env, depends, healthcheck, one_shot
                    )
                )
        return services

    # -- the machine's own PostgreSQL and Redis -------------------------------------------------------

    def ensure_databases(self) -> list[str]:
        """Create the Airflow and inventory databases when missing; returns those created."""
        import psycopg2

        host, port, user, password = self.config.postgres_parts()
        created = []
        connection = psycopg2.connect(host=host, port=port, user=user, password=password, dbname="postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                for name in (self.config.airflow_db, self.config.inventory_db):
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
                        created.append(name)
        finally:
            connection.close()
        return created

    def check_redis(self) -> None:
        host, port = self.config.redis_parts()
        try:
            with socket.create_connection((host, port), timeout=3) as connection:
                connection.sendall(b"PING\r\n")
                if not connection.recv(16).startswith(b"+PONG"):
                    raise ClusterError(f"Redis at {host}:{port} did not answer PING")
        except OSError as error:
            raise ClusterError(f"Redis at {host}:{port} is not reachable: {error}") from None

    # -- running -----------------------------------------------------------------------------------

    def _popen(self, service: Service) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{service.name}.log").open("ab")
        try:
            return subprocess.Popen(
                service.command,
                cwd=ROOT,
                env=service.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def _tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(text[-lines:])

    def _healthy_once(self, service: Service, timeout: float) -> bool:
        kind, *test = service.healthcheck["test"]
        argv = ["bash", "-c", test[0]] if kind == "CMD-SHELL" else test
        try:
            return (
                subprocess.run(
                    argv, cwd=ROOT, env=service.environment, capture_output=True, timeout=timeout, check=False
                ).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, service: Service, process: subprocess.Popen) -> None:
        """Compose's health semantics: after start_period, `retries` failed checks `interval` apart fail."""
        check = service.healthcheck or {}
        interval = _seconds(check.get("interval", "5s"))
        timeout = _seconds(check.get("timeout", "30s"))
        deadline = (
            time.monotonic()
            + _seconds(check.get("start_period", "0s"))
            + interval * int(check.get("retries", 3))
            + 60
        )  # this machine starts every service at once on two cores: allow a minute more
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(
                    f"{service.name} exited with code {process.returncode}:\n{self._tail(service.name)}"
                )
            if not check or self._healthy_once(service, timeout):
                return
            time.sleep(min(interval, 2.0))
        raise ClusterError(f"{service.name} did not become healthy:\n{self._tail(service.name)}")

    def _record(self, service: Service, process: subprocess.Popen) -> None:
        self.started.append(
            Started(
                service.name,
                process.pid,
                process_start_ticks(process.pid),
                str(self.logs / f"{service.name}.log"),
            )
        )
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(
            json.dumps(
                {
                    "api_url": self.config.api_url,
                    "emulator_url": self.config.emulator_url,
                    "processes": [vars(s) for s in self.started],
                },
                indent=2,
            )
        )

    def up(self) -> None:
        """Start every service in dependency order; on any failure stop what was started and raise."""
        if self.state_file.exists() and any(
            is_same_process(p["pid"], p["start_ticks"]) for p in _recorded(self.state_file)
        ):
            raise ClusterError(f"a cluster recorded in {self.state_file} is still running: stop it first")
        self.check_redis()
        created = self.ensure_databases()
        say(
            f"PostgreSQL databases {self.config.airflow_db}, {self.config.inventory_db}"
            + (f" (created {', '.join(created)})" if created else "")
        )
        pending = self.services()
        done: dict[str, str] = {name: "healthy" for name in EXTERNAL_SERVICES}
        try:
            while pending:
                ready = [
                    s for s in pending if all(_satisfied(done.get(d), c) for d, c in s.depends_on.items())
                ]
                if not ready:
                    raise ClusterError(f"cannot order {[s.name for s in pending]} by their depends_on")
                self._start_wave(ready, done)
                pending = [s for s in pending if s not in ready]
        except BaseException:
            self.down()
            raise

    def _start_wave(self, wave: list[Service], done: dict[str, str]) -> None:
        errors: list[BaseException] = []
        processes = {}
        for service in wave:
            say(f"starting {service.name}: {' '.join(service.command)[:100]}")
            processes[service.name] = process = self._popen(service)
            self._record(service, process)

        def settle(service: Service) -> None:
            process = processes[service.name]
            try:
                if service.one_shot:
                    code = process.wait(timeout=600)
                    if code != 0:
                        raise ClusterError(
                            f"{service.name} failed with code {code}:\n{self._tail(service.name)}"
                        )
                else:
                    self.wait_healthy(service, process)
            except BaseException as error:  # noqa: BLE001 (re-raised below, in the calling thread)
                errors.append(error)

        threads = [threading.Thread(target=settle, args=(s,)) for s in wave]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        for service in wave:
            state = "completed" if service.one_shot else "healthy"
            # A replicated service counts as healthy once all its replicas are.
            done[service.compose_name] = state
            done[service.name] = state
            say(f"{service.name} {state}")

    def down(self, grace: float = 20.0) -> list[str]:
        """TERM each recorded process group (newest first), KILL it after the grace period; returns names."""
        recorded = _recorded(self.state_file) if self.state_file.exists() else [vars(s) for s in self.started]
        stopped = []
        for entry in reversed(recorded):
            if is_same_process(entry["pid"], entry["start_ticks"]):
                _signal_group(entry["pid"], signal.SIGTERM)
                stopped.append(entry["name"])
        deadline = time.monotonic() + grace
        for entry in reversed(recorded):
            while _group_alive(entry["pid"]) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(entry["pid"]):
                _signal_group(entry["pid"], signal.SIGKILL)
        for entry in recorded:
            while _group_alive(entry["pid"]) and time.monotonic() < deadline + 10:
                time.sleep(0.1)
            _reap(entry["pid"])
        self.state_file.unlink(missing_ok=True)
        self.started = []
        return stopped

    def kill(self, name: str) -> int:
        """SIGKILL one service's whole process group (a worker lost with its machine); returns its pid."""
        for entry in _recorded(self.state_file):
            if entry["name"] == name and is_same_process(entry["pid"], entry["start_ticks"]):
                _signal_group(entry["pid"], signal.SIGKILL)
                while _group_alive(entry["pid"]):
                    time.sleep(0.05)
                _reap(entry["pid"])
                return int(entry["pid"])
        raise ClusterError(f"no running service {name!r} in {self.state_file}")


def _reap(pid: int) -> None:
    """Collect the exit status of a process this one started (else it stays a zombie until we exit)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(value).strip())
    if not match:
        raise ClusterError(f"unsupported duration {value!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number / 1000 if unit == "ms" else number * 60 if unit == "m" else number


def _satisfied(state: str | None, condition: str) -> bool:
    if condition == "service_completed_successfully":
        return state == "completed"
    if condition == "service_healthy":
        return state == "healthy"
    return state is not None


def _recorded(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text())["processes"])
    except (OSError, ValueError, KeyError):
        return []


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still "exists"; the group is gone once no member is runnable.
    return any(_pgid_of(pid) == pgid and not _is_zombie(pid) for pid in _pids())


def _pids() -> Iterable[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _pgid_of(pid: int) -> int | None:
    fields_after_name = _stat(pid)
    return int(fields_after_name[2]) if len(fields_after_name) > 2 else None


def _is_zombie(pid: int) -> bool:
    fields_after_name = _stat(pid)
    return bool(fields_after_name) and fields_after_name[0] == "Z"


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(
        state_dir=Path(args.state_dir).resolve(),
        workers=args.workers,
        api_port=args.api_port,
        emulator_port=args.emulator_port,
        postgres=args.postgres,
        airflow_db=args.airflow_db,
        inventory_db=args.inventory_db,
        redis=args.redis,
        redis_db=args.redis_db,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    env = os.environ.get
    parser.add_argument("--state-dir", default=env("CLUSTER_STATE_DIR") or str(ROOT / ".local" / "cluster"))
    parser.add_argument("--workers", type=int, default=int(env("WORKERS") or 2))
    parser.add_argument("--api-port", type=int, default=int(env("CLUSTER_API_PORT") or 8080))
    parser.add_argument("--emulator-port", type=int, default=int(env("CLUSTER_EMULATOR_PORT") or 4566))
    parser.add_argument("--postgres", default=env("CLUSTER_POSTGRES") or ClusterConfig.postgres)
    parser.add_argument("--airflow-db", default=env("CLUSTER_AIRFLOW_DB") or ClusterConfig.airflow_db)
    parser.add_argument("--inventory-db", default=env("CLUSTER_INVENTORY_DB") or ClusterConfig.inventory_db)
    parser.add_argument("--redis", default=env("CLUSTER_REDIS") or ClusterConfig.redis)
    parser.add_argument(
        "--redis-db", type=int, default=int(env("CLUSTER_REDIS_DB") or ClusterConfig.redis_db)
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    cluster = Cluster(config_from_args(args))
    if args.action == "down":
        stopped = cluster.down()
        say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    if args.action == "status":
        for entry in _recorded(cluster.state_file):
            alive = is_same_process(entry["pid"], entry["start_ticks"])
            print(
                f"{entry['name']:<22} pid {entry['pid']:<8} {'running' if alive else 'gone'}  {entry['log']}"
            )
        return 0
    started = time.monotonic()
    try:
        cluster.up()
    except ClusterError as error:
        print(f"[cluster] FAILED: {error}", file=sys.stderr)
        return 1
    password = cluster.variables()["AIRFLOW_ADMIN_PASSWORD"]
    say(f"up in {time.monotonic() - started:.0f} s: {args.workers} Celery worker(s), logs in {cluster.logs}")
    say(f"UI and REST API: {cluster.config.api_url}  (login: admin / {password})")
    say(f"emulator: {cluster.config.emulator_url}; stop everything with `make cluster-stop`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
