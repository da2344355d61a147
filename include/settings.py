"""Pipeline settings: one frozen dataclass, filled from environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where local state lives: $STATE_DIR, else <repo>/.local."""
    return Path(environ.get("STATE_DIR") or REPO_ROOT / ".local")


def _default_inventory_url() -> str:
    return f"sqlite:///{state_dir() / 'inventory.db'}"


def _default_recipient() -> str:
    return str(state_dir() / "factory-line" / "recipient.cert.pem")


# Settings field -> environment variable.
ENV_NAMES = {
    "bucket": "PIPELINE_BUCKET",
    "inbox_prefix": "PIPELINE_INBOX_PREFIX",
    "work_prefix": "PIPELINE_WORK_PREFIX",
    "catalog_path": "PIPELINE_CATALOG",
    "inventory_url": "PIPELINE_INVENTORY_URL",
    "registration_role_arn": "PIPELINE_REGISTRATION_ROLE_ARN",
    "chunk_size": "PIPELINE_CHUNK_SIZE",
    "registration_task_lines": "PIPELINE_REGISTRATION_TASK_LINES",
    "workers": "PIPELINE_WORKERS",
    "bundle_recipient_public_key": "PIPELINE_BUNDLE_RECIPIENT",
    "acm_pca_arn": "PIPELINE_ACM_PCA_ARN",
    "ca_secret_id": "PIPELINE_CA_SECRET_ID",
    "orphans": "PIPELINE_ORPHANS",
}
ORPHAN_POLICIES = ("clean", "keep")  # include.lifecycle_orphans: what a failed bulk line's leftovers get


@dataclass(frozen=True)
class Settings:
    """Everything the domain functions need besides the AWS clients and the CA key."""

    bucket: str = "factory-provisioning"
    inbox_prefix: str = "inbox/"
    work_prefix: str = "batches/"
    catalog_path: str = str(REPO_ROOT / "catalog" / "products.yaml")
    inventory_url: str = field(default_factory=_default_inventory_url)
    registration_role_arn: str = "arn:aws:iam::123456789012:role/FactoryBulkRegistration"
    chunk_size: int = 5000
    # Lines per StartThingRegistrationTask: larger groups become several tasks, one after another.
    registration_task_lines: int = 100_000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    bundle_recipient_public_key: str = field(default_factory=_default_recipient)
    # The ACM Private CA that signs the certificates of acm_pca products (none: such products are refused).
    acm_pca_arn: str | None = None
    # The Secrets Manager secret holding the factory CA: what Airflow's SecretsManagerBackend serves as the
    # connection factory_ca (prefix airflow/connections), and what manage_factory_ca rotates.
    ca_secret_id: str = "airflow/connections/factory_ca"  # noqa: S105 - a secret's name, not its value
    # What a bulk line that failed after making a certificate or thing leaves: removed ("clean") or reported.
    orphans: str = "clean"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Build settings from PIPELINE_* variables; unset ones keep their defaults (STATE_DIR honoured)."""
        names = ENV_NAMES
        local = state_dir(environ)
        values: dict[str, object] = {
            "inventory_url": f"sqlite:///{local / 'inventory.db'}",
            "bundle_recipient_public_key": str(local / "factory-line" / "recipient.cert.pem"),
        }
        types = {f.name: f.type for f in fields(cls)}
        for attribute, variable in names.items():
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            if types[attribute] in ("int", int):
                try:
                    number = int(raw)
                except ValueError:
                    raise ValueError(f"{variable} must be an integer, got {raw!r}") from None
                if number < 1:
                    raise ValueError(f"{variable} must be at least 1, got {number}")
                values[attribute] = number
            else:
                values[attribute] = raw
        if values.get("orphans", "clean") not in ORPHAN_POLICIES:
            wanted = list(ORPHAN_POLICIES)
            raise ValueError(f"PIPELINE_ORPHANS must be one of {wanted}, got {values['orphans']!r}")
        for prefix in ("inbox_prefix", "work_prefix"):
            value = str(values.get(prefix, getattr(cls, prefix)))
            values[prefix] = value if value.endswith("/") else value + "/"
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_sources(
        cls, overrides: Mapping[str, object], environ: Mapping[str, str] = os.environ
    ) -> Settings:
        """Settings from ``overrides`` (field -> value, e.g. an Airflow Variable), then PIPELINE_* variables.

        Values go through the same parsing and checks as the environment's; unknown names are an error.
        """
        unknown = sorted(set(overrides) - set(ENV_NAMES))
        if unknown:
            raise ValueError(f"unknown pipeline settings {unknown}; known: {sorted(ENV_NAMES)}")
        merged = dict(environ)
        for name, value in overrides.items():
            if value is not None and value != "":
                merged[ENV_NAMES[name]] = str(value)
        return cls.from_env(merged)
