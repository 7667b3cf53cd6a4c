"""The storage interface every backend implements, chosen by URL scheme (see registry.py).

Example:
    >>> import tempfile, pathlib
    >>> from ava.storage.registry import get_storage
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "a.txt").write_text("hi")
    >>> store = get_storage(f"file://{root}/bucket")
    >>> store.upload(root / "a.txt", f"file://{root}/bucket/x/a.txt").size
    2
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows of one stored object."""

    url: str
    size: int
    etag: str | None = None
    mtime: float | None = None


class Storage(abc.ABC):
    """One storage backend; URLs are absolute (``file:///dir/key``, ``s3://bucket/key``, ...)."""

    scheme: str = ""

    @abc.abstractmethod
    def upload(self, local: Path, url: str) -> ObjectInfo:
        """Store the file ``local`` at ``url``; readers never see a partial object."""

    @abc.abstractmethod
    def download(self, url: str, local: Path) -> Path:
        """Fetch ``url`` into ``local`` (temp file, then rename: no partial file at ``local``)."""

    @abc.abstractmethod
    def stat(self, url: str) -> ObjectInfo:
        """Size and hash of ``url``; :class:`~ava.errors.ObjectNotFoundError` when absent."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose URL starts with ``prefix``, sorted by URL."""

    @abc.abstractmethod
    def delete(self, url: str) -> None:
        """Remove ``url``; :class:`~ava.errors.ObjectNotFoundError` when absent."""

    def exists(self, url: str) -> bool:
        from ava.errors import ObjectNotFoundError

        try:
            self.stat(url)
            return True
        except ObjectNotFoundError:
            return False

    def put_text(self, text: str, url: str) -> ObjectInfo:
        """Store a small text object (manifests, pointers)."""
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
            fh.write(text)
        try:
            return self.upload(Path(fh.name), url)
        finally:
            Path(fh.name).unlink(missing_ok=True)

    def get_text(self, url: str) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return self.download(url, Path(tmp) / "obj").read_text(encoding="utf-8")


def join_url(base: str, *parts: str) -> str:
    """``join_url("s3://b/p", "x", "y.bin")`` -> ``"s3://b/p/x/y.bin"``."""
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def split_bucket_url(url: str, scheme: str) -> tuple[str, str]:
    """``<scheme>://bucket/key`` -> ``("bucket", "key")`` (the key may be empty)."""
    from ava.errors import StorageURLError

    prefix = f"{scheme}://"
    if not url.startswith(prefix):
        raise StorageURLError(f"{url!r} is not a {prefix} URL; write {prefix}bucket/key")
    bucket, _, key = url[len(prefix):].partition("/")
    if not bucket:
        raise StorageURLError(f"{url!r} names no bucket; write {prefix}bucket/key")
    return bucket, key


def split_object_url(url: str, scheme: str) -> tuple[str, str]:
    """Like :func:`split_bucket_url`, for a URL that must name one object."""
    from ava.errors import StorageURLError

    bucket, key = split_bucket_url(url, scheme)
    if not key or key.endswith("/"):
        raise StorageURLError(f"{url!r} names no object (the key is empty or ends with '/'); "
                           f"write {scheme}://bucket/key")
    return bucket, key


def upload_source(local: Path | str) -> tuple[Path, int]:
    """The file to upload and its size; a clear error when it is missing or a directory."""
    from ava.errors import ObjectNotFoundError, StorageError

    path = Path(local)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ObjectNotFoundError(f"cannot upload {path}: no such file") from None
    if path.is_dir():
        raise StorageError(f"{path} is a directory; upload files one by one (or use upload_tree)")
    return path, st.st_size
