"""What the routes call: the domain services, the bulk task store and runner, built once per app."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from include.cdf.config import CdfConfig

if TYPE_CHECKING:  # the domain is imported when a request needs it (plugins load in every Airflow process)
    from include.catalog import Catalog
    from include.cdf.bulk_plan import BulkPlan
    from include.cdf.bulk_tasks import BulkTask, RunnerState, TaskStore
    from include.cdf.provision import ThingServices
    from include.certificate_authority import CertificateAuthority


class Runner(Protocol):
    """Runs bulk tasks: include.cdf.bulk_runner.ThreadRunner, or plugins.cdf_api.airflow_runner's DAG runs."""

    name: str

    def check(self, plan: BulkPlan) -> None: ...

    def submit(self, task: BulkTask, user: str | None = None) -> None: ...

    def state(self, task: BulkTask) -> RunnerState | None: ...


@dataclass
class Backend:
    """AWS clients (s3, iot, acm-pca), config, the factory CA, the bulk runner."""

    clients: Callable[[], tuple[Any, Any, Any]]
    config_source: Callable[[], CdfConfig]
    factory_ca_pems: Callable[[], tuple[str, str]]
    runner: Runner
    dag_id: str | None = None

    @functools.cached_property
    def config(self) -> CdfConfig:
        return self.config_source()

    def services(self) -> ThingServices:
        from include.cdf.provision import ThingServices
        from include.inventory import Inventory

        s3, iot, acm_pca = self.clients()
        settings = self.config.settings
        return ThingServices(
            iot=iot,
            s3=s3,
            acm_pca=acm_pca,
            config=self.config,
            catalog=lambda: _catalog(settings.catalog_path),
            inventory=lambda: Inventory(settings.inventory_url),
            factory_ca=self.factory_ca,
        )

    def factory_ca(self) -> CertificateAuthority:
        return _authority(*self.factory_ca_pems())

    def store(self) -> TaskStore:
        from include.cdf.bulk_tasks import TaskStore

        return TaskStore(self.clients()[0], self.config.settings.bucket, self.config.work_prefix)


def _catalog(path: str) -> Catalog:
    from include.catalog import load_catalog

    return load_catalog(path)


@functools.lru_cache(maxsize=4)
def _authority(certificate_pem: str, key_pem: str) -> CertificateAuthority:
    from include.certificate_authority import CertificateAuthority

    return CertificateAuthority.from_pem(certificate_pem, key_pem)
