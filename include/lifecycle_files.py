"""Every S3 key a lifecycle run (manage_devices) or a drift audit (audit_drift) writes, in one place.

Layout (bucket = settings.bucket; run = the Airflow run id made key-safe, as include.run_files does):

    lifecycle/{run}/
        plan.json                       the selection, the action, the chunks (plan)
        chunks/{i}/devices.parquet      the devices of chunk i, from the inventory (plan)
        chunks/{i}/issued.jsonl         rekey: chunk i's new certificates (PEM or CSR, id); written once, so a
                                        retried chunk registers the same certificates, never new ones
        bundles/chunk-{i}{suffix}       rekey with new keys: chunk i's private keys for the factory line
                                        (include.key_bundle, the pipeline's sealing)
        certificates/chunk-{i}.tar      rekey of AWS-issued products: the certificates AWS signed
        changes.csv                     every device's steps: done, or (dry run) what would be done
        summary.json, report.md         counts, retries, calls (summarize)
    audits/{run}/
        plan.json, chunks/{i}/devices.parquet    the inventory's devices in scope
        chunks/{i}/drift.parquet        the differences found in chunk i
        unknown.parquet                 things and certificates the registry has and the inventory does not
        drift.csv                       every difference, one row each
        summary.json, report.md
"""

from __future__ import annotations

from dataclasses import dataclass

from include.key_bundle import BUNDLE_SUFFIX
from include.run_files import safe_key_part

LIFECYCLE_PREFIX = "lifecycle/"
AUDIT_PREFIX = "audits/"


@dataclass(frozen=True)
class ActionFiles:
    """The S3 keys of one lifecycle run or one audit (``kind`` is LIFECYCLE_PREFIX or AUDIT_PREFIX)."""

    bucket: str
    run_id: str
    kind: str = LIFECYCLE_PREFIX

    @property
    def prefix(self) -> str:
        return f"{self.kind}{safe_key_part(self.run_id)}/"

    @property
    def plan(self) -> str:
        return f"{self.prefix}plan.json"

    def chunk_devices(self, index: int) -> str:
        return f"{self.prefix}chunks/{index:05d}/devices.parquet"

    def chunk_issued(self, index: int) -> str:
        return f"{self.prefix}chunks/{index:05d}/issued.jsonl"

    def chunk_drift(self, index: int) -> str:
        return f"{self.prefix}chunks/{index:05d}/drift.parquet"

    def bundle(self, index: int) -> str:
        return f"{self.prefix}bundles/chunk-{index:05d}{BUNDLE_SUFFIX}"

    def certificates(self, index: int) -> str:
        return f"{self.prefix}certificates/chunk-{index:05d}.tar"

    @property
    def unknown(self) -> str:
        return f"{self.prefix}unknown.parquet"

    @property
    def changes(self) -> str:
        return f"{self.prefix}changes.csv"

    @property
    def drift(self) -> str:
        return f"{self.prefix}drift.csv"

    @property
    def summary(self) -> str:
        return f"{self.prefix}summary.json"

    @property
    def report(self) -> str:
        return f"{self.prefix}report.md"
