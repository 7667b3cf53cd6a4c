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

import lzma
import os
import posixpath
import tarfile
import zlib
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


# What a cut or corrupt archive raises while its data is read.
_DAMAGED = (tarfile.ReadError, EOFError, zlib.error, lzma.LZMAError)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_links(members: list[tarfile.TarInfo], archive: str) -> None:
    """Refuse an archive that writes through one of its own symlinks, or whose symlink points
    through another: each link is checked alone, so a chain (``a -> .``, ``a/b -> ..``) could
    otherwise lead outside."""
    links = {posixpath.normpath(m.name.replace("\\", "/")) for m in members if m.issym()}
    if not links:
        return
    for member in members:
        name = posixpath.normpath(member.name.replace("\\", "/"))
        paths = [name]
        if member.issym():  # not normalised: "a/.." must be seen going through "a"
            paths.append(posixpath.join(posixpath.dirname(name), member.linkname.replace("\\", "/")))
        for path in paths:
            parts = path.split("/")
            for i in range(1, len(parts)):
                if posixpath.normpath("/".join(parts[:i])) in links:
                    raise UsageError(f"refusing to extract {archive}: member {member.name!r} goes through the "
                                     f"symlink {'/'.join(parts[:i])!r} of the same archive; nothing was extracted")


def extract_tar(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Extract ``archive`` (any compression ``tarfile`` reads) into ``dest``; returns the files written.

    Raises:
        UsageError: a member would escape ``dest`` (named in the message): nothing is written; or
            the archive is damaged: one line naming it (when the damage is found only after its
            headers, the members before it have been written).
    """
    dest = Path(dest)
    shown = Path(archive).name
    tar = None
    try:
        tar = tarfile.open(archive)
        members = tar.getmembers()  # reads every header: a damaged archive fails here, before any write
    except (tarfile.TarError, *_DAMAGED, OSError) as exc:  # TarError: any header tarfile cannot read
        if tar is not None:
            tar.close()
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the file itself cannot be read: the caller's OSError
        raise UsageError(f"{shown} is not a complete tar archive ({_first_line(exc)}); nothing was extracted") from None
    with tar:
        for member in members:
            check_member(member, shown)
        _check_links(members, shown)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            if not hasattr(tarfile, "data_filter"):  # Python before 3.11.4/3.10.12/3.9.17: our checks only
                tar.extractall(dest, members=members)
            else:
                tar.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise UsageError(f"refusing to extract {shown}: {exc}") from None
        except _DAMAGED as exc:  # cut short after the headers
            raise UsageError(f"{shown} is not a complete tar archive ({_first_line(exc)}); the members before the "
                             f"damage are in {dest}") from None
    return sorted(dest / m.name for m in members if m.isfile())
