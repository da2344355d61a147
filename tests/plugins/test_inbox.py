"""Inbox intake helpers: S3 notifications from SQS, inbox listing, content hashing, one run per content."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from plugins.iot_provisioning.inbox import (
    content_sha256,
    is_manifest_key,
    list_inbox,
    manifest_uris_from_s3_events,
    messages_from_asset_events,
    run_requests,
    split_s3_uri,
)


def _notification(key: str, event: str = "ObjectCreated:Put", bucket: str = "factory-provisioning") -> dict:
    record = {"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10}}}
    return {"MessageId": "m", "ReceiptHandle": "r", "Body": json.dumps({"Records": [record]})}


def test_uris_from_notifications_skip_test_events_other_prefixes_and_deletes():
    messages = [
        {"Body": json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})},
        _notification("inbox/line+3/batch%2042.csv"),
        _notification("inbox/batch-43.csv", event="ObjectRemoved:Delete"),
        _notification("batches/abc/manifest.csv"),
        _notification("inbox/readme.txt"),
        _notification("inbox/line+3/batch%2042.csv"),
        {"Body": "not json"},
    ]
    assert manifest_uris_from_s3_events(messages, "inbox/") == [
        "s3://factory-provisioning/inbox/line 3/batch 42.csv"
    ]


def test_messages_come_from_the_trigger_payload_of_each_asset_event():
    events = [
        SimpleNamespace(
            extra={"from_trigger": True, "payload": {"status": "success", "message_batch": [1, 2]}}
        ),
        SimpleNamespace(extra={}),
        SimpleNamespace(extra={"payload": {"message_batch": [3]}}),
    ]
    assert messages_from_asset_events(events) == [1, 2, 3]


def test_manifest_keys_and_uris():
    assert is_manifest_key("inbox/a.CSV", "inbox/")
    assert not is_manifest_key("inbox/", "inbox/")
    assert not is_manifest_key("other/a.csv", "inbox/")
    assert split_s3_uri("s3://b/k/x.csv") == ("b", "k/x.csv")
    with pytest.raises(ValueError, match="not an s3://bucket/key URI"):
        split_s3_uri("/local/x.csv")


def test_run_requests_one_per_new_content_with_hash_in_run_id():
    manifests = [
        {"uri": "s3://b/inbox/a.csv", "sha256": "1" * 64},
        {"uri": "s3://b/inbox/a-copy.csv", "sha256": "1" * 64},
        {"uri": "s3://b/inbox/old.csv", "sha256": "2" * 64},
        {"uri": "s3://b/inbox/new.csv", "sha256": "3" * 64},
    ]
    assert run_requests(manifests, known_batches=["2" * 64]) == [
        {"trigger_run_id": f"inbox__{'1' * 64}", "conf": {"manifest": "s3://b/inbox/a.csv"}},
        {"trigger_run_id": f"inbox__{'3' * 64}", "conf": {"manifest": "s3://b/inbox/new.csv"}},
    ]


def test_list_and_hash_on_the_emulator(fresh_emulator):
    s3 = fresh_emulator.client("s3")
    s3.create_bucket(Bucket="inbox-test")
    body = b"serial_number,model\nSN1,TH-100\n"
    s3.put_object(Bucket="inbox-test", Key="inbox/one.csv", Body=body)
    s3.put_object(Bucket="inbox-test", Key="inbox/notes.txt", Body=b"x")
    s3.put_object(Bucket="inbox-test", Key="elsewhere/two.csv", Body=b"x")
    assert list_inbox(s3, "inbox-test", "inbox/") == ["s3://inbox-test/inbox/one.csv"]
    assert content_sha256(s3, "s3://inbox-test/inbox/one.csv") == hashlib.sha256(body).hexdigest()
