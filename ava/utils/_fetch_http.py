"""The raw HTTP/1.1 GET of a download on tornado's ``TCPClient``/``IOStream``: redirects, an
idle watchdog, and the body read into reused buffers and handed to a ``_Transfer``."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from typing import Any, Callable
from urllib.parse import unquote, urljoin, urlsplit

import tornado.httputil
import tornado.iostream
from tornado.httputil import HTTPHeaders
from tornado.tcpclient import TCPClient

from ava.utils._fetch_names import redact
from ava.utils._fetch_transfer import _Transfer


class _Fatal(Exception):
    """A download failure no retry can cure (a redirect to ftp://, too many redirects...)."""


_BUF = 1 << 20
_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5
_HEAD_END = re.compile(rb"\r?\n\r?\n")


async def _http_get(tcp: TCPClient, url: str, headers: dict[str, str], tr: _Transfer, *, connect_timeout: float,
                    idle_timeout: float, ssl_context: Callable[[], ssl.SSLContext]) -> tuple[int, str, HTTPHeaders]:
    """GET ``url`` on a new connection (following redirects), the body read straight into a
    reused buffer and handed to ``tr.feed``; returns (status, reason, headers).

    tornado's HTTP client hands the body over in fresh 64 KiB ``bytes`` objects, copied three
    times on the way; reading into one buffer with ``IOStream.read_into`` costs a fifth of its
    CPU, which is what keeps up with curl. Small requests still use tornado's client.
    """
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Fatal(f"{redact(url)!r} is not an http(s) URL")
        https = parts.scheme == "https"
        try:
            stream = await tcp.connect(parts.hostname, parts.port or (443 if https else 80),
                                       ssl_options=ssl_context() if https else None, timeout=connect_timeout,
                                       max_buffer_size=4 * _BUF)
        except tornado.iostream.StreamClosedError as exc:  # its cause says why: refused, unreachable...
            raise exc.real_error or exc from None
        loop = asyncio.get_running_loop()
        state = {"last": loop.time(), "idle": False}

        def watchdog() -> None:
            if stream.closed():
                return
            if loop.time() - state["last"] >= idle_timeout:
                state["idle"] = True
                stream.close()  # the pending read fails; the caller resumes with Range
            else:
                handle[0] = loop.call_later(max(0.05, idle_timeout / 4), watchdog)

        handle = [loop.call_later(max(0.05, idle_timeout / 4), watchdog)]
        try:
            stream.set_nodelay(True)
            host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
            lines = [f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                     f"Host: {host}", "Connection: close", "Accept-Encoding: identity", "User-Agent: ava-sdk"]
            if parts.username:
                token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
                headers = {"Authorization": f"Basic {token}", **headers}
            lines += [f"{k}: {v}" for k, v in headers.items()]
            await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            while True:  # skip 1xx interim replies
                head = (await stream.read_until_regex(_HEAD_END, max_bytes=64 << 10)).decode("latin-1")
                first, _, rest = head.lstrip("\r\n").partition("\n")
                start = tornado.httputil.parse_response_start_line(first.strip())
                if not 100 <= start.code < 200:
                    break
            resp_headers = HTTPHeaders.parse(rest)
            state["last"] = loop.time()
            if start.code in _REDIRECTS and resp_headers.get("Location"):
                new_url = urljoin(url, resp_headers["Location"])
                if urlsplit(new_url).netloc != parts.netloc:
                    headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
                url = new_url
                continue
            tr.accept(start.code, resp_headers)
            await _read_body(stream, resp_headers, tr, state, loop)
            return start.code, start.reason, resp_headers
        except tornado.iostream.StreamClosedError as exc:
            if state["idle"]:
                raise TimeoutError(f"no data for {idle_timeout:g} s") from None
            raise exc.real_error or exc from None
        finally:
            handle[0].cancel()
            stream.close()
    raise _Fatal(f"more than {_MAX_REDIRECTS} redirects")


async def _read_body(stream: tornado.iostream.IOStream, headers: HTTPHeaders, tr: _Transfer, state: dict[str, Any],
                     loop: asyncio.AbstractEventLoop) -> None:
    length = headers.get("Content-Length", "")
    if not tr.writing:  # an error page: its first lines are enough
        if length != "0":
            try:
                tr.feed(memoryview(await stream.read_bytes(512, partial=True)))
            except tornado.iostream.StreamClosedError:
                pass
        return
    chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()

    async def copy(n: int | None) -> None:
        """Feed ``n`` bytes (None: until the connection closes)."""
        while n is None or n > 0:
            view = tr.buffer(_BUF if n is None else min(_BUF, n))
            try:
                got = await stream.read_into(view, partial=True)
            except tornado.iostream.StreamClosedError:
                if n is None:
                    return
                raise
            state["last"] = loop.time()
            tr.feed(view[:got])
            if n is not None:
                n -= got

    if chunked:
        while True:
            line = await stream.read_until(b"\r\n", max_bytes=1024)
            n = int(line.split(b";")[0].strip() or b"0", 16)
            if n == 0:
                while (await stream.read_until(b"\r\n", max_bytes=64 << 10)).strip():  # trailers
                    pass
                return
            await copy(n)
            await stream.read_bytes(2)
    elif length.isdigit():
        await copy(int(length))
    else:
        await copy(None)
