"""`make run` / `make dag`: a DAG of the project on this machine, through Airflow, against the emulator.

Starts the emulator in the background (state under $STATE_DIR/emulator), prepares Airflow
($STATE_DIR/airflow: metadata DB, connections from environment variables), bootstraps the account
(bucket, inbox notifications, development CA, thing types, groups, policies, templates, pool), runs
`airflow dags test <dag>` (provision_factory_batch on the manifest by default), prints progress, then the
DAG's result as ONE JSON object on the last line: the batch summary for the pipeline (also when the run
failed: then with its `error`), the return value of the DAG's last task otherwise. The emulator is always
stopped. Full logs: $STATE_DIR/logs/.

Before running, DAG runs that the metadata DB still shows running are marked failed: this process holds
the state directory's lock (the emulator's), so no other local run can be alive; a later run then resumes
what they left instead of waiting for them.

    python -m scripts.run_local [--manifest PATH_OR_S3_URI] [--dry-run] [--dag ID] [--conf JSON]
                                [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DAG_ID = "provision_factory_batch"
SECRETS_BACKEND = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
DEFAULT_MANIFEST = ROOT / "data" / "sample" / "manifest.csv"
# Lines of `airflow dags test` worth showing while it runs (everything goes to the log file).
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")
_TASK_STATE = re.compile(r"new_state=(failed|up_for_retry)")
# up to the ")" that ends "(883 lines)" or "(InProgress, 40%)": unit names hold dots ("TH-100.1")
_NOTE = re.compile(r"((?:Started|Resuming) registration task [^)]*\)|Thing registration task \S+: \{.*?\})")
_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")
_RUN_END = re.compile(r"DagRun Finished: .*?state=(\w+)")


class RunError(Exception):
    """A step of the local run failed; the message says which and where its log is."""


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else ""


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # e.g. "state dir ... is in use by another emulator (pid N)" when `make emulator` still runs
            raise RunError(f"the emulator exited with code {process.returncode}: {last_line(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (our own loopback URL)
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RunError(f"the emulator did not answer {url} within {timeout:.0f} s")


def stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """TERM the process group, then KILL it after a grace period."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


