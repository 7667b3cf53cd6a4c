"""``file://`` storage (and plain paths): a directory tree, written atomically.

Example:
    >>> LocalStorage().path_of("file:///tmp/x/y")
    PosixPath('/tmp/x/y')
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ava.errors import ObjectNotFoundError, StorageError, StorageURLError
from ava.storage.base import ObjectInfo, Storage
from ava.utils.fileio import fsync_dir, new_file_mode, os_reason

_CHUNK = 1 << 20


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class LocalStorage(Storage):
    """Objects are files under a directory; etags are MD5 hex digests."""

    scheme = "file"

    def path_of(self, url: str) -> Path:
        if url.startswith("file://"):
            rest = url[len("file://"):]
            if not rest.startswith("/"):
                raise StorageURLError(f"{url!r} is not an absolute file:// URL; write file:///absolute/path")
            return Path(rest)
        return Path(url).absolute()

    def url_of(self, path: Path) -> str:
        return f"file://{path}"

    def _copy_atomic(self, src: Path, dst: Path) -> None:
        if src.is_dir():
            raise StorageError(f"{src} is a directory; upload files one by one (or use upload_tree)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
        mode = new_file_mode(dst)
        if not src.stat().st_mode & 0o077:  # a private file (run.log, a key) stays private in its copy
            mode &= ~0o077
        os.fchmod(fd, mode)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(dst.parent)

    def upload(self, local: Path, url: str) -> ObjectInfo:
        local = Path(local)
        if not local.exists():
            raise ObjectNotFoundError(f"cannot upload {local}: no such file")
        dst = self.path_of(url)
        try:
            self._copy_atomic(local, dst)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot write {url}: {os_reason(exc)}") from None
        return self.stat(url)

    def download(self, url: str, local: Path) -> Path:
        src = self.path_of(url)
        if not src.is_file():
            raise ObjectNotFoundError(f"no object at {url}")
        local = Path(local)
        try:
            self._copy_atomic(src, local)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot download {url} to {local}: {os_reason(exc)}") from None
        return local

    def stat(self, url: str) -> ObjectInfo:
        path = self.path_of(url)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object at {url}") from None
        if not path.is_file():
            raise ObjectNotFoundError(f"{url} is a directory, not an object")
        return ObjectInfo(self.url_of(path), st.st_size, _md5(path), st.st_mtime)

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.path_of(prefix)
        root = base if base.is_dir() else base.parent
        if not root.is_dir():
            return []
        out = []
        for path in sorted(root.rglob("*")):
            if path.is_file() and str(path).startswith(str(base)) and not path.name.endswith(".part"):
                st = path.stat()
                out.append(ObjectInfo(self.url_of(path), st.st_size, None, st.st_mtime))
        return out

    def delete(self, url: str) -> None:
        path = self.path_of(url)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object at {url}") from None
