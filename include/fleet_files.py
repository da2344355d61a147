"""Every S3 key of fleet provisioning by claim, in one place (beside the batches, under the work prefix).

Layout (bucket = settings.bucket, work = settings.work_prefix, model = the fleet product's model):

    {work}fleet/{model}/claims/{certificate id}/
        claim.tar.p7m                  the claim's private key and certificate, for the factory line: the
                                       standard key bundle (CMS around a tar, include.key_bundle), one device
                                       entry named {model}-claim (prepare_fleet_claim)
        claim.json                     what the line needs besides: template name, device endpoint, the
                                       claim's certificate id, ARN and expiry (no key material)
    {work}fleet/{model}/reconciles/{run}/
        devices.csv                    the devices one reconcile recorded, one row each, in the order of
                                       their rows in the inventory: the synthetic run's manifest
        summary.json                   that run's summary
"""

from __future__ import annotations

from dataclasses import dataclass

from include.key_bundle import BUNDLE_SUFFIX
from include.run_files import safe_key_part


@dataclass(frozen=True)
class FleetFiles:
    """The S3 keys of one fleet product."""

    bucket: str
    work_prefix: str
    model: str

    @property
    def prefix(self) -> str:
        return f"{self.work_prefix}fleet/{safe_key_part(self.model)}/"

    def claim_prefix(self, certificate_id: str) -> str:
        return f"{self.prefix}claims/{certificate_id}/"

    def claim_bundle(self, certificate_id: str) -> str:
        return f"{self.claim_prefix(certificate_id)}claim{BUNDLE_SUFFIX}"

    def claim_record(self, certificate_id: str) -> str:
        return f"{self.claim_prefix(certificate_id)}claim.json"

    def reconcile_prefix(self, run_id: str) -> str:
        return f"{self.prefix}reconciles/{safe_key_part(run_id)}/"

    def reconcile_devices(self, run_id: str) -> str:
        return f"{self.reconcile_prefix(run_id)}devices.csv"

    def reconcile_summary(self, run_id: str) -> str:
        return f"{self.reconcile_prefix(run_id)}summary.json"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
