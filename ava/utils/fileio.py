"""Small file helpers shared by every layer: atomic replacement and directory creation.

Example:
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "status.json"
    >>> atomic_write_text(target, '{"status": "running"}')
    >>> target.read_text()
    '{"status": "running"}'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_umask: int | None = None


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    global _umask
    if _umask is None:
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Umask:"):
                        _umask = int(line.split()[1], 8)
                        break
        except (OSError, ValueError, IndexError):
            pass
        if _umask is None:
            _umask = os.umask(0o022)  # no /proc: read it the only other way, and put it back
            os.umask(_umask)
    return _umask


def new_file_mode(target: Path | str) -> int:
    """The mode a file written to ``target`` through a temporary file should get: the mode of
    the file it replaces, else what ``open()`` would give it (0666 less the umask). Temporary
    files are created 0600, and a download or an upload's copy should not stay that way."""
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


_TMP_SUFFIX = ".tmp"


def leftover_temp_files(path: Path | str) -> list[Path]:
    """The temporary files :func:`atomic_write_bytes` left beside ``path`` when its process ended
    mid-write (``os._exit``, SIGKILL): only safe to remove while no other process writes ``path``."""
    path = Path(path)
    return list(path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"))


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    The data goes to a temporary file in the same directory, is fsynced, and is renamed over
    the target. On any failure the temporary file is removed and the target is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str, *, mode: int = 0o644) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def os_reason(exc: OSError) -> str:
    """Why ``exc`` happened, for a message: a folder on the way that is a file is named
    ("out is a file, not a directory"), where the system says only "File exists" or "Not a
    directory"; otherwise the system's words."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
        for folder in Path(os.fsdecode(exc.filename)).parents:
            if folder.exists():
                if not folder.is_dir():
                    return f"{folder} is a file, not a directory"
                break
        target = Path(os.fsdecode(exc.filename))
        if isinstance(exc, FileExistsError) and target.exists() and not target.is_dir():
            return f"{target} is a file, not a directory"
    return exc.strerror or str(exc)


def mkdir_p(path: Path | str) -> Path:
    """Create a directory and its parents if missing (old ``ava.utils.fileloc.mkdir_p``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
