"""Old path ``ava.utils.fileloc``: creating and deleting directories (the guide's "创建 / 删除目录").

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "a" / "b"
    >>> mkdir_p(d) == d, d.is_dir()
    (True, True)
    >>> rm_path(d.parent), d.parent.exists()
    (True, False)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ava.errors import UsageError
from ava.utils.fileio import mkdir_p

__all__ = ["mkdir_p", "rm_path"]


def rm_path(path: str | os.PathLike[str]) -> bool:
    """Delete a file, a link or a directory with everything in it; False when nothing was there.

    A link is removed itself, never what it points to. An empty path, the filesystem root, the
    home directory, and the current directory or any folder holding it are refused (a path made
    from an empty variable).
    """
    if not os.fspath(path):
        raise UsageError("rm_path('') refused: an empty path (an unset variable?) would mean the current directory")
    p = Path(path)
    if p.is_symlink() or p.is_file():
        p.unlink()
        return True
    if not p.exists():
        return False
    resolved = p.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve() or resolved == cwd \
            or resolved in cwd.parents:
        raise UsageError(f"rm_path({str(path)!r}) refused: it would delete {resolved}")
    shutil.rmtree(p)
    return True
