"""Device credentials for a chunk: our keys (or device CSRs) signed by the factory CA, on long-lived workers.

`issue_chunk` is what the pipeline calls. It cuts the chunk's device table into slices that travel to this
process's worker pool (made once, reused by every later chunk) as Arrow IPC bytes; a worker does all the
per-device work of `issue_devices` (CSR checks, key, certificate from the DER template, PEMs, parameter line,
ledger entry, bundle line) and sends back a few bytes objects per slice, so the calling process only joins
them. A device whose credentials cannot be made becomes a failure record (row, reason code, sentence); the
other devices of the chunk are issued as usual. A CA that cannot be loaded fails the whole chunk.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from include import key_bundle
from include.catalog import Product
from include.certificate_authority import (
    DEVICE_VALIDITY_DAYS,
    CertificateAuthority,
    device_csr_der,
    load_device_csr_key,
)
from include.certificate_template import DeviceCertificateTemplate, DeviceIssuer, p256_spki, pem
from include.errors import CsrError, PipelineError
from include.parameter_file import encode_line, parameter_names
from include.worker_pool import shutdown_workers, worker_pool

log = logging.getLogger(__name__)
# Below this many devices per worker, shipping slices to the pool costs more than it saves.
MIN_DEVICES_PER_WORKER = 250
SLICES_PER_WORKER = 4
PEM = serialization.Encoding.PEM
PKCS8, NO_ENCRYPTION = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
P256 = ec.SECP256R1()
CREDENTIAL_ERROR = "credential_error"
LEDGER_SCHEMA = pa.schema(
    [("row", pa.int64()), ("group", pa.string()), ("bytes", pa.int64()), ("certificate_id", pa.string())]
)
Failure = tuple[int, str, str]  # (manifest row, reason code, sentence)
CSR_MODES = frozenset({"aws_issued", "acm_pca", "acm_pca_without_ca"})


@dataclass(frozen=True)
class ProductSpec:
    """The part of a catalog product a worker needs (small and cheap to pickle)."""

    group: str
    key_algorithm: str
    attributes: tuple[tuple[str, str], ...]  # (manifest column, template parameter)
    validity_days: int = DEVICE_VALIDITY_DAYS
    mode: str = "own_ca_key"  # include.catalog.CERTIFICATE_MODES

    def __post_init__(self) -> None:
        if self.validity_days < 1:
            raise ValueError(f"product {self.group}: validity_days must be at least 1")

    @property
    def device_csr(self) -> bool:
        return self.mode == "device_csr"

    @property
    def csr_only(self) -> bool:
        """Someone else signs (AWS in bulk, ACM PCA): the worker makes the key and a CSR, no certificate."""
        return self.mode in CSR_MODES

    @classmethod
    def of(cls, product: Product) -> ProductSpec:
        return cls(
            group=product.group,
            key_algorithm=product.key_algorithm,
            attributes=tuple((a.column, a.parameter) for a in product.attributes),
            validity_days=product.validity_days,
            mode=product.certificate_mode,
        )


@dataclass
class ChunkOutput:
    """A chunk's (or a slice's) results, ready to upload: nothing to re-encode.

    params: group -> its parameter-file lines in input order; ledger: one row per issued device in input
    order (row, group, bytes = length of its parameter line, certificate_id); bundle: the key bundle's
    entries (include.key_bundle.Entries; private keys: only ever for key_bundle.BundleWriter or
    seal_payload); failures: (row, reason code, sentence) per device that got no credentials.
    """

    params: dict[str, bytes]
    ledger: pa.Table
    bundle: key_bundle.Entries
    failures: list[Failure]

    @property
    def sealed(self) -> int:
        """Devices in the key bundle."""
        return self.bundle.count

    @property
    def counts(self) -> dict[str, int]:
        """Parameter-file lines per group."""
        return dict(sorted(Counter(self.ledger.column("group").to_pylist()).items()))

    def __repr__(self) -> str:  # never show the bundle plaintext
        return f"ChunkOutput(counts={self.counts!r}, sealed={self.sealed}, failures={len(self.failures)})"


_authorities: dict[str, tuple[CertificateAuthority, DeviceCertificateTemplate | None]] = {}


def _authority(
    certificate_pem: str, private_key_pem: str
) -> tuple[CertificateAuthority, DeviceCertificateTemplate | None]:
    """The CA and its device-certificate template, loaded once per process."""
    fingerprint = hashlib.sha256((certificate_pem + private_key_pem).encode()).hexdigest()
    cached = _authorities.get(fingerprint)
    if cached is None:
        ca = CertificateAuthority.from_pem(certificate_pem, private_key_pem)
        template = DeviceCertificateTemplate.for_authority(ca)
        if template is None:
            log.warning("%r: its certificates do not fit the DER template; using CertificateBuilder", ca)
        _authorities.clear()
        cached = _authorities[fingerprint] = (ca, template)
    return cached


def _new_key(algorithm: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(P256)


def _credentials(
    issuer: DeviceIssuer, spec: ProductSpec, thing_name: str, serial_number: str | None, csr: str | None
) -> tuple[bytes, bytes | None]:
    """The device certificate (DER; the CSR's in a CSR mode) and, when we made the key, its PKCS#8 PEM."""
    if spec.csr_only:
        key = _new_key(spec.key_algorithm)
        return device_csr_der(key, thing_name, serial_number), key.private_bytes(PEM, PKCS8, NO_ENCRYPTION)
    if spec.device_csr:
        if not csr:
            raise CsrError("csr_required", "the product needs a device CSR and the csr field is empty")
        # The one parse, signature check and key check of this CSR (validation checks its shape only).
        _, public_key = load_device_csr_key(csr)
        return issuer.issue(public_key, thing_name, serial_number, spec.validity_days), None
    key = _new_key(spec.key_algorithm)
    key_pem = key.private_bytes(PEM, PKCS8, NO_ENCRYPTION)
    spki = p256_spki(key_pem) if spec.key_algorithm == "ec-p256" else None
    return issuer.issue(key, thing_name, serial_number, spec.validity_days, spki), key_pem


def _failure(row: int, thing_name: str | None, error: Exception) -> Failure:
    """The failure record of a device; the sentence names the row, never key material."""
    where = f"row {row} ({thing_name})"
    if isinstance(error, CsrError):
        return row, error.code, f"{where}: {error}"
    if isinstance(error, PipelineError):  # raised on purpose, with a sentence that holds no secret
        return row, CREDENTIAL_ERROR, f"{where}: {error}"
    # Anything else: its text is not ours to vouch for, so only its type goes into the sentence.
    return row, CREDENTIAL_ERROR, f"{where}: issuing its credentials failed ({type(error).__name__})"


@dataclass(frozen=True)
class _Lines:
    """A product's parameter-line keys, and every device's attribute values in the table being issued."""

    spec: ProductSpec
    names: tuple[str, ...]
    values: list[tuple[str, ...]]

    @classmethod
    def of(cls, spec: ProductSpec, devices: pa.Table) -> _Lines:
        columns = [_texts(devices, column) for column, _ in spec.attributes]
        values = list(zip(*columns, strict=True)) if columns else [()] * devices.num_rows
        certificate = "CSR" if spec.csr_only else "CertificatePem"
        return cls(spec, parameter_names(spec.attributes, certificate), values)


def _texts(devices: pa.Table, column: str) -> list[Any]:
    """A column's values as strings, "" where null; all "" when the table lacks the column."""
    if column not in devices.column_names:
        return [""] * devices.num_rows
    return devices.column(column).cast(pa.string()).fill_null("").to_pylist()


def _column(devices: pa.Table, column: str) -> list[Any]:
    return devices.column(column).to_pylist() if column in devices.column_names else [None] * devices.num_rows


def issue_devices(
    devices: pa.Table, products: Mapping[str, ProductSpec], ca_certificate_pem: str, ca_private_key_pem: str
) -> ChunkOutput:
    """Credentials for every device of the table, in this process (what each worker runs on its slice)."""
    ca, template = _authority(ca_certificate_pem, ca_private_key_pem)
    issuer = DeviceIssuer(ca, template)
    models = _column(devices, "model")
    lines = {m: _Lines.of(products[m], devices) for m in set(models) if m in products}
    params: dict[str, list[bytes]] = defaultdict(list)
    rows: list[int] = []
    groups: list[str] = []
    sizes: list[int] = []
    ids: list[str] = []
    bundle: list[tuple[bytes, bytes]] = []
    failures: list[Failure] = []
    numbers, serials, things, csrs = (
        _column(devices, c) for c in ("row", "serial_number", "thing_name", "csr")
    )
    for index, (row, model, serial, thing, csr) in enumerate(
        zip(numbers, models, serials, things, csrs, strict=True)
    ):
        product = lines.get(model)
        try:
            if product is None:
                raise PipelineError(f"model {model} has no product in the catalog")
            der, key_pem = _credentials(issuer, product.spec, thing, serial, csr)
            if product.spec.csr_only:  # the certificate comes later, from its signer
                certificate_pem, certificate_id = pem(der, "CERTIFICATE REQUEST"), ""
            else:
                certificate_pem = pem(der, "CERTIFICATE")
                certificate_id = hashlib.sha256(der).hexdigest()  # AWS IoT's id, of the DER just built
            line = encode_line(product.names, (thing, certificate_pem, *product.values[index]))
            if key_pem is not None:
                issued_pem = None if product.spec.csr_only else certificate_pem
                bundle.append(_bundle_line(thing, serial, model, row, certificate_id, issued_pem, key_pem))
        except Exception as error:  # one device's trouble is that device's failure, not the chunk's
            failures.append(_failure(row, thing, error))
            continue
        group = product.spec.group
        params[group].append(line)
        rows.append(row)
        groups.append(group)
        sizes.append(len(line))
        ids.append(certificate_id)
    return ChunkOutput(
        params={group: b"".join(group_lines) for group, group_lines in sorted(params.items())},
        ledger=pa.table([rows, groups, sizes, ids], schema=LEDGER_SCHEMA),
        bundle=key_bundle.Entries.of(bundle),
        failures=failures,
    )


def _bundle_line(
    thing_name: str,
    serial_number: str,
    model: str,
    row: int,
    certificate_id: str,
    certificate_pem: str | None,
    key_pem: bytes,
) -> tuple[bytes, bytes]:
    """One device's entry of the key bundle (include.key_bundle's archive); never logged or returned alone."""
    return key_bundle.device_entry(
        thing_name, serial_number, model, row, certificate_id, certificate_pem, key_pem
    )


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


SliceBytes = tuple[dict[str, bytes], bytes, bytes, bytes, int, bytes]


def _issue_slice(
    ca_certificate_pem: str, ca_private_key_pem: str, products: Mapping[str, ProductSpec], devices: bytes
) -> SliceBytes:
    """A worker's job: a slice in as Arrow IPC bytes, its output back as bytes (no per-device objects)."""
    output = issue_devices(_from_ipc(devices), products, ca_certificate_pem, ca_private_key_pem)
    bundle = output.bundle
    ledger, failures = _to_ipc(output.ledger), orjson.dumps(output.failures)
    return output.params, ledger, bundle.index, bundle.members, bundle.count, failures


def _from_slice(result: SliceBytes) -> ChunkOutput:
    params, ledger, index, members, count, failures = result
    bundle = key_bundle.Entries(index, members, count)
    return ChunkOutput(params, _from_ipc(ledger), bundle, [tuple(f) for f in orjson.loads(failures)])


def merge(outputs: Sequence[ChunkOutput]) -> ChunkOutput:
    """Slice outputs joined in order: one bytes object per group, one ledger, one bundle."""
    groups = sorted({g for o in outputs for g in o.params})
    return ChunkOutput(
        params={g: b"".join(o.params[g] for o in outputs if g in o.params) for g in groups},
        ledger=pa.concat_tables([o.ledger for o in outputs]) if outputs else LEDGER_SCHEMA.empty_table(),
        bundle=key_bundle.Entries.join([o.bundle for o in outputs]),
        failures=[f for o in outputs for f in o.failures],
    )


def _workers_for(devices: int, workers: int) -> int:
    return max(1, min(workers, devices // MIN_DEVICES_PER_WORKER))


def _run_slices(
    slices: Sequence[pa.Table],
    products: Mapping[str, ProductSpec],
    ca_certificate_pem: str,
    ca_private_key_pem: str,
    workers: int,
) -> Iterator[ChunkOutput]:
    """issue_devices for every slice, in slice order, on the worker pool; inline if the pool breaks."""
    done = 0
    try:
        pool = worker_pool(workers)
        futures = [
            pool.submit(_issue_slice, ca_certificate_pem, ca_private_key_pem, products, _to_ipc(part))
            for part in slices
        ]
        for future in futures:
            yield _from_slice(future.result())
            done += 1
    except BrokenProcessPool:
        # A worker died (e.g. killed for memory): finish the remaining slices inline, start afresh next time.
        log.warning(
            "credentials worker pool broke; issuing the remaining %d slices inline", len(slices) - done
        )
        shutdown_workers()
        for part in slices[done:]:
            yield issue_devices(part, products, ca_certificate_pem, ca_private_key_pem)


def issue_chunk(
    devices: pa.Table,
    products: Mapping[str, ProductSpec],
    ca_certificate_pem: str,
    ca_private_key_pem: str,
    *,
    workers: int = 1,
    bundle: Callable[[key_bundle.Entries], None] | None = None,
) -> ChunkOutput:
    """Credentials, parameter lines, ledger and bundle plaintext for a chunk's devices.

    `devices`: row (int64), model, serial_number, thing_name, csr (null without one), and a string column
    per manifest column a product maps to an attribute. Small chunks (or workers=1) run in this process.
    `bundle`, when given, takes each slice's key-bundle entries, in order, as soon as the slice is done (the
    caller seals them while the workers issue the rest); the output's bundle is then empty.
    """
    _authority(ca_certificate_pem, ca_private_key_pem)  # fail fast, in this process, on a bad CA
    useful = _workers_for(devices.num_rows, workers)
    if useful == 1:
        outputs: Iterable[ChunkOutput] = [
            issue_devices(devices, products, ca_certificate_pem, ca_private_key_pem)
        ]
    else:
        count = useful * SLICES_PER_WORKER
        size = -(-devices.num_rows // count)
        slices = [devices.slice(start, size) for start in range(0, devices.num_rows, size)]
        outputs = _run_slices(slices, dict(products), ca_certificate_pem, ca_private_key_pem, workers)
    if bundle is not None:
        outputs = _bundle_handed_to(bundle, outputs)
    return merge(list(outputs))


def _bundle_handed_to(
    bundle: Callable[[key_bundle.Entries], None], outputs: Iterable[ChunkOutput]
) -> Iterator[ChunkOutput]:
    for output in outputs:
        bundle(output.bundle)
        output.bundle = key_bundle.Entries()
        yield output
