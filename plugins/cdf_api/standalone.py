"""The backend of the standalone server (`make cdf-api`): boto3 on one endpoint, the local CA, a thread."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from include.cdf.bulk_runner import ThreadRunner
from include.cdf.config import CdfConfig
from include.settings import Settings
from plugins.cdf_api.backend import Backend

RETRIES = Config(retries={"mode": "standard", "max_attempts": 8})
CA_CERTIFICATE_FILE, CA_KEY_FILE = "factory-ca.pem", "factory-ca.key.pem"  # scripts.bootstrap's files


def local_factory_ca(state_dir: Path) -> tuple[str, str]:
    """The factory CA bootstrap keeps under $STATE_DIR/ca/ (certificate PEM, key PEM)."""
    directory = state_dir / "ca"
    return (directory / CA_CERTIFICATE_FILE).read_text(), (directory / CA_KEY_FILE).read_text()


def standalone_backend(
    *,
    endpoint_url: str | None,
    region: str,
    state_dir: Path,
    config: CdfConfig | None = None,
    poll: float = 0.25,
) -> tuple[Backend, ThreadRunner]:
    """A backend over boto3 clients on `endpoint_url` (None: AWS itself) and the bulk thread runner."""
    config = config or CdfConfig.from_env(Settings.from_env())

    @functools.lru_cache(maxsize=1)
    def clients() -> tuple[Any, Any, Any]:
        session = boto3.session.Session(region_name=region)
        return tuple(  # type: ignore[return-value]
            session.client(name, endpoint_url=endpoint_url, config=RETRIES)
            for name in ("s3", "iot", "acm-pca")
        )

    def factory_ca_pems() -> tuple[str, str]:
        return local_factory_ca(state_dir)

    runner = ThreadRunner(
        clients=clients, settings=config.settings, factory_ca_pems=factory_ca_pems, poll=poll
    )
    return Backend(clients, lambda: config, factory_ca_pems, runner), runner
