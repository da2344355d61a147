"""
# Manage the factory CA

The CA that signs the devices of `own_ca_key`, `device_csr` and `without_ca` products, through its life:

- `report` (the daily schedule, and by hand): every CA registered in AWS IoT with its status, expiry, days
  left and how many devices of the inventory it signed, and which is current. A scheduled run **fails** when
  an ACTIVE CA expires within 90 days, so somebody rotates in time.
- `create`: a new CA (P-256, `validity_days`), registered ACTIVE with a verification certificate and kept in
  the Secrets Manager secret Airflow serves as the connection `factory_ca`. Refused when one is there already.
- `import`: the same for your CA, read from another secret (`import_secret_id`: a connection in JSON, the key
  PEM as the password, `{"certificate_pem": ...}` as the extra) — key material never goes through the form.
- `rotate`: a new CA registered ACTIVE beside the current one, made current (new batches are signed by it);
  the old one stays ACTIVE, so its devices keep connecting, and its material moves to an archive secret.
- `retire`: a rotated-out CA (`ca_id`) set INACTIVE in IoT: its devices can no longer connect.

With `just_in_time_product`, the CA's registrationConfig is that product's provisioning template (JITP) with
the registration role. `dry_run` says what would change and changes nothing. The private key never reaches a
log, XCom or the repository; the result names certificate ids only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from plugins.iot_provisioning.dag_parts import FORM_SECTION, START_DATE, dry_run_param, retry_policy

ACTIONS = ["report", "create", "import", "rotate", "retire"]


@task
def manage_ca(params: dict | None = None, dag_run: Any = None) -> dict:
    """One action on the factory CA (its result: certificate ids, statuses, days; never key material)."""
    from airflow.sdk.exceptions import AirflowFailException

    from plugins.iot_provisioning.factory_ca_task import run_action

    result = run_action(params or {})
    scheduled = dag_run is not None and str(dag_run.run_type) in ("scheduled", "DagRunType.SCHEDULED")
    if result.get("expiring") and scheduled:
        raise AirflowFailException(
            f"factory CA(s) {', '.join(result['expiring'])} expire within 90 days: rotate "
            '(make dag DAG=manage_factory_ca CONF=\'{"action": "rotate"}\')'
        )
    return result


@dag(
    dag_id="manage_factory_ca",
    doc_md=__doc__,
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["iot", "provisioning", "factory", "ca"],
    default_args=retry_policy(
        retries=1, delay=timedelta(seconds=30), timeout=timedelta(minutes=15), backoff=False
    ),
    params={
        "action": Param("report", type="string", enum=ACTIONS, title="Action", section=FORM_SECTION),
        "dry_run": dry_run_param("Say what would change."),
        "common_name": Param(
            "Factory CA",
            type="string",
            minLength=1,
            maxLength=64,
            title="Common name",
            description="create and rotate: the new CA's subject common name.",
            section=FORM_SECTION,
        ),
        "validity_days": Param(
            7300, type="integer", minimum=30, maximum=36500, title="Validity (days)", section=FORM_SECTION
        ),
        "ca_id": Param(
            None,
            type=["null", "string"],
            title="CA certificate id",
            description="retire: which CA.",
            section=FORM_SECTION,
        ),
        "import_secret_id": Param(
            None,
            type=["null", "string"],
            title="Secret to import",
            description="import: the Secrets Manager secret holding the CA (key and certificate).",
            section=FORM_SECTION,
        ),
        "just_in_time_product": Param(
            None,
            type=["null", "string"],
            title="JITP product",
            description="create and rotate: the CA's just-in-time provisioning makes this product's things.",
            section=FORM_SECTION,
        ),
    },
)
def manage_factory_ca() -> None:
    manage_ca()


manage_factory_ca()
