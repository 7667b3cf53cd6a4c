"""Backends by URL scheme, imported on first use (the fsspec way): ``get_storage(url)``.

Example:
    >>> get_storage("/tmp/somewhere").scheme
    'file'
"""

from __future__ import annotations

import importlib
from typing import Any

from ava.errors import UsageError
from ava.storage.base import Storage, split_bucket_url

#: scheme -> (dotted class path, install hint)
BACKENDS: dict[str, tuple[str, str]] = {
    "file": ("ava.storage.local:LocalStorage", ""),
    "s3": ("ava.storage.s3:S3Storage", "pip install 'ava-sdk[s3]'"),
    "qiniu": ("ava.storage.qiniu:QiniuStorage", "pip install 'ava-sdk[qiniu]'"),
}

_instances: dict[str, Storage] = {}


def scheme_of(url: str) -> str:
    head, sep, _ = url.partition("://")
    return head.lower() if sep else "file"


def _known_scheme(url: str, error: type[Exception] = UsageError) -> str:
    """``url``'s scheme; ``error`` naming the known ones when there is no backend for it."""
    scheme = scheme_of(url)
    if scheme not in BACKENDS:
        raise error(f"unknown storage scheme {scheme!r} in {url!r}; known: {', '.join(sorted(BACKENDS))}")
    return scheme


def check_storage_url(url: str) -> str:
    """``url`` when it can name a storage location (known scheme, a bucket for s3/qiniu, an
    absolute path for file); else :class:`~ava.errors.StorageURLError` saying what is wrong.
    Imports no backend."""
    from ava.errors import StorageURLError

    scheme = _known_scheme(url, StorageURLError)
    if scheme == "file":
        path = url[len("file://"):] if url.startswith("file://") else url
        if not path.startswith("/"):
            raise StorageURLError(f"{url!r} is not an absolute path; write file:///absolute/path")
    elif scheme in ("s3", "qiniu"):
        split_bucket_url(url, scheme)
    return url


def get_storage(url: str, **options: Any) -> Storage:
    """The backend for ``url``'s scheme; a plain path is ``file``."""
    scheme = _known_scheme(url)
    key = scheme if not options else f"{scheme}:{sorted(options.items())}"
    if key not in _instances:
        path, hint = BACKENDS[scheme]
        module_name, _, cls_name = path.partition(":")
        try:
            module = importlib.import_module(module_name)
            # The backend's libraries are imported here, on the caller's thread: a first import
            # racing between two threads (an uploader's and the training's) can see a
            # half-initialised package ("cannot import name ... partially initialized module").
            for dependency in getattr(module, "REQUIRES", ()):
                importlib.import_module(dependency)
        except ImportError as exc:
            raise UsageError(f"{scheme}:// storage needs {exc.name}: {hint}") from None
        _instances[key] = getattr(module, cls_name)(**options)
    return _instances[key]
