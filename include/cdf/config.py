"""Where the CDF API finds templates and keeps bulk requests, and the ACM PCA aliases (CDF_* variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from include.settings import Settings, state_dir

# CDF's DEVICE_CERTIFICATE_EXPIRY_DAYS default: POST /things certificates without certInfo.daysExpiry.
DEFAULT_EXPIRY_DAYS = 365
PCA_ALIAS_PREFIX = "CDF_PCA_"  # CDF_PCA_<ALIAS>=<ACM PCA ARN>, CDF's PCA_<ALIAS>
IOT_CA_ALIAS_PREFIX = "CDF_CA_"  # CDF_CA_<ALIAS>=<IoT CA certificate ARN>, CDF's CA_<ALIAS>


def _prefix(value: str) -> str:
    return value if not value or value.endswith("/") else value + "/"


def _aliases(environ: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {
        name[len(prefix) :].lower(): value
        for name, value in environ.items()
        if name.startswith(prefix) and value and name != prefix
    }


@dataclass(frozen=True)
class CdfConfig:
    """The CDF API's own settings; the pipeline's (bucket, inventory, catalog) stay in `settings`."""

    settings: Settings
    templates_bucket: str
    templates_prefix: str = "templates/"
    templates_suffix: str = ".json"
    work_prefix: str = "cdf/"
    default_expiry_days: int = DEFAULT_EXPIRY_DAYS
    pca_aliases: Mapping[str, str] = field(default_factory=dict)
    iot_ca_aliases: Mapping[str, str] = field(default_factory=dict)
    # Catalogs derived from CDF templates for bulk runs: every process that runs a stage must read them.
    catalogs_dir: Path = field(default_factory=lambda: state_dir() / "cdf" / "catalogs")

    @classmethod
    def from_env(cls, settings: Settings, environ: Mapping[str, str] = os.environ) -> CdfConfig:
        """CDF_TEMPLATES_BUCKET (default: the pipeline's bucket), CDF_TEMPLATES_PREFIX, CDF_TEMPLATES_SUFFIX,
        CDF_WORK_PREFIX, CDF_DEVICE_CERTIFICATE_EXPIRY_DAYS, CDF_PCA_<ALIAS>, CDF_CA_<ALIAS>,
        CDF_CATALOGS_DIR."""
        days = environ.get("CDF_DEVICE_CERTIFICATE_EXPIRY_DAYS") or str(DEFAULT_EXPIRY_DAYS)
        if not days.isdigit() or int(days) < 1:
            raise ValueError(f"CDF_DEVICE_CERTIFICATE_EXPIRY_DAYS must be a positive integer, got {days!r}")
        return cls(
            settings=settings,
            templates_bucket=environ.get("CDF_TEMPLATES_BUCKET") or settings.bucket,
            templates_prefix=_prefix(environ.get("CDF_TEMPLATES_PREFIX", "templates/")),
            templates_suffix=environ.get("CDF_TEMPLATES_SUFFIX", ".json"),
            work_prefix=_prefix(environ.get("CDF_WORK_PREFIX") or "cdf/"),
            default_expiry_days=int(days),
            pca_aliases=_aliases(environ, PCA_ALIAS_PREFIX),
            iot_ca_aliases=_aliases(environ, IOT_CA_ALIAS_PREFIX),
            catalogs_dir=Path(environ.get("CDF_CATALOGS_DIR") or state_dir(environ) / "cdf" / "catalogs"),
        )

    def template_key(self, template_id: str) -> str:
        return f"{self.templates_prefix}{template_id}{self.templates_suffix}"

    @property
    def templates_location(self) -> str:
        return f"s3://{self.templates_bucket}/{self.templates_prefix}"
