"""Directory trees to and from any backend, in parallel: ``upload_tree`` and ``download_tree``.

Like ModelArts' ``mox.file.copy_parallel``: a thread pool moves the files of one tree. Keys map to
relative paths; ``download_tree`` refuses a key that is absolute or holds ``..`` (or ``.``, or an
empty component) before it writes anything, and a file whose directory (or which itself) is a
symlink leading outside, so stored names can never escape ``local_dir``.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "src" / "sub").mkdir(parents=True)
    >>> _ = (root / "src" / "sub" / "a.txt").write_text("a")
    >>> [i.size for i in upload_tree(root / "src", f"file://{root}/store/run1")]
    [1]
    >>> [p.relative_to(root).as_posix() for p in download_tree(f"file://{root}/store/run1", root / "back")]
    ['back/sub/a.txt']
"""

from __future__ import annotations

import errno
import logging
import os
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from ava.errors import ObjectNotFoundError, StorageError
from ava.storage.base import ObjectInfo, Storage, join_url
from ava.storage.registry import get_storage

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called after each file with (URL, bytes); used for progress bars.
OnFile = Callable[[str, int], None]


def local_files(local_dir: Path) -> list[tuple[Path, str]]:
    """Every regular file under ``local_dir`` with its relative key.

    Symlinks are followed, to files and to folders (a folder reached twice, by a loop or by two
    links, is taken once, under the first name met); what is left out (a dangling link, a
    socket, a second way into a folder) is named in a warning.
    """
    out = []
    seen: set[tuple[int, int]] = set()
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(local_dir, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a loop, or the same folder by another link
            skipped.append(f"{Path(dirpath).relative_to(local_dir).as_posix()}/ (already taken)")
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file():
                out.append((path, path.relative_to(local_dir).as_posix()))
            else:
                skipped.append(f"{path.relative_to(local_dir).as_posix()} ({_why_not_a_file(path)})")
    if skipped:
        log.warning("%s: left out %d: %s%s", local_dir, len(skipped), ", ".join(skipped[:5]),
                    " ..." if len(skipped) > 5 else "")
    return out


def _why_not_a_file(path: Path) -> str:
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as exc:
            return "a link loop" if exc.errno == errno.ELOOP else "a dangling link"
    return "not a regular file"


def _run_parallel(jobs: Iterable[Callable[[], T]], parallelism: int) -> list[T]:
    """Run ``jobs`` on a pool; on the first failure (or an interrupt) cancel what has not
    started and raise it: only the files in flight are finished, each complete or not at all."""
    jobs = list(jobs)
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(jobs))), thread_name_prefix="ava-tree") as pool:
        futures: list[Future[T]] = [pool.submit(job) for job in jobs]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: the files not started are dropped, those in flight finish
            for f in futures:
                f.cancel()
            log.warning("interrupted: finishing the %d files in flight, skipping the rest",
                        sum(1 for f in futures if f.running()))
            raise
        failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            raise failed.exception()  # type: ignore[misc]
        return [f.result() for f in futures]


def upload_tree(local_dir: str | Path, url: str, parallelism: int = 8, *, storage: Storage | None = None,
                on_file: OnFile | None = None, files: list[tuple[Path, str]] | None = None) -> list[ObjectInfo]:
    """Upload every file under ``local_dir`` to ``url/<relative path>``, ``parallelism`` at a time.

    Args:
        local_dir: the directory to upload.
        url: the prefix the tree goes under (``s3://bucket/models/run1``).
        parallelism: how many files move at once.
        storage: the backend; by default the one for ``url``'s scheme.
        on_file: called with (URL, size) after each file.
        files: what :func:`local_files` gave for ``local_dir``, when the caller has it already
            (what it leaves out is then said once).

    Returns:
        What was stored, one entry per file, in the order of the sorted relative paths.
    """
    local_dir = Path(local_dir)
    if not local_dir.exists():
        raise ObjectNotFoundError(f"cannot upload {local_dir}: no such directory")
    if not local_dir.is_dir():
        raise StorageError(f"{local_dir} is a file, not a directory; use upload() for a single file")
    store = storage or get_storage(url)

    def job(path: Path, key: str) -> Callable[[], ObjectInfo]:
        def run() -> ObjectInfo:
            info = store.upload(path, join_url(url, key))
            if on_file is not None:
                on_file(info.url, info.size)
            return info
        return run

    if files is None:
        files = local_files(local_dir)
    infos = _run_parallel((job(p, k) for p, k in files), parallelism)
    log.debug("uploaded %d files from %s to %s", len(infos), local_dir, url)
    return infos


