"""S3 as the IoT service sees it: objects in moto's in-process S3 backend, presigned links on our endpoint."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from iot_emulator.errors import invalid_request

# The endpoint URL the current request came in on (set by the server): links must work for that caller.
request_endpoint: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_endpoint", default=None
)


class S3Store:
    """Reads and writes objects straight in moto's S3 backend (no HTTP round trip).

    ``backend`` returns moto's S3 backend of the account when called; the server gives it, so this class
    never reaches moto's global state itself.
    """

    def __init__(self, backend: Callable[[], Any], endpoint_url: str = "http://127.0.0.1:4566") -> None:
        self._backend_of = backend
        self.endpoint_url = endpoint_url
        self._signers: dict[tuple[str, str], Any] = {}
        self._signer_lock = threading.Lock()

    @property
    def _backend(self) -> Any:
        return self._backend_of()

    def get_object(self, bucket: str, key: str) -> bytes:
        """The object's bytes; InvalidRequestException naming the bucket and key when it is missing."""
        from moto.s3.exceptions import MissingBucket

        try:
            obj = self._backend.get_object(bucket, key)
        except MissingBucket:
            raise invalid_request(f"The specified bucket does not exist: s3://{bucket}") from None
        if obj is None:
            raise invalid_request(f"The specified key does not exist: s3://{bucket}/{key}")
        return bytes(obj.value)

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        """Store ``data`` at ``bucket/key``; InvalidRequestException if the bucket does not exist."""
        from moto.s3.exceptions import MissingBucket

        try:
            self._backend.put_object(bucket, key, data)
        except MissingBucket:
            raise invalid_request(f"The specified bucket does not exist: s3://{bucket}") from None

    def create_bucket(self, bucket: str, region: str) -> None:
        """Create ``bucket`` (the internal bucket of bulk reports, say) unless it exists."""
        if bucket not in self._backend.buckets:
            self._backend.create_bucket(bucket, region)

    def presigned_get_url(self, bucket: str, key: str, expires: int = 3600, region: str = "us-east-1") -> str:
        """A SigV4 presigned GET link on the emulator's endpoint; a plain HTTP GET downloads the object."""
        endpoint = request_endpoint.get() or self.endpoint_url
        return self._signer(endpoint, region).generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )

    def _signer(self, endpoint: str, region: str) -> Any:
        # Building a boto3 client costs tens of milliseconds: keep one per endpoint and region.
        with self._signer_lock:
            client = self._signers.get((endpoint, region))
            if client is None:
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=region,
                    aws_access_key_id="emulator",
                    aws_secret_access_key="emulator",  # noqa: S106 - the emulator checks no signature
                    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
                )
                if len(self._signers) < 32:  # the Host header is the caller's: bound the cache
                    self._signers[endpoint, region] = client
            return client