@contextmanager
def emulator(
    state_dir: Path, logs: Path, report: Callable[[str], None] = say, *, persist: bool = True
) -> Iterator[str]:
    """The emulator on a free loopback port, its state persisted under state_dir/emulator (or in memory)."""
    port = free_port()
    log_path = logs / "emulator.log"
    log_file = log_path.open("ab")
    # IOT_EMULATOR_ARGS passes extra flags, e.g. faults: "--task-line-delay 0.05" (resilience trials).
    extra = shlex.split(os.environ.get("IOT_EMULATOR_ARGS", ""))
    process = subprocess.Popen(
        [sys.executable, "-m", "iot_emulator", "--host", "127.0.0.1", "--port", str(port)]
        + (["--state-dir", str(state_dir / "emulator")] if persist else [])
        + extra,
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    # The emulator runs in a session of its own (a Ctrl-C at the terminal is ours to handle): on SIGTERM, as
    # on Ctrl-C, this process must unwind to the `finally` below, or the emulator outlives it.
    previous = _exit_on_sigterm()
    up = False
    try:
        wait_healthy(f"{endpoint}/_emulator/health", process, log_path)
        up = True
        report(f"emulator up at {endpoint} (state {state_dir / 'emulator'})")
        yield endpoint
    finally:
        stop_group(process)
        log_file.close()
        if up:  # one that never came up says why in the error instead
            report("emulator stopped")
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm() -> Any:
    """Turn SIGTERM into SystemExit(143) in this process; returns the handler before (None off the main
    thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def airflow_env(state_dir: Path, endpoint: str) -> dict[str, str]:
    """Environment of every Airflow command: own home, project folders, AWS connection on the emulator."""
    aws = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    return {
        "STATE_DIR": str(state_dir),
        "AIRFLOW_HOME": str(state_dir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        # The factory CA is the connection factory_ca, served from Secrets Manager (the emulator's here) by
        # Airflow's amazon secrets backend: bootstrap stores it there, manage_factory_ca rotates it.
        "AIRFLOW__SECRETS__BACKEND": SECRETS_BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(
            {
                "connections_prefix": "airflow/connections",
                "variables_prefix": None,
                "config_prefix": None,
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
            }
        ),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def factory_ca_connection(certificate_path: Path, key_path: Path) -> str:
    """AIRFLOW_CONN_FACTORY_CA: the key as the password, the certificate in the extra (never printed)."""
    return json.dumps(
        {
            "conn_type": "generic",
            "password": key_path.read_text(),
            "extra": {"certificate_pem": certificate_path.read_text()},
        }
    )


def run_step(name: str, command: list[str], env: dict[str, str], log_path: Path) -> str:
    """Run a command to completion, its output in log_path; raise RunError naming the step on failure."""
    with log_path.open("ab") as log_file:
        completed = subprocess.run(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log_file, check=False
        )
        log_file.write(completed.stdout)
    if completed.returncode != 0:
        raise RunError(f"{name} failed (exit {completed.returncode}); see {log_path}")
    return completed.stdout.decode(errors="replace")


class Progress:
    """Short progress notes from the lines of `airflow dags test` output: each task's end, how it ended."""

    def __init__(self) -> None:
        self._ended = "done"  # how the running task ended: its state line comes before its end line

    def note(self, line: str) -> str | None:
        if found := _TASK_END.search(line):
            task, index = found.groups()
            ended, self._ended = self._ended, "done"
            return f"task {task}{f'[{index}]' if index != '-1' else ''} {ended}"
        if found := _TASK_STATE.search(line):
            self._ended = found.group(1).replace("_", " ")
            return None
        if found := _NOTE.search(line):
            return found.group(1)
        if found := _RUN_END.search(line):
            return f"DAG run finished: {found.group(1)}"
        return None


def run_dag(dag_id: str, conf: dict[str, Any], env: dict[str, str], log_path: Path, timeout: int) -> bool:
    """`airflow dags test` (it ignores SIGTERM, hence timeout -k), progress lines echoed; True on success."""
    command = ["timeout", "-k", "10", str(timeout), "airflow", "dags", "test", dag_id, "-c", json.dumps(conf)]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        progress = Progress()
        for line in process.stdout:
            log_file.write(line)
            note = progress.note(line)
            if note:
                say(note)
        code = process.wait()
    if code in (124, 137):
        raise RunError(f"the DAG run did not finish within {timeout} s; see {log_path}")
    return code == 0


def fail_stale_runs() -> list[str]:
    """Mark DAG runs the local metadata DB still shows queued or running as failed; returns their ids.

    Only for the local state: this process holds the state dir's lock, so none of them can be alive.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    unfinished = (TaskInstanceState.RUNNING, TaskInstanceState.DEFERRED, TaskInstanceState.QUEUED)
    with create_session() as session:
        stale = session.scalars(
            select(DagRun).where(DagRun.state.in_((DagRunState.RUNNING, DagRunState.QUEUED)))
        ).all()
        for run in stale:
            for ti in session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == run.dag_id,
                    TaskInstance.run_id == run.run_id,
                    TaskInstance.state.in_(unfinished),
                )
            ):
                ti.state = TaskInstanceState.FAILED
            run.state = DagRunState.FAILED
        return [f"{run.dag_id}/{run.run_id}" for run in stale]


def last_run_key(dag_id: str) -> int:
    """The key of the DAG's newest run so far (0 for none): a run this process starts comes after it."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(select(func.max(DagRun.id)).where(DagRun.dag_id == dag_id)) or 0


def newest_run(dag_id: str, after: int, log_path: Path) -> tuple[str, str, list[str]]:
    """(run id, state, ids of its failed tasks) of the DAG's run newer than `after`: the one just made."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == dag_id, DagRun.id > after)
            .order_by(DagRun.id.desc())
            .limit(1)
        ).first()
        if run is None:  # an unknown DAG, or a conf its params refuse: Airflow made no run
            leaf_tasks(dag_id)  # names the DAGs there are when this one is not among them
            raise RunError(f"Airflow started no run of {dag_id}{_last_exception(log_path)}; see {log_path}")
        failed = session.scalars(
            select(TaskInstance.task_id).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run.run_id,
                TaskInstance.state == "failed",
            )
        ).all()
        return run.run_id, str(run.state), sorted(set(failed))


def task_results(dag_id: str, run_id: str, task_ids: list[str]) -> dict[str, Any]:
    """The return values of these tasks in one run (key material never reaches XCom)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id.in_(task_ids),
                XComModel.key == "return_value",
                XComModel.map_index == -1,
            )
        ).all()
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}


def leaf_tasks(dag_id: str) -> list[str]:
    """The DAG's last tasks (no downstream), whose return values are its result."""
    from airflow.models import DagBag

    # Its "Filling up the DagBag" line goes to stderr with the progress notes, not before the result.
    with contextlib.redirect_stdout(sys.stderr):
        bag = DagBag(dag_folder=str(ROOT / "dags"))
    dag = bag.dags.get(dag_id)
    if dag is None:
        known = ", ".join(sorted(bag.dags))
        raise RunError(f"no DAG {dag_id!r} in dags/ (known: {known})")
    return sorted(task.task_id for task in dag.tasks if not task.downstream_task_ids)


