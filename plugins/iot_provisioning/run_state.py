"""How pipeline tasks tell Airflow about input errors, and ask it whether another run is still running."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# DagRun states in which a run may still change the devices it claimed.
LIVE_STATES = frozenset({"queued", "running"})


@contextlib.contextmanager
def fail_fast_on_input_errors(run_id: str, source: str) -> Iterator[None]:
    """A domain error (bad manifest, missing prerequisite, refused re-issue) fails the task at once.

    Errors the domain raises on purpose cannot succeed on a retry; they are recorded on the run in the
    inventory (so `make run` and the summary can say why) and raised as AirflowFailException, which Airflow
    never retries. Anything else (network, AWS throttling after botocore's retries, a lost worker) is left
    to Airflow's retries.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from include.errors import PipelineError

    try:
        yield
    except PipelineError as error:
        from include import pipeline
        from plugins.iot_provisioning.settings_source import pipeline_settings

        with contextlib.suppress(Exception):  # the inventory itself may be what is broken
            pipeline.fail_run(pipeline_settings(), run_id, source, error)
        raise AirflowFailException(str(error)) from error


@contextlib.contextmanager
def fail_fast(*also: type[Exception]) -> Iterator[None]:
    """A domain error (PipelineError), or one of ``also`` (a refused parameter: ValueError), fails the task at
    once: AirflowFailException, which Airflow never retries. Anything else (AWS throttling beyond botocore's
    retries, 5xx, a lost connection) is left to Airflow's retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.errors import PipelineError

    try:
        yield
    except (PipelineError, *also) as error:
        # a domain error's message is a whole sentence; a bare ValueError's needs its kind
        message = str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"
        raise AirflowFailException(message) from error


def airflow_liveness(ti: Any, default_dag_id: str) -> Any:
    """An include.pipeline.IsLive asking Airflow for the state of another DAG run (None when it cannot)."""

    def is_live(run_id: str, dag_id: str | None) -> bool | None:
        try:
            state = ti.get_dagrun_state(dag_id or default_dag_id, run_id)
        except Exception:  # unknown to this Airflow (another deployment, a benchmark): assume live
            return None
        return str(state) in LIVE_STATES

    return is_live
