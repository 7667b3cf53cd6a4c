"""One file's download for the Fetcher: the temp file, the offset reached, and the hash the
ETag names (MD5 or Qiniu's etag, on a thread of its own for a big body); retry and cancel helpers."""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import errno
import hashlib
import logging
import os
import re
import ssl
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import tornado.iostream
from tornado.httpclient import HTTPClientError
from tornado.httputil import HTTPHeaders

from ava.errors import StorageError
from ava.utils._fetch_names import redact
from ava.utils.fileio import new_file_mode

log = logging.getLogger("ava.utils.fetcher")

ProgressCallback = Callable[[int, "int | None"], None]

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


# --- hashes -------------------------------------------------------------------------------
class _QiniuEtag:
    """Qiniu's etag computed incrementally (same result as ``qiniu.utils.etag``)."""

    BLOCK = 4 << 20

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.cur = hashlib.sha1()
        self.cur_len = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            take = min(len(view), self.BLOCK - self.cur_len)
            self.cur.update(view[:take])
            self.cur_len += take
            view = view[take:]
            if self.cur_len == self.BLOCK:
                self.blocks.append(self.cur.digest())
                self.cur, self.cur_len = hashlib.sha1(), 0

    def hexdigest(self) -> str:
        blocks = self.blocks + ([self.cur.digest()] if self.cur_len or not self.blocks else [])
        data = b"\x16" + blocks[0] if len(blocks) == 1 else b"\x96" + hashlib.sha1(b"".join(blocks)).digest()
        return base64.urlsafe_b64encode(data).decode()


def etag_kind(etag: str | None) -> tuple[str | None, str | None]:
    """``("md5", hex)``, ``("qiniu", etag)`` or ``(None, None)`` for an ETag header value."""
    if not etag or etag.startswith("W/"):
        return None, None
    value = etag.strip().strip('"')
    if _HEX32.match(value):
        return "md5", value.lower()
    if len(value) == 28:
        try:
            raw = base64.urlsafe_b64decode(value)
        except ValueError:
            return None, None
        if len(raw) == 21 and raw[0] in (0x16, 0x96):
            return "qiniu", value
    return None, None


class _Verifier:
    """The hash of what arrived, of the kind the ETag names; it also owns the read buffers.

    A big body is hashed on a thread of its own (hashlib lets go of the GIL), so hashing
    overlaps the network and the disk instead of adding to them: the body is read straight
    into 4 MiB batch buffers, each handed whole to the thread once full, with at most ``depth``
    queued (no copy, and memory bounded at (depth + 1) x 4 MiB per download). Anything else is
    read into one reused buffer and hashed inline. A deep queue absorbs the moments the hash
    thread waits for a core (two cores, shared with the server and everyone else, measured:
    depth 1: 440 MB/s, 2: 470, 4: 490, 8: 610).
    """

    BATCH = 4 << 20
    DEPTH = 8

    def __init__(self, etag: str | None, enabled: bool, threaded: bool = False, depth: int = DEPTH) -> None:
        self.kind, self.expected = etag_kind(etag) if enabled else (None, None)
        self.depth = max(1, depth)
        # One worker: the batches of one hash must go in order.
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="ava-fetch-hash") if threaded and self.kind else None
        self.queued: collections.deque[tuple[Future[None], bytearray]] = collections.deque()
        self.free: list[bytearray] = []
        self.plain = bytearray()
        self.reset()

    def reset(self) -> None:
        self._wait()
        self.cur: bytearray | None = None
        self.pos = 0
        self.hash: Any = None
        if self.kind == "md5":
            self.hash = hashlib.md5(usedforsecurity=False)
        elif self.kind == "qiniu":
            self.hash = _QiniuEtag()

    def buffer(self, want: int) -> memoryview:
        """Where the next read of at most ``want`` bytes goes."""
        if self.worker is None:
            if len(self.plain) < want:
                self.plain = bytearray(want)
            return memoryview(self.plain)[:want]
        if self.cur is None:
            if self.free:
                self.cur = self.free.pop()
            elif len(self.queued) < self.depth:
                self.cur = bytearray(self.BATCH)
            else:
                fut, self.cur = self.queued.popleft()
                fut.result()
        return memoryview(self.cur)[self.pos:self.pos + min(want, self.BATCH - self.pos)]

    def filled(self, data: memoryview) -> None:
        """``data`` (from :meth:`buffer`) is in the file: hash it."""
        if self.hash is None:
            return
        if self.worker is None:
            self.hash.update(data)
            return
        self.pos += len(data)
        if self.pos >= self.BATCH:
            self._submit()

    def _submit(self) -> None:
        if self.cur is None or not self.pos:
            return
        buf, pos = self.cur, self.pos
        self.cur, self.pos = None, 0
        self.queued.append((self.worker.submit(self.hash.update, memoryview(buf)[:pos]), buf))  # type: ignore[union-attr]

    def _wait(self) -> None:
        while self.queued:
            fut, buf = self.queued.popleft()
            self.free.append(buf)
            fut.result()

    def mismatch(self) -> str | None:
        if self.hash is None:
            return None
        if self.worker is not None:
            self._submit()
            self._wait()
        got = self.hash.hexdigest()
        return None if got == self.expected else f"{self.kind} {got} differs from the ETag {self.expected}"

    def close(self) -> None:
        try:
            self._wait()
        except Exception:  # the hash of a download being thrown away does not matter
            pass
        if self.worker is not None:
            self.worker.shutdown(wait=False)
        self.free.clear()


