"""Runs bulk tasks through the pipeline's stages in a background thread (the API process standalone).

The stages are include.pipeline's, in the DAG's order, with the registration waited for in this process
(include.registration.run_to_end, as the benchmark and the tests drive it). One task at a time: the stages
already use every core, and AWS runs one registration task per account anyway. A task whose process died is
resumed by the next process (`resume`): the same run id picks up its claims and its AWS task.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from include import pipeline, registration
from include.cdf.bulk_plan import BulkPlan
from include.cdf.bulk_tasks import TASK_ID, BulkTask, RunnerState, TaskStore
from include.inventory import Inventory
from include.outcomes import RUN_FAILED, RUN_FINISHED
from include.settings import Settings

log = logging.getLogger(__name__)
Clients = Callable[[], tuple[Any, Any, Any]]  # (s3, iot, acm_pca)


def _call(stage: Callable[..., Any], *args: Any, **optional: Any) -> Any:
    """Call a stage with the optional keyword arguments it accepts (the pipeline grows them per mode)."""
    accepted = inspect.signature(stage).parameters
    return stage(*args, **{k: v for k, v in optional.items() if k in accepted})


def run_settings(settings: Settings, task: BulkTask) -> Settings:
    """The pipeline's settings for this task: its own catalog and ACM PCA when it has them."""
    changes: dict[str, Any] = {}
    if task.catalog_path:
        changes["catalog_path"] = task.catalog_path
    names = {f.name for f in dataclasses.fields(settings)}
    if task.acm_pca_arn and "acm_pca_arn" in names:
        changes["acm_pca_arn"] = task.acm_pca_arn
    return dataclasses.replace(settings, **changes)


class ThreadRunner:
    """A queue of bulk tasks and the one thread that runs them, stage after stage."""

    name = "thread"

    def __init__(
        self,
        *,
        clients: Clients,
        settings: Settings,
        factory_ca_pems: Callable[[], tuple[str, str]],
        poll: float = 0.25,
        timeout: float = 6 * 3600,
    ) -> None:
        self.clients, self.settings, self.factory_ca_pems = clients, settings, factory_ca_pems
        self.poll, self.timeout = poll, timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdf-bulk")
        self._states: dict[str, RunnerState] = {}
        self._lock = threading.Lock()

    def check(self, plan: BulkPlan) -> None:
        """Every plan runs here: the catalog and ACM PCA are the task's own (run_settings)."""

    def submit(self, task: BulkTask, user: str | None = None) -> None:
        self._set(task.task_id, RunnerState("queued"))
        self._executor.submit(self._run, task)

    def state(self, task: BulkTask) -> RunnerState | None:
        with self._lock:
            return self._states.get(task.task_id)

    def _set(self, task_id: str, state: RunnerState) -> None:
        with self._lock:
            self._states[task_id] = state

    def is_live(self, run_id: str, dag_id: str | None) -> bool | None:
        """The pipeline's IsLive: a bulk run this process does not hold is dead (one runner per inventory);
        any other run (a factory batch of Airflow) is unknown here, so treated as live."""
        if not TASK_ID.match(run_id):
            return None
        state = self._states.get(run_id)
        return state is not None and state.state in ("queued", "running")

    def _run(self, task: BulkTask) -> None:
        self._set(task.task_id, RunnerState("running"))
        settings = run_settings(self.settings, task)
        try:
            run_stages(
                self.clients, settings, task, self.factory_ca_pems, self.is_live, self.poll, self.timeout
            )
        except Exception as error:  # recorded on the run; domain errors carry no key material
            log.warning("bulk task %s failed: %s: %s", task.task_id, type(error).__name__, error)
            pipeline.fail_run(settings, task.task_id, task.manifest_uri, error)
            self._set(task.task_id, RunnerState("failed", f"{type(error).__name__}: {error}"))
        else:
            self._set(task.task_id, RunnerState("finished"))

    def resume(self, store: TaskStore) -> list[str]:
        """Queue again the thread-run tasks a previous process left unfinished; their ids."""
        inventory = Inventory(self.settings.inventory_url)
        resumed = []
        for task_id in store.task_ids():
            run = inventory.run(task_id) or {}
            if run.get("state") in (RUN_FINISHED, RUN_FAILED):
                continue
            task = store.get(task_id)
            if task is not None and task.runner == self.name:
                self.submit(task)
                resumed.append(task_id)
        return resumed

    def shutdown(self, wait: bool = False) -> None:
        """Queued tasks are dropped (a later process resumes them); `wait` lets the running one finish."""
        self._executor.shutdown(wait=wait, cancel_futures=True)


def run_stages(
    clients: Clients,
    settings: Settings,
    task: BulkTask,
    factory_ca_pems: Callable[[], tuple[str, str]],
    is_live: Any,
    poll: float,
    timeout: float,
) -> dict[str, Any]:
    """intake -> validate -> preflight -> credentials per chunk -> parameter files -> register and reconcile
    each unit -> summarize: what provision_factory_batch does, in this process."""
    s3, iot, acm_pca = clients()
    ca_certificate_pem, ca_private_key_pem = factory_ca_pems()
    batch = pipeline.intake(s3, settings, task.manifest_uri, run_id=task.task_id, dag_id=None)
    pipeline.validate(s3, settings, batch)
    checks = _call(
        pipeline.preflight,
        s3,
        iot,
        settings,
        batch,
        ca_certificate_pem=ca_certificate_pem,
        is_live=is_live,
        acm_pca=acm_pca,
    )
    results = [
        _call(
            pipeline.issue_credentials,
            s3,
            settings,
            batch,
            chunk,
            ca_certificate_pem,
            ca_private_key_pem,
            iot=iot,
            acm_pca=acm_pca,
        )
        for chunk in checks.chunks
    ]
    inventory = Inventory(settings.inventory_url)
    for unit in pipeline.write_parameter_files(s3, settings, batch, checks, results):
        state = registration.run_to_end(
            iot, s3, inventory, batch, unit, settings.registration_role_arn, poll=poll, timeout=timeout
        )
        pipeline.reconcile_task(iot, s3, settings, batch, unit, state)
    return pipeline.summarize(s3, settings, batch)
