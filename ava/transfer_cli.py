"""``ava upload SRC URL`` and ``ava fetch URL DEST``: files or trees between disk and storage.

Storage URLs are ``file://`` (or a plain path), ``s3://`` and ``qiniu://`` (see
``ava.storage.registry``); ``ava fetch`` also takes ``http(s)://`` URLs, downloaded by
``ava.utils.fetcher.Fetcher`` (resumed, verified). A directory goes up as a tree under URL;
a URL that names no object but has objects under ``URL/`` comes down as a tree. A progress bar
(tqdm) goes to stderr when it is a terminal, or always with ``--progress``; a summary line
(files, bytes, seconds, MB/s) goes to stdout at the end.

Example:
    $ ava upload runs/output s3://bucket/models/run1
    uploaded 12 files, 48,213,004 bytes in 0.91 s (53.0 MB/s) to s3://bucket/models/run1
    $ ava fetch https://example.com/data/train.rec data/
    fetched 1 file, 1,073,741,824 bytes in 2.40 s (447.4 MB/s) to data/train.rec
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from ava.env import Env
from ava.errors import ObjectNotFoundError, StorageError, UsageError
from ava.utils.fileio import os_reason

EXIT_OK = 0


class _Progress:
    """A byte-counting tqdm bar on stderr, or nothing (no terminal, or no tqdm installed).

    The bar appears on the first news, so it starts with its total when there is one.
    """

    def __init__(self, enabled: bool, desc: str) -> None:
        self.enabled, self.desc = enabled, desc
        self.bar: Any = None
        self.lock = threading.Lock()

    def _ensure(self, total: int | None) -> Any:
        if self.bar is None and self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                self.enabled = False
                return None
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.desc,
                            file=sys.stderr, mininterval=0.2, leave=True)
        return self.bar

    def set_total(self, total: int | None) -> None:
        with self.lock:
            bar = self._ensure(total)
            if bar is not None and total is not None and bar.total != total:
                bar.total = total
                bar.refresh()

    def add(self, nbytes: int) -> None:
        with self.lock:
            bar = self._ensure(None)
            if bar is not None and nbytes:
                bar.update(nbytes)

    def at(self, done: int, total: int | None) -> None:
        """For callbacks that report a running total (it goes back when a download restarts)."""
        self.set_total(total)
        with self.lock:
            if self.bar is not None:
                self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _show_bar(args: argparse.Namespace) -> bool:
    return bool(args.progress) or sys.stderr.isatty()


def _redact(url: str) -> str:
    """The URL without its query string (a signed URL's token) and with known secrets masked."""
    from ava.log.redact import redact

    head, sep, _ = url.partition("?")
    return redact(head) + ("?..." if sep else "")


def _summary(verb: str, files: int, nbytes: int, seconds: float, where: str) -> str:
    rate = nbytes / 1e6 / seconds if seconds > 0 else 0.0
    noun = "file" if files == 1 else "files"
    return f"{verb} {files} {noun}, {nbytes:,} bytes in {seconds:.2f} s ({rate:.1f} MB/s) {where}"


def _timed(fn: Callable[[], tuple[int, int]]) -> tuple[int, int, float]:
    t0 = time.perf_counter()
    files, nbytes = fn()
    return files, nbytes, time.perf_counter() - t0


def _not_found(exc: ObjectNotFoundError) -> UsageError:
    # A missing source is bad input (exit 2), like a missing params key.
    return UsageError(str(exc))


# --- upload -----------------------------------------------------------------------------
def cmd_upload(args: argparse.Namespace, env: Env) -> int:
    from ava.storage.registry import check_storage_url, get_storage

    _check_parallel(args)
    src, url = Path(args.src), args.url
    if not src.exists():
        raise UsageError(f"cannot upload {src}: no such file or directory")
    store = get_storage(url)  # an unknown scheme is a UsageError naming the known ones
    if url.endswith("/"):  # a file or a folder goes in under its own name ("ava upload run1 s3://b/runs/")
        check_storage_url(url)  # "s3://" names no bucket: said of the URL given, not of "s3://<name>"
        url += Path(os.path.abspath(src)).name
    progress = _Progress(_show_bar(args), "upload")
    try:
        if src.is_dir():
            from ava.storage.tree import local_files, upload_tree

            files = local_files(src)  # once: what it leaves out is said once
            if not files:  # storage has no empty folders: a later fetch of the URL finds nothing
                print(f"ava: warning: {src} holds no files; nothing is uploaded", file=sys.stderr)
            progress.set_total(sum(p.stat().st_size for p, _ in files))

            def run() -> tuple[int, int]:
                infos = upload_tree(src, url, parallelism=args.parallel, storage=store,
                                    on_file=lambda _u, n: progress.add(n), files=files)
                return len(infos), sum(i.size for i in infos)
        else:
            def run() -> tuple[int, int]:
                size = src.stat().st_size
                progress.set_total(size)
                info = store.upload(src, url)
                progress.add(info.size)
                return 1, info.size

        files, nbytes, seconds = _timed(run)
    except ObjectNotFoundError as exc:
        raise _not_found(exc) from None
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"cannot upload {src}: {exc.strerror or exc}") from None
    finally:
        progress.close()
    print(_summary("uploaded", files, nbytes, seconds, f"to {_redact(url)}"), flush=True)
    return EXIT_OK


