"""Old path ``ava.utils.uploader``: ``Uploader(ak, sk, bucket=None).upload_file(filepath, key)``.

A thin wrapper over the ``qiniu://`` storage backend (resumable uploads, etag verified, retries).
Unlike the old one, it never deletes the file and it raises a clear error naming the file and the
bucket when something is missing.

Example:
    >>> up = Uploader("ak", "sk")
    >>> try:
    ...     up.upload_file("/etc/hostname", "k")
    ... except UsageError as exc:
    ...     print("no bucket" in str(exc))
    True
"""

from __future__ import annotations

import logging
from pathlib import Path

from ava.errors import ObjectNotFoundError, UsageError
from ava.storage.base import ObjectInfo

log = logging.getLogger(__name__)


class Uploader:
    """Upload single files to a Qiniu Kodo bucket.

    Args:
        ak: access key.
        sk: secret key.
        bucket: the default bucket.
    """

    def __init__(self, ak: str, sk: str, bucket: str | None = None) -> None:
        self._ak, self._sk = ak, sk
        self.bucket = bucket
        self._store = None

    def set_bucket(self, bucket: str) -> None:
        self.bucket = bucket

    def upload_file(self, filepath: str | Path, key: str, bucket: str | None = None) -> ObjectInfo:
        """Upload ``filepath`` as ``key`` (to ``bucket`` or the default one); raise on failure."""
        bucket = bucket or self.bucket
        if not bucket:
            raise UsageError(f"no bucket to upload {filepath} to: pass bucket= or call set_bucket()")
        if "/" in bucket or bucket.strip() != bucket:
            raise UsageError(f"bucket {bucket!r} is not a bucket name (no '/' or spaces); put the path in the key")
        path = Path(filepath)
        if path.is_dir():
            raise UsageError(f"cannot upload {path}: it is a directory; upload its files, or use ava upload DIR URL")
        if not path.is_file():
            raise ObjectNotFoundError(f"cannot upload {path}: no such file")
        if key.startswith("/"):  # qiniu:// URLs cannot hold it: said, not silently moved
            log.warning("key %r is stored as %r (a key here does not start with '/')", key, key.lstrip("/"))
        if self._store is None:
            from ava.storage.qiniu import QiniuStorage

            self._store = QiniuStorage(access_key=self._ak, secret_key=self._sk)
        return self._store.upload(path, f"qiniu://{bucket}/{key.lstrip('/')}")