def safe_relative_key(rel: str, url: str, local_dir: Path) -> str:
    """``rel`` when it is a plain relative path; else a :class:`StorageError` naming ``url``."""
    if rel.startswith("/") or rel.startswith("\\"):
        raise StorageError(f"refusing to download {url}: its key is an absolute path ({rel!r}) that would "
                           f"land outside {local_dir}; rename the object")
    parts = rel.split("/")
    if ".." in parts:
        raise StorageError(f"refusing to download {url}: its key holds '..' ({rel!r}) and would land outside "
                           f"{local_dir}; rename the object")
    if any(p in ("", ".") for p in parts) or "\x00" in rel:
        raise StorageError(f"refusing to download {url}: its key {rel!r} is not a plain relative path "
                           "(empty or '.' component); rename the object")
    return rel


def download_tree(url: str, local_dir: str | Path, parallelism: int = 8, *, storage: Storage | None = None,
                  on_file: OnFile | None = None) -> list[Path]:
    """Download every object under ``url/`` into ``local_dir``, ``parallelism`` at a time.

    Every key is checked before anything is written: an absolute key or one with ``..`` is refused
    with a :class:`StorageError`. Keys ending in ``/`` (folder markers) only create directories.

    Returns:
        The files written, sorted.
    """
    local_dir = Path(local_dir)
    if local_dir.exists() and not local_dir.is_dir():
        raise StorageError(f"cannot download {url} into {local_dir}: it is a file, not a directory")
    store = storage or get_storage(url)
    prefix = url.rstrip("/") + "/"
    plan: list[tuple[str, Path]] = []
    folders: list[Path] = []
    for info in store.list(prefix):
        if not info.url.startswith(prefix):
            continue
        rel = info.url[len(prefix):]
        if rel.endswith("/"):
            folders.append(local_dir / safe_relative_key(rel.rstrip("/"), info.url, local_dir))
            continue
        plan.append((info.url, local_dir / safe_relative_key(rel, info.url, local_dir)))
    # An object store may hold "x" and "x/y" both; a disk cannot: say so before writing anything.
    files = {dst for _, dst in plan}
    for src, dst in plan:
        clash = next((parent for parent in dst.parents if parent in files), None)
        if clash is not None:
            raise StorageError(f"cannot download {url} into {local_dir}: {src} would go under "
                               f"{clash.relative_to(local_dir)}, which is also an object (a file here); "
                               "fetch them apart")
    local_dir.mkdir(parents=True, exist_ok=True)
    root = local_dir.resolve()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)

    def job(src: str, dst: Path) -> Callable[[], Path]:
        def run() -> Path:
            dst.parent.mkdir(parents=True, exist_ok=True)
            # A symlinked directory inside local_dir must not carry a file outside it either.
            if not dst.parent.resolve().is_relative_to(root):
                raise StorageError(f"refusing to download {src}: {dst.parent} leads outside {local_dir}")
            if dst.is_symlink() and not dst.resolve().is_relative_to(root):
                raise StorageError(f"refusing to download {src}: {dst} is a symlink leading outside {local_dir}")
            out = store.download(src, dst)
            if on_file is not None:
                on_file(src, out.stat().st_size)
            return out
        return run

    paths = _run_parallel((job(s, d) for s, d in plan), parallelism)
    log.debug("downloaded %d files from %s to %s", len(paths), url, local_dir)
    return sorted(paths)