# --- fetch ------------------------------------------------------------------------------
def _into(dest: str, name: str) -> Path:
    """DEST itself, or DEST/name when DEST is a directory (or ends with '/')."""
    path = Path(dest)
    if dest.endswith("/") or path.is_dir():
        from ava.utils.fetcher import check_relative_name

        return path / check_relative_name(name, "file name taken from the URL")
    return path


def _fetch_http(args: argparse.Namespace, env: Env, progress: _Progress) -> tuple[int, int, float, Path]:
    try:
        from ava.utils.fetcher import Fetcher
    except ImportError as exc:
        raise UsageError(f"fetching http(s) URLs needs tornado: pip install 'ava-sdk[platform]' ({exc})") from None

    if not urlsplit(args.url).hostname:
        raise UsageError(f"{_redact(args.url)} names no host; write {urlsplit(args.url).scheme}://host/path")
    name = unquote(urlsplit(args.url).path).rpartition("/")[2]
    if not name and (args.dest.endswith("/") or Path(args.dest).is_dir()):
        raise UsageError(f"cannot take a file name from {_redact(args.url)}; give DEST as a file path")
    target = _into(args.dest, name)
    with Fetcher(env=env) as fetcher:
        files, nbytes, seconds = _timed(lambda: (1, fetcher.fetch_huge_file(
            args.url, target, progress_callback=progress.at).stat().st_size))
    return files, nbytes, seconds, target


def _fetch_storage(args: argparse.Namespace, progress: _Progress) -> tuple[int, int, float, Path]:
    from ava.storage.registry import get_storage
    from ava.storage.tree import download_tree

    url = args.url
    store = get_storage(url)
    info = None
    if not _names_a_tree_only(url):
        try:
            info = store.stat(url)
        except ObjectNotFoundError:
            pass
    if info is not None:
        target = _into(args.dest, url.rstrip("/").rpartition("/")[2])
        progress.set_total(info.size)

        def one() -> tuple[int, int]:
            out = store.download(url, target)
            size = out.stat().st_size
            progress.add(size)
            return 1, size

        files, nbytes, seconds = _timed(one)
        return files, nbytes, seconds, target
    dest = Path(args.dest)
    prefix = url.rstrip("/") + "/"  # a tree is what lies under URL/, not every key starting with URL
    listed = [i for i in store.list(prefix) if i.url.startswith(prefix)]
    if not listed:  # before download_tree, which would create DEST
        raise ObjectNotFoundError(f"no object at {url} and none under {prefix}")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is a file; {url} is a tree of {len(listed)} objects and needs a directory")
    progress.set_total(sum(i.size for i in listed))

    def tree() -> tuple[int, int]:
        paths = download_tree(url, dest, parallelism=args.parallel, storage=store,
                              on_file=lambda _u, n: progress.add(n))
        return len(paths), sum(p.stat().st_size for p in paths)

    files, nbytes, seconds = _timed(tree)
    return files, nbytes, seconds, dest


def _names_a_tree_only(url: str) -> bool:
    """``s3://bucket``, ``s3://bucket/prefix/``: no object can have that name, only a tree."""
    from ava.storage.registry import scheme_of

    if scheme_of(url) not in ("s3", "qiniu"):
        return False
    return url.endswith("/") or "/" not in url.partition("://")[2]


def _check_parallel(args: argparse.Namespace) -> None:
    if args.parallel < 1:
        raise UsageError(f"--parallel must be 1 or more, not {args.parallel}")


def cmd_fetch(args: argparse.Namespace, env: Env) -> int:
    from ava.storage.registry import scheme_of

    _check_parallel(args)
    scheme = scheme_of(args.url)
    progress = _Progress(_show_bar(args), "fetch")
    try:
        if scheme in ("http", "https"):
            files, nbytes, seconds, where = _fetch_http(args, env, progress)
        else:
            files, nbytes, seconds, where = _fetch_storage(args, progress)
    except ObjectNotFoundError as exc:
        raise _not_found(exc) from None
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"cannot fetch {_redact(args.url)} to {args.dest}: {os_reason(exc)}") from None
    finally:
        progress.close()
    print(_summary("fetched", files, nbytes, seconds, f"to {where}"), flush=True)
    return EXIT_OK


def add_parser(subparsers: Any) -> None:
    """Register ``upload`` and ``fetch`` on the CLI's subparsers."""
    p_up = subparsers.add_parser("upload", help="copy a file or a directory tree to storage")
    p_up.add_argument("src", help="a local file or directory")
    p_up.add_argument("url", help="file:///dir/key, s3://bucket/key or qiniu://bucket/key (a trailing / adds SRC's name)")
    p_fetch = subparsers.add_parser("fetch", help="copy a file or a tree from storage or an http(s) URL to disk")
    p_fetch.add_argument("url", help="file://, s3://, qiniu://, http:// or https:// URL")
    p_fetch.add_argument("dest", help="the file to write, or a directory to put it (or the tree) in")
    for p in (p_up, p_fetch):
        p.add_argument("-j", "--parallel", type=int, default=8, metavar="N", help="files at once for a tree (default 8)")
        p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p_up.set_defaults(func=cmd_upload)
    p_fetch.set_defaults(func=cmd_fetch)
