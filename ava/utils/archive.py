"""Tar extraction that cannot write outside its target directory.

An archive fetched from elsewhere may name members ``/etc/x``, ``../../x``, or carry a symlink
(or hard link) that points outside and a later member written through it. ``extract_tar``
checks every member first and refuses the archive, naming the member, before anything is
written; it then extracts with ``tarfile``'s ``"data"`` filter where the Python has it, which
checks the same again (and drops set-uid bits).

Example:
    >>> import io, tarfile, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with tarfile.open(root / "a.tar", "w") as tar:
    ...     info = tarfile.TarInfo("../evil"); info.size = 1
    ...     tar.addfile(info, io.BytesIO(b"x"))
    >>> try:
    ...     extract_tar(root / "a.tar", root / "out")
    ... except UsageError as exc:
    ...     print(str(exc).split(":")[0])
    refusing to extract a.tar
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path

from ava.errors import UsageError


def _escapes(name: str) -> bool:
    """True when ``name``, joined to a directory, leads outside it."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    norm = posixpath.normpath(name.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")


def check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse a member that is absolute, holds ``..`` that leaves the root, or links outside."""
    def refuse(why: str) -> UsageError:
        return UsageError(f"refusing to extract {archive}: member {member.name!r} {why}; nothing was extracted")

    if "\x00" in member.name:
        raise refuse("holds a NUL byte")
    if _escapes(member.name):
        raise refuse("would land outside the target directory")
    if ".." in member.name.replace("\\", "/").split("/"):
        raise refuse("holds '..'")
    if member.issym():
        target = member.linkname
        if target.startswith("/") or _escapes(posixpath.join(posixpath.dirname(member.name), target)):
            raise refuse(f"is a symlink to {target!r}, outside the target directory")
    elif member.islnk() and _escapes(member.linkname):
        raise refuse(f"is a hard link to {member.linkname!r}, outside the target directory")
    elif member.isdev():
        raise refuse("is a device file")


def extract_tar(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Extract ``archive`` (any compression ``tarfile`` reads) into ``dest``; returns the files written.

    Raises:
        UsageError: a member would escape ``dest`` (named in the message); nothing is written.
    """
    dest = Path(dest)
    shown = Path(archive).name
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member, shown)
        dest.mkdir(parents=True, exist_ok=True)
        if not hasattr(tarfile, "data_filter"):  # Python before 3.11.4/3.10.12/3.9.17: our checks only
            tar.extractall(dest, members=members)
        else:
            try:
                tar.extractall(dest, members=members, filter="data")
            except tarfile.FilterError as exc:
                raise UsageError(f"refusing to extract {shown}: {exc}") from None
    return sorted(dest / m.name for m in members if m.isfile())
