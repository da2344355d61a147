"""S3 and local-file access for the pipeline: read a manifest source, put and stream objects."""

from __future__ import annotations

import io
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from include.aws_errors import error_code, is_not_found
from include.errors import SourceError

NDJSON = "application/x-ndjson"  # content type of JSON-lines objects (parameter lines, issued records)
S3_URI = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.+)$")


def split_s3_uri(uri: str) -> tuple[str, str]:
    match = S3_URI.match(uri)
    if not match:
        raise SourceError(f"{uri!r} is not an s3://bucket/key URI")
    return match["bucket"], match["key"]


def _error_code(exc: Exception) -> str:
    return error_code(exc) or type(exc).__name__


def read_source(s3: Any, source: str, what: str = "manifest") -> bytes:
    """The bytes of a file given as s3://bucket/key or a local path; `what` names it in errors."""
    if source.startswith("s3://"):
        bucket, key = split_s3_uri(source)
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore ClientError and connection errors alike
            raise SourceError(f"cannot read {what} {source}: {_error_code(exc)}") from None
    path = Path(source).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {what} file {path}: {exc.strerror}") from None


def get_bytes(s3: Any, bucket: str, key: str) -> bytes:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise SourceError(f"cannot read s3://{bucket}/{key}: {_error_code(exc)}") from None


def _in_order(
    work: Callable[..., Any], items: Iterable[tuple[Any, ...]], ahead: int, name: str
) -> Iterator[Any]:
    """work(*item) for each item on `ahead` threads, results in item order, at most `ahead` in flight
    (items are pulled only as results are taken, so memory stays bounded by a few)."""
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix=name) as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(pool.submit(work, *item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def get_in_order(s3: Any, bucket: str, keys: Iterable[str], *, ahead: int = 4) -> Iterator[bytes]:
    """The objects' bytes in the order of `keys`, up to `ahead` GETs in flight at once.

    One GET at a time waits a round trip per object; S3 answers several at once. The client is thread-safe.
    """
    return _in_order(get_bytes, ((s3, bucket, key) for key in keys), ahead, "s3-get")


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise
    return True


def put_bytes(
    s3: Any, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return key


class _Concatenation(io.RawIOBase):
    """Byte parts read as one non-seekable stream, consumed as the upload asks (nothing spooled)."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self._parts = iter(parts)
        self._current = memoryview(b"")
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current:
            part = next(self._parts, None)
            if part is None:
                return 0
            self._current = memoryview(part)
            self.size += len(part)
        count = min(len(buffer), len(self._current))
        buffer[:count] = self._current[:count]
        self._current = self._current[count:]
        return count


def upload_stream(s3: Any, bucket: str, key: str, parts: Iterable[bytes]) -> int:
    """Upload the concatenation of parts as they come (multipart when large); returns its size.

    A part that fails to arrive fails the upload, and no object is written (the multipart upload is aborted).
    """
    stream = _Concatenation(parts)
    # Not seekable: s3transfer reads one part's worth at a time, a few parts in flight.
    s3.upload_fileobj(io.BufferedReader(stream, buffer_size=1024 * 1024), bucket, key)
    return stream.size


def put_table(s3: Any, bucket: str, key: str, table: pa.Table) -> str:
    """A table as Parquet (zstd): the columnar form rows travel in between stages."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return put_bytes(s3, bucket, key, sink.getvalue().to_pybytes(), "application/vnd.apache.parquet")


def put_tables(s3: Any, bucket: str, tables: Iterable[tuple[str, pa.Table]], *, ahead: int = 4) -> None:
    """Each (key, table) as put_table does, up to `ahead` encoding and uploading at once; `tables` is
    pulled only as uploads finish, so a generator that makes each table holds a few at a time."""
    for _ in _in_order(put_table, ((s3, bucket, key, table) for key, table in tables), ahead, "s3-put"):
        pass


def get_table(s3: Any, bucket: str, key: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(get_bytes(s3, bucket, key)), columns=columns)


def read_text_setting(s3: Any, value: str, what: str) -> str:
    """A setting that is PEM text itself, an s3:// URI or a local path."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    return read_source(s3, value, what).decode("ascii")
