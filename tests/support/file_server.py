"""A tornado file server on 127.0.0.1 for the Fetcher's tests and benchmarks.

It serves a directory with ``Range`` (one range per request), ``If-Range`` and an ``ETag`` that
is the file's MD5 hex (or its Qiniu etag, or none), and injects faults on request: drop the
connection after N body bytes for the first K requests, answer 500 (or any status), wait before
the headers (time to first byte) or between body chunks (slow bodies), announce a wrong
``Content-Length`` or none at all (a chunked body). ``/redirect/PATH`` answers 302 to ``/PATH``.
It counts requests and body bytes, so a test can tell a resumed download
from a restarted one.

In a test (the server runs on a daemon thread with its own event loop)::

    with FileServer(tmp_path) as srv:
        srv.faults.drop_after, srv.faults.drop_count = 1000, 2
        Fetcher().fetch_huge_file(srv.url_for("a.bin"), tmp_path / "out.bin")
        assert srv.stats.body_bytes == (tmp_path / "a.bin").stat().st_size

As a process (benchmarks), printing its base URL on the first line of stdout::

    python tests/support/file_server.py ROOT [--latency SECONDS] [--etag md5|qiniu|none]

``?latency=SECONDS`` and ``?etag=KIND`` on a request override those two for that request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import tornado.httpserver
import tornado.ioloop
import tornado.iostream
import tornado.netutil
import tornado.web

CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Faults:
    """What to break; a test changes the fields between (or during) downloads."""

    drop_after: int | None = None  # close the connection after this many body bytes...
    drop_count: int = 0  # ...on this many GET requests, then serve normally
    stall: float = 0.0  # at drop_after, first go silent this many seconds (a stalled connection)
    fail_count: int = 0  # answer this many requests with fail_status first
    fail_status: int = 500
    latency: float = 0.0  # seconds before the response headers (a store's time to first byte)
    chunk_delay: float = 0.0  # seconds between body chunks (a slow body)
    chunk_size: int = CHUNK
    length_delta: int = 0  # announce Content-Length off by this much, send the real body, close
    etag: str = "md5"  # "md5", "qiniu" or "none"
    accept_ranges: bool = True  # False: ignore Range and always send the whole file
    chunked: bool = False  # send no Content-Length: the body goes chunked


@dataclass
class RequestLog:
    method: str
    path: str
    range: str | None
    status: int = 0
    sent: int = 0


@dataclass
class Stats:
    requests: list[RequestLog] = field(default_factory=list)
    body_bytes: int = 0

    def gets(self, path: str | None = None) -> list[RequestLog]:
        return [r for r in self.requests if r.method == "GET" and (path is None or r.path == path)]


def qiniu_etag_of(path: Path) -> str:
    """Qiniu's etag: SHA-1 of each 4 MiB block, prefixed 0x16 for one block, else 0x96 + SHA-1 of them."""
    blocks = []
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            blocks.append(hashlib.sha1(block).digest())
    if not blocks:
        blocks = [hashlib.sha1(b"").digest()]
    data = b"\x16" + blocks[0] if len(blocks) == 1 else b"\x96" + hashlib.sha1(b"".join(blocks)).digest()
    return base64.urlsafe_b64encode(data).decode()


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _parse_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """(start, end inclusive); None when unsatisfiable; False when not a single byte range."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return False
    if not m.group(1):  # the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n and size else None
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class _FileHandler(tornado.web.RequestHandler):
    def initialize(self, server: FileServer) -> None:
        self.srv = server

    async def head(self, path: str) -> None:
        await self._serve(path, head=True)

    async def get(self, path: str) -> None:
        await self._serve(path, head=False)

    async def _serve(self, path: str, head: bool) -> None:
        srv, faults, stats = self.srv, self.srv.faults, self.srv.stats  # reset() does not reach running requests
        log = RequestLog(self.request.method or "GET", path, self.request.headers.get("Range"))
        stats.requests.append(log)
        # ?latency=S and ?etag=KIND override the faults for one request (benchmarks use one server).
        latency = float(self.get_query_argument("latency", str(faults.latency)))
        if latency:
            await asyncio.sleep(latency)
        with srv.lock:
            fail = faults.fail_count > 0
            if fail:
                faults.fail_count -= 1
        if fail:
            log.status = faults.fail_status
            self.set_status(faults.fail_status)
            self.finish("injected failure\n")
            return
        if path.startswith("redirect/"):  # /redirect/x -> 302 to /x
            log.status = 302
            self.redirect("/" + path[len("redirect/"):], status=302)
            return
        file = srv.resolve(path)
        if file is None:
            log.status = 404
            self.set_status(404)
            self.finish("no such file\n")
            return
        size = file.stat().st_size
        etag = await srv.etag_of(file, self.get_query_argument("etag", faults.etag))
        quoted = f'"{etag}"' if etag else None
        start, end, status = 0, size - 1, 200
        rng, if_range = self.request.headers.get("Range"), self.request.headers.get("If-Range")
        if rng and faults.accept_ranges and (if_range is None or if_range == quoted):
            parsed = _parse_range(rng, size)
            if parsed is None:
                log.status = 416
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{size}")
                self.finish()
                return
            if parsed:
                start, end = parsed
                status = 206
        length = max(0, end - start + 1)
        log.status = status
        self.set_status(status)
        self.set_header("Content-Type", "application/octet-stream")
        if faults.accept_ranges:
            self.set_header("Accept-Ranges", "bytes")
        if quoted:
            self.set_header("ETag", quoted)
        if status == 206:
            self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        if not faults.chunked:
            self.set_header("Content-Length", str(max(0, length + faults.length_delta)))
        if head:
            self.finish()
            return
        limit = length
        with srv.lock:
            if faults.drop_after is not None and faults.drop_count > 0:
                faults.drop_count -= 1
                limit = min(length, faults.drop_after)
        cut = limit < length or faults.length_delta != 0
        if faults.length_delta < 0:
            limit = min(limit, length + faults.length_delta)
        try:
            await self.flush()  # the headers go out even when no body byte will
            with open(file, "rb") as fh:
                fh.seek(start)
                left = limit
                while left > 0:
                    chunk = fh.read(min(faults.chunk_size, left))
                    if not chunk:
                        break
                    self.write(chunk)
                    left -= len(chunk)
                    log.sent += len(chunk)
                    stats.body_bytes += len(chunk)  # counted before the client can have it all
                    await self.flush()
                    if faults.chunk_delay and left:
                        await asyncio.sleep(faults.chunk_delay)
        except (tornado.iostream.StreamClosedError, asyncio.CancelledError):
            self._finished = True  # the client left, or the server stops: nothing to answer
            return
        if cut:
            if limit < length and faults.stall:
                try:
                    await asyncio.sleep(faults.stall)
                except asyncio.CancelledError:  # the server stops
                    pass
            self.request.connection.stream.close()  # type: ignore[union-attr]
            self._finished = True  # nothing more can be sent; keep tornado from trying
            return
        self.finish()


class FileServer:
    """Serve ``root`` on 127.0.0.1 (an OS-chosen port) from a daemon thread.

    Args:
        root: the directory to serve.
        faults: initial faults (``srv.faults`` can be changed later).
        ssl_context: serve https with this ``ssl.SSLContext``.
    """

    def __init__(self, root: Path | str, faults: Faults | None = None, ssl_context: Any = None) -> None:
        self.root = Path(root).resolve()
        self.ssl_context = ssl_context
        self.faults = faults or Faults()
        self.stats = Stats()
        self.lock = threading.Lock()
        self.url = ""
        self._etags: dict[tuple[str, str, int, int], str] = {}
        self._loop: tornado.ioloop.IOLoop | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- files -------------------------------------------------------------------------
    def resolve(self, path: str) -> Path | None:
        candidate = (self.root / unquote(path)).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    async def etag_of(self, file: Path, kind: str) -> str | None:
        if kind not in ("md5", "qiniu"):
            return None
        st = file.stat()
        key = (kind, str(file), st.st_size, st.st_mtime_ns)
        if key not in self._etags:
            fn = md5_of if kind == "md5" else qiniu_etag_of
            self._etags[key] = await asyncio.get_running_loop().run_in_executor(None, fn, file)
        return self._etags[key]

    def url_for(self, relpath: str) -> str:
        return f"{self.url}/{quote(relpath)}"

    def reset(self) -> None:
        """Forget the counters and every fault."""
        with self.lock:
            self.faults = Faults()
            self.stats = Stats()

    # --- lifecycle ---------------------------------------------------------------------
    def _listen(self) -> None:
        # No access log: injected 500s and 404s are the point, not news.
        app = tornado.web.Application([(r"/(.*)", _FileHandler, {"server": self})], log_function=lambda h: None)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._server = tornado.httpserver.HTTPServer(app, ssl_options=self.ssl_context)
        self._server.add_sockets(sockets)
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{sockets[0].getsockname()[1]}"

    def start(self) -> FileServer:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(asyncio.new_event_loop())
            self._loop = tornado.ioloop.IOLoop.current()
            self._listen()
            ready.set()
            self._loop.start()
            self._loop.close(all_fds=True)

        self._thread = threading.Thread(target=run, name="file-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the file server did not start within 10 s")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        def shutdown() -> None:
            if self._server is not None:
                self._server.stop()
            for task in asyncio.all_tasks():  # handlers still stalling or sleeping
                task.cancel()
            loop.add_callback(loop.stop)  # after the cancelled handlers have unwound

        loop.add_callback(shutdown)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        self._loop = tornado.ioloop.IOLoop.current()
        self._listen()
        print(self.url, flush=True)
        try:
            self._loop.start()
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a directory on 127.0.0.1 (tests and benchmarks).")
    parser.add_argument("root")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each response's headers")
    parser.add_argument("--etag", choices=["md5", "qiniu", "none"], default="md5")
    args = parser.parse_args(argv)
    FileServer(args.root, Faults(latency=args.latency, etag=args.etag)).serve_forever()


if __name__ == "__main__":
    main()
