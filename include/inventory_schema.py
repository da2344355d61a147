"""The inventory's tables (SQLAlchemy Core), its engines, and bulk loading into a staging table.

SQLite by default, PostgreSQL by URL. Bulk writes load rows into a temporary staging table (executemany of a
compiled INSERT on SQLite, COPY on PostgreSQL) and then change the real tables with one set-based statement
each, so a million rows cost a few microseconds each and every change is one atomic statement.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from include.errors import InventoryError

SCHEMA_VERSION = 4
LOAD_BATCH = 5000

metadata = sa.MetaData()

inventory_meta = sa.Table(
    "inventory_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True, comment="SHA-256 of the manifest bytes"),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("manifest_key", sa.Text, nullable=False),
    sa.Column("manifest_bytes", sa.BigInteger, nullable=False),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("batch_id", sa.String(64), index=True, comment="empty when the manifest could not be read"),
    sa.Column("dag_id", sa.String(250), comment="the Airflow DAG that ran it (liveness is asked there)"),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("product", sa.String(128)),
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("max_devices", sa.Integer),
    sa.Column("rows", sa.Integer),
    sa.Column("state", sa.String(16), nullable=False, comment="running, finished, failed or abandoned"),
    sa.Column("error", sa.Text, comment="why the run failed, when it did (never key material)"),
    sa.Column("adopted_by", sa.String(250), comment="the run that resumed this abandoned run's work"),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("summary", sa.JSON),
)

stage_timings = sa.Table(
    "stage_timings",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("stage", sa.String(64), primary_key=True),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("devices", sa.Integer),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

registration_tasks = sa.Table(
    "registration_tasks",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("unit", sa.String(160), primary_key=True, comment="group.part: one StartThingRegistrationTask"),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("group_name", sa.String(128), nullable=False),
    sa.Column("task_id", sa.String(40), comment="empty between the intent and AWS's answer"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("success_count", sa.Integer),
    sa.Column("failure_count", sa.Integer),
    sa.Column("message", sa.Text),
    sa.Column("spec", sa.JSON, nullable=False, comment="the RegistrationUnit (files, chunks, lines)"),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("thing_name", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("serial_number", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, comment="claimed, provisioned or failed"),
    sa.Column("thing_arn", sa.Text),
    sa.Column("certificate_id", sa.String(64)),
    sa.Column("certificate_arn", sa.Text),
    sa.Column(
        "issuer", sa.String(250), comment="who signed the certificate: CA certificate id, PCA ARN, aws"
    ),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False, comment="the run that holds or last changed it"),
    sa.Column("manifest_row", sa.Integer, nullable=False),
    sa.Column("registration_task_id", sa.String(40)),
    sa.Column("error_code", sa.String(128)),
    sa.Column("error_message", sa.Text),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("provisioned_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # Lifecycle (include.lifecycle) and drift repair (include.drift); schema 4.
    sa.Column(
        "certificate_status",
        sa.String(32),
        comment="the certificate's status as a lifecycle action or a drift repair left it; empty: as "
        "provisioned (ACTIVE)",
    ),
    sa.Column("lifecycle_action", sa.String(32), comment="the last lifecycle action or repair on the device"),
    sa.Column("lifecycle_run_id", sa.String(250), comment="the run of that action"),
    sa.Column("lifecycle_reason", sa.Text, comment="why: the operator's reason, or what the audit found"),
    sa.Column("lifecycle_at", sa.DateTime(timezone=True), comment="when that action ended"),
    sa.Index("ix_devices_model_serial", "model", "serial_number"),
    sa.Index("ix_devices_run_status", "run_id", "status"),
    sa.Index("ix_devices_issuer", "issuer"),
)

row_outcomes = sa.Table(
    "row_outcomes",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("manifest_row", sa.Integer, primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.Text),
    sa.Column("serial_number", sa.Text),
    sa.Column("thing_name", sa.String(128)),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason_code", sa.String(64), comment="quarantine or skip reason, or AWS error code"),
    sa.Column("reason", sa.Text),
    sa.Column("unit", sa.String(160), comment="registration unit (group.part) of the row's device"),
    sa.Column("param_line", sa.Integer, comment="1-based line in the unit's parameter file"),
    sa.Column("certificate_id", sa.String(64)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_row_outcomes_run_outcome", "run_id", "outcome"),
)

device_actions = sa.Table(
    "device_actions",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True, comment="the lifecycle (or provisioning) run"),
    sa.Column("thing_name", sa.String(128), primary_key=True),
    sa.Column("batch_id", sa.String(64), index=True),
    sa.Column("action", sa.String(32), nullable=False, comment="deactivate, revoke, ..., clean_orphans"),
    sa.Column("state", sa.String(16), nullable=False, comment="started, done, unchanged, failed, planned"),
    sa.Column("certificate_id", sa.String(64), comment="the device's certificate when the action started"),
    sa.Column("new_certificate_id", sa.String(64), comment="rekey: the certificate that replaced it"),
    sa.Column("steps", sa.JSON, comment="the steps done (or, in a dry run, that would be), in order"),
    sa.Column("retries", sa.Integer, comment="eventual-consistency conflicts retried"),
    sa.Column("error_code", sa.String(128)),
    sa.Column("reason", sa.Text, comment="the operator's reason, or why the action failed"),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_device_actions_run_state", "run_id", "state"),
)

# Columns each schema version added to tables that existed before it: upgrading adds them in place (every
# one nullable), and create_all makes the new tables. A version missing here cannot be upgraded.
_ADDED_COLUMNS: dict[int, dict[str, list[str]]] = {
    4: {
        "devices": [
            "certificate_status",
            "lifecycle_action",
            "lifecycle_run_id",
            "lifecycle_reason",
            "lifecycle_at",
        ]
    },
}

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()  # threads of one process (the CDF API and its bulk runner) share an engine


def engine_for(url: str) -> Engine:
    """One engine per URL per process; tables created on first use (idempotent on both dialects)."""
    engine = _engines.get(url)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(url)
            if engine is None:
                engine = _engines[url] = _create_engine(url)
    return engine


def dispose_engines() -> None:
    """Close every pooled connection and forget the engines (tests; processes about to fork)."""
    while _engines:
        _engines.popitem()[1].dispose()


@contextlib.contextmanager
def scratch_schema(url: str, prefix: str) -> Iterator[str]:
    """The PostgreSQL URL of a new schema (its connections' search_path), dropped with its tables at the
    end: a test's or a benchmark's inventory beside what the database already holds."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f'create schema "{schema}"'))
        parsed = sa.engine.make_url(url)
        yield parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        dispose_engines()  # close pooled connections before the schema goes
        with admin.begin() as connection:
            connection.execute(sa.text(f'drop schema if exists "{schema}" cascade'))
        admin.dispose()


def _create_engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    _create_tables(engine, url)
    return engine


def _use_wal(cursor: Any, wait_s: float = 60.0) -> None:
    """Switch the file to write-ahead logging, waiting out other processes that open it at the same moment.

    WAL is a property of the file, so only its first opener changes anything; SQLite does not apply the busy
    timeout to this change, which fails at once with 'database is locked' while another connection creates
    the file or its tables.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _create_tables(engine: Engine, url: str) -> None:
    existing = set(sa.inspect(engine).get_table_names())
    if "devices" in existing and "inventory_meta" not in existing:
        raise InventoryError(
            f"the inventory at {engine.url.render_as_string(hide_password=True)} has an earlier schema; this "
            f"version needs schema {SCHEMA_VERSION}: start a new inventory (for the local default, delete "
            "$STATE_DIR/inventory.db)"
        )
    # Another process may create the same tables at the same moment: each collision means one more table
    # exists, so a try per table is enough for every creator to finish.
    for attempt in range(len(metadata.tables)):
        try:
            metadata.create_all(engine)
            break
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            if attempt == len(metadata.tables) - 1:
                raise
    with engine.begin() as connection:
        connection.execute(
            insert_for(engine, inventory_meta)
            .values(key="schema_version", value=str(SCHEMA_VERSION))
            .on_conflict_do_nothing()
        )
        found = connection.execute(
            sa.select(inventory_meta.c.value).where(inventory_meta.c.key == "schema_version")
        ).scalar_one()
    if found != str(SCHEMA_VERSION) and found.isdigit():
        found = _upgrade(engine, int(found))
    if found != str(SCHEMA_VERSION):
        raise InventoryError(
            f"the inventory has schema {found}; this version of the pipeline reads schema {SCHEMA_VERSION}"
        )


def _upgrade(engine: Engine, version: int) -> str:
    """Add the columns of each later schema version to an older inventory; returns the version reached."""
    while version < SCHEMA_VERSION and version + 1 in _ADDED_COLUMNS:
        with engine.begin() as connection:
            present = {
                table: {c["name"] for c in sa.inspect(connection).get_columns(table)}
                for table in _ADDED_COLUMNS[version + 1]
            }
            for table, columns in _ADDED_COLUMNS[version + 1].items():
                for name in columns:
                    if name in present[table]:
                        continue  # another worker upgraded at the same moment
                    kind = metadata.tables[table].c[name].type.compile(dialect=connection.dialect)
                    connection.exec_driver_sql(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {kind}')
            version += 1
            connection.execute(
                sa.update(inventory_meta)
                .where(inventory_meta.c.key == "schema_version")
                .values(value=str(version))
            )
    return str(version)


def insert_for(engine: Engine | Connection, table: sa.Table) -> Any:
    """The dialect's INSERT (both have ON CONFLICT)."""
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def staging_table(name: str, columns: Sequence[tuple[str, Any]], key: str | None = None) -> sa.Table:
    """A temporary table of this connection: (name, SQLAlchemy type) columns; `key` (default the first
    column) is its primary key, the column the set-based statements join on."""
    key = key or columns[0][0]
    return sa.Table(
        name,
        sa.MetaData(),
        *(sa.Column(column, kind, primary_key=column == key) for column, kind in columns),
        prefixes=["TEMPORARY"],
    )


# Thing names to join on, for the claims and the device lookups of include.inventory.
NAMES_STAGE = staging_table("stage_names", [("thing_name", sa.String(128))])


def stage(connection: Connection, table: sa.Table, rows: Iterable[Sequence[Any]]) -> int:
    """Create the temporary table (empty), load rows (tuples in column order) into it; returns the count."""
    table.drop(connection, checkfirst=True)
    table.create(connection)
    if connection.dialect.name == "postgresql":
        return _copy(connection, table, rows)
    statement = str(table.insert().compile(dialect=connection.dialect))
    # The driver binds each row as it is (a tuple or list): no per-row Python here, batches by islice.
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    count, rows = 0, iter(rows)
    while batch := list(itertools.islice(rows, LOAD_BATCH)):
        cursor.executemany(statement, batch)
        count += len(batch)
    cursor.close()
    return count


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy(connection: Connection, table: sa.Table, rows: Iterable[Sequence[Any]]) -> int:
    """COPY ... FROM STDIN in PostgreSQL's text format (one round trip per few MB, not per row)."""
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    columns = ", ".join(f'"{c.name}"' for c in table.columns)
    count = 0
    buffer = io.StringIO()

    def flush() -> None:
        buffer.seek(0)
        cursor.copy_expert(f'COPY "{table.name}" ({columns}) FROM STDIN', buffer)
        buffer.seek(0)
        buffer.truncate()

    for row in rows:
        buffer.write("\t".join("\\N" if v is None else str(v).translate(_COPY_ESCAPES) for v in row) + "\n")
        count += 1
        if count % (LOAD_BATCH * 10) == 0:
            flush()
    if buffer.tell():
        flush()
    cursor.close()
    return count
