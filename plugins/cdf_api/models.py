"""The request and response bodies of the six CDF provisioning routes (names as CDF spells them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class _Body(BaseModel):
    # CDF ignores fields it does not know; wrong types of known ones are refused, naming the field.
    model_config = ConfigDict(extra="ignore")


class ProvisionRequest(_Body):
    provisioningTemplateId: StrictStr
    parameters: dict[str, Any]
    cdfProvisioningParameters: dict[str, Any] | None = None


class BulkRegistrationRequest(_Body):
    provisioningTemplateId: StrictStr
    parameters: list[Any]
    cdfProvisioningParameters: dict[str, Any] | None = None


class PatchCertificateRequest(_Body):
    certificateStatus: StrictStr


class ProvisionResponse(BaseModel):
    """certificatePem; privateKey and publicKey only when this service made the key; resourceArns by
    the template's logical ids (CDF's policyLogicalName was always empty)."""

    certificatePem: str | None = None
    publicKey: str | None = None
    privateKey: str | None = None
    resourceArns: dict[str, str] = Field(default_factory=dict)

    def __repr__(self) -> str:  # never show the key
        return f"ProvisionResponse(resourceArns={self.resourceArns!r})"
