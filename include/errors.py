"""Domain errors: each says precisely what is wrong, never carries key material."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the domain package raises on purpose."""


class ManifestError(PipelineError):
    """The manifest as a whole cannot be read (encoding, header, required columns)."""


class CatalogError(PipelineError):
    """The product catalog or one of its templates is invalid."""


class TemplateError(CatalogError):
    """A provisioning template does not render to a valid body (undefined variable, bad JSON, too long)."""


class PreflightError(PipelineError):
    """IoT or inventory prerequisites are missing; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        super().__init__(
            f"pre-flight found {count} problem{'s' if count != 1 else ''}: " + "; ".join(self.problems) + "."
        )


class CertificateAuthorityError(PipelineError):
    """The CA material is unusable, or a request to it was refused."""


class CsrError(CertificateAuthorityError):
    """A device CSR is unparseable, badly signed or carries an unsupported key; `code` is the reason code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class KeyBundleError(PipelineError):
    """A key bundle cannot be written or opened (wrong key, tampered, unknown format)."""


class SourceError(PipelineError):
    """A manifest source (s3:// URI or local path) cannot be read."""


class AccountingError(PipelineError):
    """Row outcomes do not add up to the manifest's data rows (something would be lost)."""


class ReconcileError(PipelineError):
    """A registration report cannot be matched to the batch's parameter file."""


class InventoryError(PipelineError):
    """The inventory cannot be used (an earlier schema, an unreachable database)."""
