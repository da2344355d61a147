"""S3 and local-file access for the pipeline: read a manifest source, put and stream objects."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from include.errors import SourceError

S3_URI = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.+)$")
# StartThingRegistrationTask.inputFileKey pattern: keep run keys inside it.
SAFE_KEY_CHARS = re.compile(r"[^a-zA-Z0-9!_.*'()-]")


def split_s3_uri(uri: str) -> tuple[str, str]:
    match = S3_URI.match(uri)
    if not match:
        raise SourceError(f"{uri!r} is not an s3://bucket/key URI")
    return match["bucket"], match["key"]


def safe_key_part(text: str) -> str:
    """A run id as an S3 key segment that IoT's inputFileKey pattern accepts (':' and '+' become '_')."""
    return SAFE_KEY_CHARS.sub("_", text)[:200] or "run"


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__))


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


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def iter_lines(s3: Any, bucket: str, key: str) -> Iterator[bytes]:
    """Stream an object's lines (newline stripped) without loading it whole."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:
        raise SourceError(f"cannot read s3://{bucket}/{key}: {_error_code(exc)}") from None
    for line in body.iter_lines():
        if line:
            yield line


def put_bytes(
    s3: Any, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return key


def upload_stream(s3: Any, bucket: str, key: str, parts: Iterable[bytes]) -> int:
    """Upload the concatenation of parts through a spooled temporary file (multipart when large)."""
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024) as spool:
        handle: IO[bytes] = spool  # type: ignore[assignment]
        for part in parts:
            handle.write(part)
            size += len(part)
        handle.seek(0)
        s3.upload_fileobj(handle, bucket, key)
    return size


def read_text_setting(s3: Any, value: str, what: str) -> str:
    """A setting that is PEM text itself, an s3:// URI or a local path."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    return read_source(s3, value, what).decode("ascii")