def _last_exception(log_path: Path) -> str:
    """': <type>: <message>' of the last exception in a run's log, or '' (domain messages hold no keys)."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    found = next((m for m in map(_EXCEPTION.match, reversed(lines)) if m), None)
    return f": {found.group(1)}: {found.group(2)}" if found else ""


def _failed(tasks: list[str]) -> str:
    return f"tasks {', '.join(tasks)} failed" if tasks else "the run failed before any task did"


def dag_result(dag_id: str, succeeded: bool, log_path: Path, after: int) -> tuple[dict[str, Any], str | None]:
    """(the result to print, the reason the run failed or None) of the run newer than `after`."""
    run_id, state, failed = newest_run(dag_id, after, log_path)
    if dag_id == DAG_ID:
        from include.pipeline import run_summary
        from include.settings import Settings

        summary = run_summary(Settings.from_env(), run_id) or {"run_id": run_id, "rows": 0, "accounted": True}
        if not succeeded:
            summary.setdefault("error", None)
            summary["error"] = summary["error"] or f"{_failed(failed)}; see {log_path}"
            summary["state"] = state
        return summary, summary.get("error") if not succeeded else None
    leaves = leaf_tasks(dag_id)
    results = task_results(dag_id, run_id, leaves)
    result: dict[str, Any] = results[leaves[0]] if len(leaves) == 1 and leaves[0] in results else results
    if not isinstance(result, dict):
        result = {"result": result}
    if not succeeded:
        error = f"{_failed(failed)}{_last_exception(log_path)}; see {log_path}"
        return {"dag_id": dag_id, "run_id": run_id, "state": state, "error": error, **result}, error
    return result, None


def _refused(dag_id: str, conf: dict[str, Any], error: str, code: int) -> int:
    """A run that could not start or whose result cannot be read: the reason, and still the JSON line last
    (for a batch, the summary's shape: nothing read, so nothing unaccounted)."""
    if dag_id == DAG_ID:
        result = {"source": conf.get("manifest"), "rows": 0, "accounted": True, "error": error}
    else:
        result = {"dag_id": dag_id, "error": error}
    _print_result(result, error)
    return code


def _print_result(result: dict[str, Any], error: str | None) -> None:
    """The reason of a failure on stderr, then the result as one JSON line, the last of stdout."""
    if error:
        print(f"[run] FAILED: {error}", file=sys.stderr, flush=True)
    print(json.dumps(result, sort_keys=True, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="local path or s3:// URI")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--dag", default=DAG_ID, help=f"the DAG to run (default {DAG_ID})")
    parser.add_argument("--conf", default=None, help="the run's conf as JSON (default: manifest, dry run)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds for the DAG run")
    args = parser.parse_args(argv)

    state_dir = Path(os.environ.get("STATE_DIR") or ROOT / ".local").resolve()
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        conf = json.loads(args.conf) if args.conf else None
    except ValueError as error:
        return _refused(args.dag, {}, f"CONF is not JSON: {error}", 2)
    if conf is None and args.dag == DAG_ID:
        manifest = args.manifest if args.manifest.startswith("s3://") else str(Path(args.manifest).resolve())
        if not manifest.startswith("s3://") and not Path(manifest).is_file():
            # Refused before anything starts, and still the summary line users read last.
            return _refused(args.dag, {"manifest": manifest}, f"manifest not found: {manifest}", 2)
        conf = {"manifest": manifest, "dry_run": args.dry_run}
    if not isinstance(conf or {}, dict):
        return _refused(args.dag, {}, "CONF must be a JSON object", 2)

    try:
        with emulator(state_dir, logs) as endpoint:
            env = {**os.environ, **airflow_env(state_dir, endpoint)}
            os.environ.update(env)  # the result is read from Airflow's DB in this process
            say(f"Airflow home {env['AIRFLOW_HOME']}: migrating the metadata DB")
            run_step("airflow db migrate", ["airflow", "db", "migrate"], env, logs / "airflow-db.log")
            for stale in fail_stale_runs():
                say(f"marked {stale} failed: it was left running by a process that is gone")
            say("bootstrapping the account (bucket, inbox queue, CA, types, groups, policies, pool)")
            report = json.loads(
                run_step(
                    "bootstrap",
                    [sys.executable, "-m", "scripts.bootstrap", "--endpoint-url", endpoint, "--airflow-pool"],
                    env,
                    logs / "bootstrap.log",
                )
                .strip()
                .splitlines()[-1]
            )
            env["PIPELINE_INBOX_QUEUE_URL"] = report["inbox_queue_url"]
            if report.get("acm_pca_arn"):
                env["PIPELINE_ACM_PCA_ARN"] = report["acm_pca_arn"]
            run_log = logs / f"dag-run-{time.strftime('%Y%m%dT%H%M%S')}.log"
            say(f"running {args.dag} with conf {json.dumps(conf or {})} (log {run_log})")
            after = last_run_key(args.dag)
            succeeded = run_dag(args.dag, conf or {}, env, run_log, args.timeout)
            result, error = dag_result(args.dag, succeeded, run_log, after)
    except RunError as error:
        return _refused(args.dag, conf or {}, str(error), 1)
    except KeyboardInterrupt:
        print("[run] interrupted", file=sys.stderr)
        return 130
    _print_result(result, error)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
