"""Inbox intake shared by the event-driven and the scheduled DAG: find new manifests, start one run each."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

PROVISION_DAG_ID = "provision_factory_batch"
MANIFEST_SUFFIXES = (".csv",)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'key') of an s3:// URI."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def is_manifest_key(key: str, prefix: str) -> bool:
    """A CSV object directly under the inbox prefix (folders and other files are ignored)."""
    return key.startswith(prefix) and key.lower().endswith(MANIFEST_SUFFIXES) and not key.endswith("/")


def manifest_uris_from_s3_events(messages: Iterable[Mapping[str, Any] | str], prefix: str) -> list[str]:
    """s3:// URIs of manifests created under ``prefix``, from SQS messages carrying S3 event notifications.

    Skips the ``s3:TestEvent`` S3 sends when notifications are configured, non-ObjectCreated events and
    keys outside the inbox; keys arrive URL-encoded (spaces as '+'). Order kept, duplicates dropped.
    """
    uris: list[str] = []
    for message in messages:
        body: Any = message.get("Body", message) if isinstance(message, Mapping) else message
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                continue
        if not isinstance(body, Mapping):
            continue
        for record in body.get("Records") or []:
            if not str(record.get("eventName", "")).startswith("ObjectCreated"):
                continue
            s3 = record.get("s3") or {}
            bucket = (s3.get("bucket") or {}).get("name")
            key = unquote_plus((s3.get("object") or {}).get("key") or "")
            if bucket and is_manifest_key(key, prefix):
                uri = f"s3://{bucket}/{key}"
                if uri not in uris:
                    uris.append(uri)
    return uris


def messages_from_asset_events(events: Iterable[Any]) -> list[Any]:
    """SQS messages carried by asset events that SqsSensorTrigger raised (extra.payload.message_batch)."""
    messages: list[Any] = []
    for event in events:
        extra = getattr(event, "extra", None) or {}
        payload = extra.get("payload") or {}
        if isinstance(payload, Mapping):
            messages.extend(payload.get("message_batch") or [])
    return messages


def content_sha256(s3: Any, uri: str) -> str:
    """SHA-256 of an S3 object, streamed (the batch id the pipeline derives from the same bytes)."""
    bucket, key = split_s3_uri(uri)
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(chunk_size=1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def list_inbox(s3: Any, bucket: str, prefix: str) -> list[str]:
    """s3:// URIs of every manifest under the inbox prefix, oldest first."""
    objects: list[tuple[Any, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if is_manifest_key(item["Key"], prefix):
                objects.append((item.get("LastModified"), item["Key"]))
    objects.sort(key=lambda pair: (str(pair[0]), pair[1]))
    return [f"s3://{bucket}/{key}" for _, key in objects]


def run_requests(
    manifests: Iterable[Mapping[str, str]], known_batches: Iterable[str]
) -> list[dict[str, Any]]:
    """TriggerDagRunOperator kwargs, one per manifest whose content was never provisioned.

    The run id carries the content hash, so the same content found twice (two keys, two scans racing)
    still starts one run: the trigger skips a run id that exists.
    """
    seen = set(known_batches)
    requests = []
    for manifest in manifests:
        digest = manifest["sha256"]
        if digest in seen:
            continue
        seen.add(digest)
        requests.append({"trigger_run_id": f"inbox__{digest}", "conf": {"manifest": manifest["uri"]}})
    return requests
