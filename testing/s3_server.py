"""A local S3-compatible server for tests: moto's server mode on 127.0.0.1, in a thread.

``with LocalS3() as s3:`` starts it on a free port; ``s3.env`` holds the ``AWS_*``
variables that point boto3, s3fs and fsspec at it (pass them to subprocesses, or set them
with ``monkeypatch``); ``s3.upload(local_files, "bucket", "prefix/")`` creates the bucket
and copies files in.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any


class LocalS3:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def upload(self, files: Iterable[Path], bucket: str, prefix: str) -> list[str]:
        """Create ``bucket`` (if needed) and put each file at ``prefix + name``; returns the keys."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        keys = []
        for f in files:
            key = f"{prefix}{f.name}"
            client.put_object(Bucket=bucket, Key=key, Body=f.read_bytes())
            keys.append(key)
        return keys

    def __enter__(self) -> LocalS3:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        # moto keeps its buckets in process-wide state: a server started later in the same
        # process would see an earlier test's objects. Its reset endpoint empties them.
        self.reset()
        return self

    def reset(self) -> None:
        """Forget every bucket and object (moto's ``/moto-api/reset``)."""
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
