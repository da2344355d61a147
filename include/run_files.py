"""Every S3 key a run writes, in one place.

Layout (bucket = settings.bucket, work = settings.work_prefix, run = the run id made key-safe):

    {work}{batch sha256}/manifest.csv            the manifest, keyed by its content hash (intake)
    {work}{batch}/runs/{run}/
        accepted.parquet                         validated rows, normalised (validate)
        quarantine.csv                           refused rows: cells, manifest_row, reason (validate;
                                                 summarize adds the rows refused later, if any)
        preflight.json                           the pre-flight report (preflight)
        templates/{group}.json                   the rendered provisioning template (preflight)
        chunks/{i}/devices.parquet               the devices of credentials chunk i (preflight)
        chunks/{i}/params.jsonl                  chunk i's parameter-file lines (issue_credentials)
        chunks/{i}/ledger.parquet                row <-> certificate id <-> line bytes (issue_credentials)
        bundles/chunk-{i}.tar.p7m                private keys of chunk i: CMS around a tar (issue_credentials)
        params/{unit}.jsonl                      input of one registration task: its chunks'
                                                 params.jsonl in order (write_parameter_files)
        certificates/{unit}.tar                  the unit's certificates when AWS or ACM PCA signed them
                                                 (not in the bundles: plain tar, keys pair by file name)
        failed.csv                               retry manifest in the manifest's own columns (summarize)
        summary.json, report.md                  the batch summary (summarize)

A registration unit (one StartThingRegistrationTask) is a run of consecutive chunks of one group; its ledger
is its chunks' ledgers in order, so line numbers and byte offsets are derived, never stored twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# StartThingRegistrationTask.inputFileKey's pattern: run ids and group names are kept inside it.
UNSAFE_KEY_CHARS = re.compile(r"[^a-zA-Z0-9!_.*'()-]")


def safe_key_part(text: str) -> str:
    """A run id or group name as an S3 key segment IoT's inputFileKey accepts (':' and '+' become '_')."""
    return UNSAFE_KEY_CHARS.sub("_", text)[:200] or "_"


@dataclass(frozen=True)
class RunFiles:
    """The S3 keys of one run of one batch."""

    bucket: str
    work_prefix: str
    batch_id: str
    run_id: str

    @property
    def batch_prefix(self) -> str:
        return f"{self.work_prefix}{self.batch_id}/"

    @property
    def manifest(self) -> str:
        return f"{self.batch_prefix}manifest.csv"

    @property
    def prefix(self) -> str:
        return f"{self.batch_prefix}runs/{safe_key_part(self.run_id)}/"

    @property
    def accepted(self) -> str:
        return f"{self.prefix}accepted.parquet"

    @property
    def quarantine(self) -> str:
        return f"{self.prefix}quarantine.csv"

    @property
    def preflight(self) -> str:
        return f"{self.prefix}preflight.json"

    def template(self, group: str) -> str:
        return f"{self.prefix}templates/{safe_key_part(group)}.json"

    def chunk_devices(self, index: int) -> str:
        return f"{self.prefix}chunks/{index:05d}/devices.parquet"

    def chunk_params(self, index: int) -> str:
        return f"{self.prefix}chunks/{index:05d}/params.jsonl"

    def chunk_ledger(self, index: int) -> str:
        return f"{self.prefix}chunks/{index:05d}/ledger.parquet"

    def bundle(self, index: int) -> str:
        return f"{self.prefix}bundles/chunk-{index:05d}.tar.p7m"

    @property
    def bundles_prefix(self) -> str:
        return f"{self.prefix}bundles/"

    def params(self, unit: str) -> str:
        return f"{self.prefix}params/{safe_key_part(unit)}.jsonl"

    def certificates(self, unit: str) -> str:
        return f"{self.certificates_prefix}{safe_key_part(unit)}.tar"

    @property
    def certificates_prefix(self) -> str:
        return f"{self.prefix}certificates/"

    @property
    def failed(self) -> str:
        return f"{self.prefix}failed.csv"

    @property
    def summary(self) -> str:
        return f"{self.prefix}summary.json"

    @property
    def report(self) -> str:
        return f"{self.prefix}report.md"
