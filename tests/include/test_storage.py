"""S3 access of the pipeline against the emulator's S3 over HTTP: ordered, bounded prefetching reads."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from include.errors import SourceError
from include.storage import get_bytes, get_in_order, upload_stream

BUCKET = "storage-test"


@pytest.fixture
def bucket(s3_client: Any) -> str:
    s3_client.create_bucket(Bucket=BUCKET)
    return BUCKET


def test_objects_come_back_in_key_order_whatever_order_they_arrive_in(s3_client, bucket):
    keys = [f"parts/{i}" for i in range(12)]
    for i, key in enumerate(keys):  # sizes differ so that GETs finish out of order
        s3_client.put_object(Bucket=bucket, Key=key, Body=bytes([i]) * (1 + (11 - i) * 50_000))

    got = list(get_in_order(s3_client, bucket, keys, ahead=4))

    assert [part[0] for part in got] == list(range(12))
    assert [len(part) for part in got] == [1 + (11 - i) * 50_000 for i in range(12)]


def test_no_more_than_ahead_gets_are_in_flight(s3_client, bucket):
    keys = [f"bounded/{i}" for i in range(10)]
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    lock, in_flight, peak = threading.Lock(), [0], [0]

    class Counting:
        def get_object(self, **kwargs: Any) -> Any:
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            try:
                return s3_client.get_object(**kwargs)
            finally:
                with lock:
                    in_flight[0] -= 1

    reader = get_in_order(Counting(), bucket, keys, ahead=3)
    first = next(reader)  # the consumer is slow: the reader must not run ahead of its window
    assert first == b"x" and peak[0] <= 3
    assert list(reader) == [b"x"] * 9 and peak[0] <= 3


def test_a_missing_part_fails_with_its_key_and_the_parameter_file_is_not_written(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="p/0", Body=b"a\n")
    parts = get_in_order(s3_client, bucket, ["p/0", "p/1", "p/2"])

    with pytest.raises(SourceError, match=r"s3://storage-test/p/1: NoSuchKey"):
        upload_stream(s3_client, bucket, "p/joined", parts)
    with pytest.raises(SourceError):
        get_bytes(s3_client, bucket, "p/joined")


def test_a_large_stream_goes_up_in_parts_as_it_comes_and_a_failure_leaves_no_object(s3_client, bucket):
    parts = [bytes([i]) * 3_000_001 for i in range(7)]  # 21 MB: a multipart upload of several parts
    assert upload_stream(s3_client, bucket, "p/large", iter(parts)) == sum(map(len, parts))
    assert get_bytes(s3_client, bucket, "p/large") == b"".join(parts)

    def broken():
        yield from parts[:5]
        raise SourceError("s3://storage-test/p/5: NoSuchKey")

    with pytest.raises(SourceError, match="p/5"):
        upload_stream(s3_client, bucket, "p/broken", broken())
    with pytest.raises(SourceError):
        get_bytes(s3_client, bucket, "p/broken")
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # aborted, nothing left
