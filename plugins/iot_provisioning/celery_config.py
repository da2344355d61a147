"""Celery settings of the deployment: Airflow's defaults, and a worker never reserves a task it cannot run.

`[celery] celery_config_options` points here. With `task_acks_late = False` (set in the environment) a
message is acknowledged when a worker starts its task; with prefetch disabled a worker takes a message only
when a process is free. A worker that dies therefore holds no unacknowledged message in Redis: the task it
was running is failed by Airflow's heartbeat timeout and retried on another worker, and nothing waits for
Redis's visibility timeout. docs/deployment.md ("When a worker dies") explains the choice.
"""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG, "worker_disable_prefetch": True}
