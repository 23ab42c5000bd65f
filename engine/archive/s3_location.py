"""A storage location in an S3-compatible object store (boto3), behind the Location interface.

Keys are ``<prefix><key>`` in one bucket. A PUT that returned is durable (the
store's contract), and an object appears whole or not at all. ``replace=False``
is a conditional PUT (``If-None-Match: *``), so two engine processes sharing
the bucket never overwrite each other's object. Credentials come from the
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role: boto3's usual chain), never from the configuration files.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from engine.archive.objects import CHUNK, ObjectStat
from engine.errors import ArchiveUnavailable, CopyMissing

__all__ = ["S3Location", "s3_client"]

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_EXISTS = frozenset({"412", "PreconditionFailed"})


def s3_client(endpoint_url: str | None, region: str | None) -> Any:
    """A boto3 S3 client that fails fast when the store is down (the outbox retries, not boto3)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"},
                    s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _Chain(io.RawIOBase):
    """``head`` then ``body``, as one readable stream (what an upload reads)."""

    def __init__(self, head: bytes, body: BinaryIO) -> None:
        self._head = memoryview(head)
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if len(self._head):
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._body.read(len(view))
        view[:len(data)] = data
        return len(data)


class S3Location:
    """Objects under ``prefix`` in ``bucket``; ``client`` is a boto3 S3 client."""

    def __init__(self, name: str, bucket: str, prefix: str, client: Any) -> None:
        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client

    def describe(self) -> str:
        """``s3://bucket/prefix`` (no credentials)."""
        return f"s3://{self.bucket}/{self.prefix}"

    def _fail(self, what: str, exc: Exception) -> ArchiveUnavailable:
        return ArchiveUnavailable(f"archive location {self.name} ({self.describe()}) {what}: "
                                  f"{_code(exc) or type(exc).__name__}")

    def check(self) -> None:
        """The bucket exists and a probe object can be written and removed."""
        key = f"{self.prefix}.radbridge-probe"
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # botocore raises ClientError, EndpointConnectionError, ...
            raise self._fail("cannot be written", exc) from exc

    def put(self, key: str, body: BinaryIO, *, head: bytes = b"", replace: bool = True) -> bool:
        """Upload ``head`` + ``body``; conditional on absence unless ``replace``."""
        try:
            if replace:
                self.client.upload_fileobj(_Chain(head, body), self.bucket, self.prefix + key)
                return True
            if not head and body.seekable():  # a local file: PUT it as it is, its length is known
                return self._put_if_absent(key, body)
            return self._put_new(key, _Chain(head, body))
        except ArchiveUnavailable:
            raise
        except Exception as exc:
            raise self._fail("cannot take an object", exc) from exc

    def _put_new(self, key: str, stream: io.RawIOBase) -> bool:
        # A conditional PUT needs a known length: spool to a local temporary file first.
        with tempfile.TemporaryFile() as spooled:
            shutil.copyfileobj(stream, spooled, CHUNK)
            spooled.seek(0)
            return self._put_if_absent(key, cast(BinaryIO, spooled))

    def _put_if_absent(self, key: str, body: BinaryIO) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body, IfNoneMatch="*")
        except Exception as exc:
            if _code(exc) in _EXISTS:
                return False
            raise
        return True

    def open(self, key: str) -> BinaryIO:
        """A streaming reader of the object."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            if _code(exc) in _MISSING:
                raise CopyMissing(f"{self.name}: {key} is missing") from exc
            raise self._fail("cannot be read", exc) from exc
        return cast(BinaryIO, response["Body"])

    def stat(self, key: str) -> ObjectStat | None:
        """HEAD the object."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            if _code(exc) in _MISSING:
                return None
            raise self._fail("cannot be read", exc) from exc
        return ObjectStat(int(response["ContentLength"]))

    def delete(self, key: str) -> None:
        """DELETE the object (absent is fine: S3 says 204 either way)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            raise self._fail("cannot remove an object", exc) from exc

    def iterate(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, listed page by page."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    key = str(item["Key"])[len(self.prefix):]
                    if not key.startswith("."):
                        yield key
        except Exception as exc:
            raise self._fail("cannot be listed", exc) from exc