# --- one file's download ------------------------------------------------------------------
class _Abort(Exception):
    """A write to the temp file failed: stop reading and drop the connection."""


class _Transfer:
    """The temp file, the offset reached and the hash so far of one download."""

    def __init__(self, target: Path, progress: ProgressCallback | None, verify: bool, depth: int) -> None:
        self.target = target
        self.depth = depth
        self.progress = progress
        self.verify = verify
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.fchmod(fd, new_file_mode(target))
        self.fd: int | None = fd
        self.tmp = Path(tmp)
        self.offset = 0
        self.high = 0  # the furthest offset any attempt reached: progress is going past it
        self.total: int | None = None
        self.etag: str | None = None
        self.verifier = _Verifier(None, False)
        self.write_error: OSError | None = None
        # per attempt
        self.writing = False
        self.bad: str | None = None
        self.error_body = bytearray()

    def begin(self) -> None:
        self.writing, self.bad = False, None
        self.error_body = bytearray()

    def restart(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.offset = 0
        self.verifier.reset()
        if self.progress:
            self._report(0)

    def _report(self, done: int) -> None:
        """Tell the progress callback; one that raises is said once and dropped, never the download."""
        try:
            self.progress(done, self.total)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - the caller's callback
            log.warning("progress callback %r failed (%s: %s); the download goes on without it (it is called "
                        "as callback(bytes_done, total_bytes_or_None))", self.progress, type(exc).__name__, exc)
            self.progress = None

    def accept(self, code: int, h: HTTPHeaders) -> None:
        """Decide from the status and headers whether the body goes into the file."""
        if code == 200:
            if self.offset:  # the server ignored Range, or the object changed (If-Range)
                self.restart()
            length = h.get("Content-Length", "")
            self.total = int(length) if length.isdigit() else None
            self.etag = h.get("ETag")
            # A small body is hashed inline: a thread hand-off would cost more than it saves.
            big = self.total is None or self.total > 4 * _Verifier.BATCH
            self.verifier.close()
            self.verifier = _Verifier(self.etag, self.verify, threaded=big, depth=self.depth)
            self.writing = True
        elif code == 206:
            m = _CONTENT_RANGE.match(h.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != self.offset:
                self.bad = f"a 206 reply with Content-Range {h.get('Content-Range')!r} for offset {self.offset}"
                return
            total = None if m.group(3) == "*" else int(m.group(3))
            if total is not None and self.total is not None and total != self.total:
                self.bad = f"the object's size changed from {self.total} to {total} bytes"
                return
            self.total = total if total is not None else self.total
            self.writing = True

    def buffer(self, want: int) -> memoryview:
        return self.verifier.buffer(want)

    def feed(self, data: memoryview) -> None:
        """Write ``data`` (read into :meth:`buffer`, or an error page's bytes) where it belongs."""
        if not self.writing:
            self.error_body += data[:512 - len(self.error_body)]
            return
        view = data
        try:
            while len(view):
                view = view[os.write(self.fd, view):]  # type: ignore[arg-type]
        except OSError as exc:
            self.write_error = exc
            raise _Abort() from exc
        self.offset += len(data)
        self.verifier.filled(data)
        if self.progress:
            self._report(self.offset)

    def disk_error(self, url: str) -> StorageError:
        exc = self.write_error
        assert exc is not None
        hint = " (is the disk full?)" if exc.errno in _DISK_FULL else ""
        err = StorageError(f"cannot write {self.target} while fetching {redact(url)}: "
                           f"{exc.strerror or exc}{hint} after {self.offset} bytes; the partial "
                           f"download was removed and {self.target} left as it was")
        err.errno = exc.errno
        return err

    def commit(self, fsync: bool) -> None:
        assert self.fd is not None
        self.verifier.close()
        try:
            if fsync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.replace(self.tmp, self.target)
        except OSError as exc:
            self.write_error = exc
            raise

    def discard(self) -> None:
        self.verifier.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, HTTPClientError):
        return exc.code == 599 or exc.code in _RETRY_STATUS
    if isinstance(exc, (tornado.iostream.StreamClosedError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, OSError)


def _discard_opened(opening: Future[_Transfer]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().discard()


def _settle(step: Future[Any], then: Callable[[Future[Any]], Any]) -> None:
    """A download was cancelled while ``step`` (a file operation of milliseconds on the file
    thread) was queued or under way: stop it if it has not begun, else wait for it, then
    ``then(step)``, so nothing is left behind by the time the cancel is seen."""
    if not step.cancel():
        concurrent.futures.wait([step])
    then(step)
