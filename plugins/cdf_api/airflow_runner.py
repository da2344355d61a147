"""Bulk tasks as provision_factory_batch DAG runs, when the app is mounted in Airflow's API server.

The run id is the task id, so the inventory, the batch report and GET /bulkthings all name the same run;
the scheduler, the registration pool and Airflow's retries apply as to any factory batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from include.cdf.errors import BadRequest, Unavailable

if TYPE_CHECKING:
    from include.cdf.bulk_plan import BulkPlan
    from include.cdf.bulk_tasks import BulkTask, RunnerState

DAG_ID = "provision_factory_batch"
# DagRun state -> runner state (the inventory says more once the run's intake has run).
STATES = {"queued": "queued", "running": "running", "failed": "failed", "success": "finished"}


class AirflowRunner:
    name = "airflow"

    def __init__(self, dag_id: str = DAG_ID, *, pca_arn: Callable[[], str | None] = lambda: None) -> None:
        self.dag_id = dag_id
        self.pca_arn = pca_arn  # the DAG's PIPELINE_ACM_PCA_ARN, read when a request needs it

    def _params(self) -> dict[str, Any]:
        from airflow.models.serialized_dag import SerializedDagModel

        dag = SerializedDagModel.get_dag(self.dag_id)
        if dag is None:
            raise Unavailable(
                f"DAG {self.dag_id} is not in Airflow's metadata DB yet (has the dag-processor parsed it?)"
            )
        return dict(dag.params)

    def check(self, plan: BulkPlan) -> None:
        """Refuse what the DAG cannot run, before anything is stored (the DAG reads its own settings)."""
        params = self._params()
        if plan.catalog_path and "catalog" not in params:
            raise BadRequest(
                f"template {plan.template_id}: a CDF template runs in bulk as a derived catalog product, and "
                f"{self.dag_id} takes no `catalog` param; use a catalog product's id, or the standalone API"
            )
        configured = self.pca_arn()
        if plan.acm_pca_arn and plan.acm_pca_arn != configured:
            raise BadRequest(
                f"cdfProvisioningParameters: {self.dag_id} signs acm_pca products with "
                f"{configured or 'no ACM Private CA'} (PIPELINE_ACM_PCA_ARN), not {plan.acm_pca_arn}"
            )

    def submit(self, task: BulkTask, user: str | None = None) -> None:
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.utils.types import DagRunTriggeredByType

        conf: dict[str, Any] = {"manifest": task.manifest_uri}
        if task.catalog_path:
            conf["catalog"] = task.catalog_path
        trigger_dag(
            self.dag_id,
            run_id=task.task_id,
            conf=conf,
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name=user,
            note=f"CDF POST /bulkthings: template {task.template_id}, {task.rows} things",
        )

    def state(self, task: BulkTask) -> RunnerState | None:
        import sqlalchemy as sa
        from airflow.models.dag import DagModel
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        from include.cdf.bulk_tasks import RunnerState

        with create_session() as session:
            state = session.scalar(
                sa.select(DagRun.state).where(DagRun.dag_id == self.dag_id, DagRun.run_id == task.task_id)
            )
            paused = session.scalar(sa.select(DagModel.is_paused).where(DagModel.dag_id == self.dag_id))
        if state is None:
            return RunnerState("failed", f"Airflow has no run {task.task_id} of {self.dag_id}")
        name = STATES.get(str(state), "running")
        message = (
            f"DAG {self.dag_id} is paused: the run waits until it is unpaused"
            if paused and name == "queued"
            else None
        )
        links = {
            "airflowRun": f"/dags/{self.dag_id}/runs/{task.task_id}",
            "batchReport": f"/factory/dags/{self.dag_id}/runs/{task.task_id}/report",
        }
        return RunnerState(name, message, links)
