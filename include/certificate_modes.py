"""What a chunk needs after its keys are made, in the modes where someone else signs or registers first.

- acm_pca: ACM Private CA signs each CSR (IssueCertificate, then GetCertificate once it is issued); the
  parameter line then carries the certificate, registered in bulk under the PCA's CA (registered in IoT).
- without_ca: AWS documents no bulk path for certificates whose CA is not registered, so each one is
  registered on its own (RegisterCertificateWithoutCA) and the parameter line carries its id.
- acm_pca_without_ca: both, in that order (ACM PCA signs; its CA is not registered in IoT).
Both run with bounded concurrency on the calling process's threads (the work is waiting on AWS), and rely on
botocore's standard retry mode for throttling. aws_issued needs nothing here: AWS signs during the bulk task.
A device AWS refuses becomes a failure record (its row is quarantined); the rest of the chunk goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import orjson
import pyarrow as pa
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from include.aws_errors import error_code
from include.credentials import CREDENTIAL_ERROR, LEDGER_SCHEMA, ChunkOutput, ProductSpec

# AWS's default quotas are low for both (a few to tens of requests per second); a handful in flight keeps
# under them while hiding the latency of each call.
CONCURRENCY = 8
PCA_MODES = frozenset({"acm_pca", "acm_pca_without_ca"})
UNREGISTERED_CA_MODES = frozenset({"without_ca", "acm_pca_without_ca"})


def complete_chunk(
    output: ChunkOutput,
    spec: ProductSpec,
    *,
    iot: Any = None,
    acm_pca: Any = None,
    pca_arn: str | None = None,
    concurrency: int = CONCURRENCY,
) -> ChunkOutput:
    """The chunk's lines and ledger once its certificates are signed (acm_pca) or registered (without_ca)."""
    if spec.mode in PCA_MODES:
        if acm_pca is None or not pca_arn:
            raise ValueError(
                f"{spec.mode} products need an ACM PCA client and its ARN (PIPELINE_ACM_PCA_ARN)"
            )
        step = _pca_signer(acm_pca, pca_arn, spec)
        output = _rewrite(output, spec, "CSR", "CertificatePem", step, "ACM PCA", concurrency)
    if spec.mode in UNREGISTERED_CA_MODES:
        if iot is None:
            raise ValueError(f"{spec.mode} products need an IoT client")
        return _rewrite(
            output, spec, "CertificatePem", "CertificateId", _registrar(iot), "AWS IoT", concurrency
        )
    return output


def _pca_signer(acm_pca: Any, pca_arn: str, spec: ProductSpec) -> Callable[[str], tuple[str, str]]:
    waiter = acm_pca.get_waiter("certificate_issued")
    # The CA signs with its own key's algorithm, whatever the device's key is.
    described = acm_pca.describe_certificate_authority(CertificateAuthorityArn=pca_arn)[
        "CertificateAuthority"
    ]
    algorithm = described["CertificateAuthorityConfiguration"]["SigningAlgorithm"]

    def sign(csr_pem: str) -> tuple[str, str]:
        issued = acm_pca.issue_certificate(
            CertificateAuthorityArn=pca_arn,
            Csr=csr_pem.encode("ascii"),
            SigningAlgorithm=algorithm,
            Validity={"Value": spec.validity_days, "Type": "DAYS"},
            # A transport retry of the same CSR gets the same certificate, not a second one.
            IdempotencyToken=hashlib.sha256(csr_pem.encode()).hexdigest()[:36],
        )
        arn = issued["CertificateArn"]
        # IssueCertificate is asynchronous: GetCertificate answers RequestInProgress until it is issued.
        waiter.wait(
            CertificateAuthorityArn=pca_arn, CertificateArn=arn, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        pem = acm_pca.get_certificate(CertificateAuthorityArn=pca_arn, CertificateArn=arn)["Certificate"]
        return pem, _certificate_id(pem)

    return sign


def _registrar(iot: Any) -> Callable[[str], tuple[str, str]]:
    def register(certificate_pem: str) -> tuple[str, str]:
        try:
            found = iot.register_certificate_without_ca(certificatePem=certificate_pem, status="ACTIVE")
        except Exception as exc:
            if error_code(exc) != "ResourceAlreadyExistsException":
                raise
            # A retried chunk registers the same certificate again: it is the one already there.
            certificate_id = _certificate_id(certificate_pem)
            return certificate_id, certificate_id
        return found["certificateId"], found["certificateId"]

    return register


def _certificate_id(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode("ascii")).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _rewrite(
    output: ChunkOutput,
    spec: ProductSpec,
    old_key: str,
    new_key: str,
    step: Callable[[str], tuple[str, str]],
    service: str,
    concurrency: int,
) -> ChunkOutput:
    """Each line's `old_key` value through `step` -> (new value, certificate id); failures set aside."""
    lines = output.params.get(spec.group, b"").splitlines()
    rows = output.ledger.column("row").to_pylist()
    records = [orjson.loads(line) for line in lines]

    def attempt(record: dict[str, Any]) -> tuple[str, str] | BaseException:
        try:
            return step(record[old_key])
        except Exception as exc:  # one device's refusal is that device's failure
            return exc

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        outcomes = list(pool.map(attempt, records))
    kept_lines: list[bytes] = []
    kept_rows: list[int] = []
    ids: list[str] = []
    failures = list(output.failures)
    for row, record, outcome in zip(rows, records, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            code = error_code(outcome) or type(outcome).__name__
            failures.append(
                (
                    row,
                    CREDENTIAL_ERROR,
                    f"row {row} ({record['ThingName']}): {service} refused the certificate: {code}",
                )
            )
            continue
        value, certificate_id = outcome
        renamed = {
            (new_key if key == old_key else key): (value if key == old_key else v)
            for key, v in record.items()
        }
        kept_lines.append(orjson.dumps(renamed) + b"\n")
        kept_rows.append(row)
        ids.append(certificate_id)
    ledger = pa.table(
        [kept_rows, [spec.group] * len(kept_rows), [len(line) for line in kept_lines], ids],
        schema=LEDGER_SCHEMA,
    )
    params = {**output.params, spec.group: b"".join(kept_lines)}
    return replace(output, params=params, ledger=ledger, failures=failures)
