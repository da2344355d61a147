"""moto's S3 and SQS mirrored under --state-dir as plain files and JSON, rebuilt through moto's own API."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iot_emulator.persistence import S3_DIR, SQS_FILE, atomic_write

log = logging.getLogger(__name__)

# The queue attributes CreateQueue accepts back (the others moto computes).
_SETTABLE_QUEUE_ATTRIBUTES = {
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "Policy",
}
# moto's notification lists, and the key of each entry's ARN, as PutBucketNotificationConfiguration reads them
_NOTIFICATION_KINDS = (
    ("topic", "TopicConfiguration", "Topic"),
    ("queue", "QueueConfiguration", "Queue"),
    ("cloud_function", "CloudFunctionConfiguration", "CloudFunction"),
)


def _object_file(bucket: str, key: str) -> str:
    return hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()


def notification_document(config: Any) -> dict[str, Any]:
    """A bucket's notification configuration as the JSON moto builds it from."""
    document: dict[str, Any] = {
        name: [{arn_key: n.arn, "Event": list(n.events), "Filter": n.filters, "Id": n.id} for n in items]
        for attribute, name, arn_key in _NOTIFICATION_KINDS
        if (items := getattr(config, attribute))
    }
    if config.event_bridge is not None:
        document["EventBridgeConfiguration"] = config.event_bridge
    return document


def notification_configuration(document: dict[str, Any]) -> Any:
    """The moto object back; built directly, so restoring sends no s3:TestEvent."""
    from moto.s3.models import NotificationConfiguration

    return NotificationConfiguration(
        topic=document.get("TopicConfiguration"),
        queue=document.get("QueueConfiguration"),
        cloud_function=document.get("CloudFunctionConfiguration"),
        event_bridge=document.get("EventBridgeConfiguration"),
    )


class S3Snapshot:
    """Mirrors moto's S3 buckets and objects to files; writes only the objects that changed.

    ``backend`` returns moto's S3 backend of the account when called (moto replaces it on reset).
    """

    def __init__(self, state_dir: Path, backend: Callable[[], Any]) -> None:
        self.root = state_dir / S3_DIR
        self._backend = backend
        self._saved_etags: dict[str, str] = {}  # file name -> etag last written

    def save(self) -> None:
        objects_dir = self.root / "objects"
        objects_dir.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {}
        wanted: set[str] = set()
        for name, bucket in list(self._backend().buckets.items()):
            entry: dict[str, Any] = {"region": bucket.region_name, "objects": {}}
            if bucket.notification_configuration is not None:
                entry["notificationConfiguration"] = notification_document(bucket.notification_configuration)
            for key_name, key in list(bucket.keys.items()):
                file_name = _object_file(name, key_name)
                wanted.add(file_name)
                if self._saved_etags.get(file_name) != key.etag:
                    atomic_write(objects_dir / file_name, bytes(key.value))
                    self._saved_etags[file_name] = key.etag
                entry["objects"][key_name] = {"file": file_name, "metadata": dict(key.metadata)}
            index[name] = entry
        atomic_write(self.root / "index.json", json.dumps(index).encode())
        for stale in set(self._saved_etags) - wanted:
            (objects_dir / stale).unlink(missing_ok=True)
            del self._saved_etags[stale]

    def load(self) -> None:
        index_path = self.root / "index.json"
        if not index_path.exists():
            return
        backend = self._backend()
        index = json.loads(index_path.read_bytes())
        pickled = sorted(name for name, entry in index.items() if "notification" in entry)
        if pickled:
            log.warning(
                "ignoring the notification configuration of bucket(s) %s: an older emulator pickled it, and "
                "a pickle is never loaded since unpickling runs code from the file; put it again",
                ", ".join(pickled),
            )
        for name, entry in index.items():
            if name not in backend.buckets:
                backend.create_bucket(name, entry["region"])
            bucket = backend.buckets[name]
            if "notificationConfiguration" in entry:
                try:
                    bucket.notification_configuration = notification_configuration(
                        entry["notificationConfiguration"]
                    )
                except Exception as exc:  # moto refuses what it no longer understands: keep the objects
                    log.warning("bucket %s: notification configuration not restored (%s)", name, exc)
            for key_name, obj in entry["objects"].items():
                path = self.root / "objects" / obj["file"]
                if not path.exists():
                    continue
                key = backend.put_object(name, key_name, path.read_bytes(), disable_notification=True)
                if obj.get("metadata"):
                    key.set_metadata(obj["metadata"])
                self._saved_etags[obj["file"]] = key.etag


def save_sqs(state_dir: Path, backends: Callable[[], Any]) -> None:
    """Queues (settable attributes) and message bodies of every region ``backends()`` holds."""
    queues = []
    for region, backend in list(backends().items()):
        for name, queue in list(backend.queues.items()):
            attributes = {
                k: json.dumps(v) if isinstance(v, dict) else str(v)
                for k, v in queue.attributes.items()
                if k in _SETTABLE_QUEUE_ATTRIBUTES and v not in (None, "", {})
            }
            messages = [m.body for m in list(queue._messages)]
            queues.append({"region": region, "name": name, "attributes": attributes, "messages": messages})
    atomic_write(state_dir / SQS_FILE, json.dumps(queues).encode())


def load_sqs(state_dir: Path, backends: Callable[[], Any]) -> None:
    path = state_dir / SQS_FILE
    if not path.exists():
        return
    by_region = backends()
    for queue in json.loads(path.read_bytes()):
        backend = by_region[queue["region"]]
        if queue["name"] not in backend.queues:
            backend.create_queue(queue["name"], **queue["attributes"])
        for body in queue["messages"]:
            backend.send_message(queue["name"], body)
