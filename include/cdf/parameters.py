"""CDF's request-side extension inputs: `cdfProvisioningParameters` and the template's `CDF` block."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from include.catalog import KEY_ALGORITHMS, MAX_VALIDITY_DAYS
from include.cdf.errors import BadRequest
from include.cdf.validation import parse

# The four certificate modes of a CDF block, in the order CDF's pre-steps test them.
CREATE_DEVICE_CERTIFICATE = "createDeviceCertificate"
CREATE_DEVICE_AWS_CERTIFICATE = "createDeviceAWSCertificate"
REGISTER_WITHOUT_CA = "registerDeviceCertificateWithoutCA"
ACMPCA = "acmpca"
CERTIFICATE_MODES = (CREATE_DEVICE_CERTIFICATE, CREATE_DEVICE_AWS_CERTIFICATE, REGISTER_WITHOUT_CA, ACMPCA)
PCA_REGISTER_WITH_CA, PCA_REGISTER_WITHOUT_CA = "REGISTER_WITH_CA", "REGISTER_WITHOUT_CA"
COUNTRY = re.compile(r"^[A-Za-z]{2}$")
# X.520 upper bounds, in characters (cryptography refuses some of them itself, less precisely).
SUBJECT_LIMITS = {
    "commonName": 64,
    "organization": 64,
    "organizationalUnit": 64,
    "locality": 128,
    "stateName": 128,
    "emailAddress": 255,
}


class _Lenient(BaseModel):
    """CDF ignores fields it does not know; so do we, but wrong types are refused."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class CertInfo(_Lenient):
    """The subject and lifetime of a certificate this service has made or signed."""

    commonName: StrictStr | None = None
    organization: StrictStr | None = None
    organizationalUnit: StrictStr | None = None
    locality: StrictStr | None = None
    stateName: StrictStr | None = None
    country: StrictStr | None = None
    emailAddress: StrictStr | None = None
    # The spec says `number`; a fractional day count is refused rather than rounded.
    daysExpiry: StrictInt | None = Field(default=None, ge=1, le=MAX_VALIDITY_DAYS)

    @model_validator(mode="after")
    def _limits(self) -> CertInfo:
        if self.country is not None and not COUNTRY.match(self.country):
            raise ValueError(f"country {self.country!r} must be a two-letter ISO 3166 code")
        for name, limit in SUBJECT_LIMITS.items():
            value = getattr(self, name)
            if value is not None and not 1 <= len(value) <= limit:
                raise ValueError(f"{name} must have 1 to {limit} characters, not {len(value)}")
        return self

    @property
    def subject_fields(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump(exclude={"daysExpiry"}).items() if v is not None}


class ProvisioningParameters(_Lenient):
    """`cdfProvisioningParameters`: every mode's inputs; which are needed depends on the template's mode.

    The published OpenAPI spells the PCA fields `amcpcaCaArn`/`amcpcaCaAlias` (a typo CDF's code does not
    read); both spellings are accepted here.
    """

    caId: StrictStr | None = None
    certInfo: CertInfo | None = None
    certificatePem: StrictStr | None = None
    certificateStatus: Literal["ACTIVE", "INACTIVE"] | None = None
    acmpcaCaArn: StrictStr | None = None
    acmpcaCaAlias: StrictStr | None = None
    amcpcaCaArn: StrictStr | None = None
    amcpcaCaAlias: StrictStr | None = None
    awsiotCaArn: StrictStr | None = None
    awsiotCaAlias: StrictStr | None = None
    csr: StrictStr | None = None

    @property
    def pca_arn(self) -> str | None:
        return self.acmpcaCaArn or self.amcpcaCaArn

    @property
    def pca_alias(self) -> str | None:
        return self.acmpcaCaAlias or self.amcpcaCaAlias

    def given(self) -> set[str]:
        """The fields the caller set (both PCA spellings reported as the acmpca one)."""
        names = {name for name in self.model_fields_set if getattr(self, name) is not None}
        return {name.replace("amcpca", "acmpca") for name in names}


# Which cdfProvisioningParameters each mode reads (anything else given is refused, naming it).
MODE_INPUTS: dict[str | None, set[str]] = {
    None: set(),
    CREATE_DEVICE_CERTIFICATE: {"caId", "certInfo"},
    CREATE_DEVICE_AWS_CERTIFICATE: set(),
    REGISTER_WITHOUT_CA: {"certificatePem", "certificateStatus"},
    ACMPCA: {"acmpcaCaArn", "acmpcaCaAlias", "awsiotCaArn", "awsiotCaAlias", "csr", "certInfo"},
}


class AcmPcaBlock(_Lenient):
    mode: Literal["REGISTER_WITH_CA", "REGISTER_WITHOUT_CA"]


class AdditionalPolicy(_Lenient):
    name: StrictStr = Field(min_length=1, max_length=100, pattern=r"^[\w+=,.@-]+$")
    document: StrictStr | dict[str, Any] | None = None


class CdfBlock(_Lenient):
    """The template's `CDF` object: one certificate mode at most, extra policies, our key algorithm."""

    createDeviceCertificate: StrictBool = False
    createDeviceAWSCertificate: StrictBool = False
    registerDeviceCertificateWithoutCA: StrictBool = False
    acmpca: AcmPcaBlock | None = None
    # CDF's docs show {"policies": [...]}, its code reads a plain list: both are accepted.
    attachAdditionalPolicies: list[AdditionalPolicy] = Field(default_factory=list)
    clientIdMustMatchThingName: StrictBool = False
    # Not CDF's: the key this service makes (CDF always made RSA-2048; P-256 is ~2,000x cheaper).
    keyAlgorithm: Literal[KEY_ALGORITHMS] = "ec-p256"  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _policies_object(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("attachAdditionalPolicies"), dict):
            value = {**value, "attachAdditionalPolicies": value["attachAdditionalPolicies"].get("policies")}
        return value

    @property
    def modes(self) -> list[str]:
        flags = {
            CREATE_DEVICE_CERTIFICATE: self.createDeviceCertificate,
            CREATE_DEVICE_AWS_CERTIFICATE: self.createDeviceAWSCertificate,
            REGISTER_WITHOUT_CA: self.registerDeviceCertificateWithoutCA,
            ACMPCA: self.acmpca is not None,
        }
        return [mode for mode in CERTIFICATE_MODES if flags[mode]]

    @property
    def mode(self) -> str | None:
        return self.modes[0] if self.modes else None


def parse_block(value: Any, template_id: str) -> CdfBlock:
    """The template's CDF block, refusing two certificate modes (CDF would silently use the first)."""
    block = parse(CdfBlock, value if value is not None else {}, f"template {template_id}: CDF")
    if len(block.modes) > 1:
        raise BadRequest(
            f"template {template_id}: CDF block sets {' and '.join(block.modes)}; a template has exactly one "
            "certificate mode"
        )
    return block


def parse_parameters(
    value: Any, mode: str | None, *, what: str = "cdfProvisioningParameters"
) -> ProvisioningParameters:
    """`cdfProvisioningParameters` checked against the template's mode: unused inputs are refused by name."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what}: must be an object")
    parameters = parse(ProvisioningParameters, value, what)
    unused = sorted(parameters.given() - MODE_INPUTS[mode])
    if unused:
        takes = sorted(MODE_INPUTS[mode])
        raise BadRequest(
            f"{what}.{unused[0]}: the template's certificate mode ({mode or 'none'}) does not use it"
            + (f"; it takes {', '.join(takes)}" if takes else "; it takes none")
        )
    return parameters
