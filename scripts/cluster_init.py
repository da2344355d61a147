"""The Airflow objects a deployment starts with, idempotently (the init service, after `airflow db migrate`).

- the admin user of the FAB auth manager, its password from AIRFLOW_ADMIN_PASSWORD (updated when it
  changed: the environment is the source of the secret, the DB only holds its hash);
- the connection ``factory_inventory`` from FACTORY_INVENTORY_URI (created or updated);
- the Variable ``factory_pipeline`` from the PIPELINE_* variables this process sees, when it does not exist
  yet (afterwards it is edited in the UI and never overwritten here).

    python -m scripts.cluster_init          # prints one JSON object saying what it made
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from include.settings import ENV_NAMES
from plugins.iot_provisioning.settings_source import INVENTORY_CONN_ID, PIPELINE_VARIABLE

ADMIN_USER = "admin"
# Settings a deployment sets once in the Variable (paths of this machine and the inventory stay out).
VARIABLE_FIELDS = ("bucket", "inbox_prefix", "work_prefix", "registration_role_arn", "chunk_size")


def ensure_admin(password: str) -> str:
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        security = appbuilder.sm
        user = security.find_user(username=ADMIN_USER)
        if user is None:
            security.add_user(
                ADMIN_USER, "Factory", "Admin", "admin@localhost", security.find_role("Admin"), password
            )
            return "created"
        if not security.check_password(ADMIN_USER, password):
            security.reset_password(user.id, password)
            return "password updated"
        return "unchanged"


def ensure_inventory_connection(uri: str) -> str:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        existing = session.query(Connection).filter(Connection.conn_id == INVENTORY_CONN_ID).one_or_none()
        wanted = Connection(conn_id=INVENTORY_CONN_ID, uri=uri, description="Factory asset inventory")
        if existing is None:
            session.add(wanted)
            return "created"
        if existing.get_uri() != wanted.get_uri():
            session.delete(existing)
            session.flush()
            session.add(wanted)
            return "updated"
        return "unchanged"


def ensure_pipeline_variable(environ: dict[str, str]) -> str:
    from airflow.models.variable import Variable

    if Variable.get(PIPELINE_VARIABLE, default_var=None) is not None:
        return "unchanged"
    document: dict[str, Any] = {
        name: environ[ENV_NAMES[name]] for name in VARIABLE_FIELDS if environ.get(ENV_NAMES[name])
    }
    Variable.set(
        PIPELINE_VARIABLE,
        json.dumps(document, indent=2, sort_keys=True),
        description="Pipeline settings (fields of include.settings.Settings); PIPELINE_* fill the rest",
    )
    return "created"


def main() -> int:
    report: dict[str, str] = {}
    environ = dict(os.environ)
    if "FabAuthManager" in environ.get("AIRFLOW__CORE__AUTH_MANAGER", ""):
        password = environ.get("AIRFLOW_ADMIN_PASSWORD")
        if not password:
            print("cluster_init: AIRFLOW_ADMIN_PASSWORD is not set", file=sys.stderr)
            return 1
        report["admin"] = ensure_admin(password)
    if environ.get("FACTORY_INVENTORY_URI"):
        report[INVENTORY_CONN_ID] = ensure_inventory_connection(environ["FACTORY_INVENTORY_URI"])
    report[PIPELINE_VARIABLE] = ensure_pipeline_variable(environ)
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
