"""File names for downloads under a destination directory: URL -> relative name, checked so it
cannot escape; ``redact`` for URLs that are logged or shown."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlsplit

from ava.errors import UsageError


def redact(url: str) -> str:
    """``url`` without its query string (signed URLs carry tokens that must not be logged)."""
    head, sep, _ = url.partition("?")
    return head + ("?..." if sep else "")


# --- names under a destination directory ----------------------------------------------
def check_relative_name(name: str, what: str = "file name") -> str:
    """Return ``name`` if it is a relative path that stays inside any directory it is joined to.

    Raises:
        UsageError: for an empty name, an absolute path, a ``.``/``..``/empty component or a NUL.
    """
    if not name:
        raise UsageError(f"empty {what}: cannot place it under the destination directory")
    if name.startswith("/"):
        raise UsageError(f"{what} {name!r} is an absolute path; only relative names are allowed")
    if "\x00" in name:
        raise UsageError(f"{what} {name!r} holds a NUL byte")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise UsageError(f"{what} {name!r} has a {part or 'empty'!r} component; it could escape "
                             "the destination directory, so it is refused")
    return name


def names_for_urls(urls: Sequence[str]) -> list[str]:
    """File names for ``urls``: each URL's percent-decoded path below the directory all share.

    ``http://h/data/train/a.jpg`` and ``http://h/data/val/b.jpg`` give ``train/a.jpg`` and
    ``val/b.jpg``; one URL gives its last path component. A path with ``..``, ``.``, an empty
    component (``a//b``, a trailing ``/``) or one that decodes to an absolute path is refused.

    Example:
        >>> names_for_urls(["http://h/d/x/1.bin", "http://h/d/y/2.bin"])
        ['x/1.bin', 'y/2.bin']
    """
    split: list[list[str]] = []
    for url in urls:
        path = unquote(urlsplit(url).path)
        if not path.startswith("/"):
            raise UsageError(f"cannot derive a file name from {redact(url)!r}: it has no path")
        check_relative_name(path[1:], f"path of {redact(url)!r}")
        split.append(path[1:].split("/"))
    common: list[str] = []
    if split:
        dirs = [parts[:-1] for parts in split]
        for column in zip(*dirs):
            if any(c != column[0] for c in column):
                break
            common.append(column[0])
    return ["/".join(parts[len(common):]) for parts in split]


def target_under(dest_dir: Path, name: str) -> Path:
    """``dest_dir / name``, refusing a name (or a symlink inside ``dest_dir``) that leads outside."""
    check_relative_name(name)
    root = os.path.realpath(dest_dir)
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root or target == root:
        raise UsageError(f"file name {name!r} leads outside {dest_dir}; refused")
    return Path(dest_dir) / name
