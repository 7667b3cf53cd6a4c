"""Delivery of the metric record to the platform's HTTP endpoint, losing nothing.

The sink does not keep records in memory: it tails the durable ``metrics.jsonl`` from a
persisted offset (``metrics.jsonl.http-offset``), so an endpoint that is down for the whole run
loses nothing, and delivery resumes when the endpoint comes back or when the instance is
resumed by a new process. Each batch is one POST of line protocol to
``<host>/v1/report/trainings/<id>/metric``; the offset moves only after a 2xx. Failures are
retried with exponential backoff and full jitter (honouring ``Retry-After``). A batch refused
as bad (400, 413, 422) is split in halves until the records the server refuses are found: each
of those is skipped with an error naming its ``seq`` (it stays in ``metrics.jsonl``) and the rest
is delivered, so one bad record never stops the others. Any other 4xx (authentication, a wrong
URL) is reported once and stops delivery for this process, the records staying on disk.
The training thread never waits on any of this.

Example:
    >>> sink = HttpSink("http://127.0.0.1:9", "run-1", "/tmp/ava-doc-metrics.jsonl")  # doctest: +SKIP
    >>> sink.wait(timeout=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ava.errors import ConfigError
from ava.metrics.sinks.base import Sink
from ava.platform.lineproto import encode_json_lines
from ava.utils.fileio import atomic_write_text
from ava.utils.tls import ssl_context, tls_verify, warn_plain_http

log = logging.getLogger(__name__)

OFFSET_SUFFIX = ".http-offset"
_READ_CHUNK = 4 << 20
_LOG_EVERY = 60.0


def parse_base_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of an endpoint base URL; ConfigError when unusable."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"status host {url!r} is not a URL ({exc}); set AVA_STATUS_HOST to http(s)://host[:port]") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"status host {url!r} is not an http(s) URL; set AVA_STATUS_HOST to http(s)://host[:port]")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), parts.path.rstrip("/")


class _Timeouts:
    """Separate connect and read timeouts for an http.client connection class."""

    def __init__(self, host: str, port: int, connect_timeout: float, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(host, port, timeout=connect_timeout, **kwargs)  # type: ignore[call-arg]
        self.read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.read_timeout)  # type: ignore[attr-defined]


class _Connection(_Timeouts, http.client.HTTPConnection):
    pass


class _TLSConnection(_Timeouts, http.client.HTTPSConnection):
    pass


class _Refused(Exception):
    """The server answered a 4xx that retrying will not fix."""

    def __init__(self, why: str, status: int = 0) -> None:
        super().__init__(why)
        self.status = status


_BAD_RECORDS = (400, 413, 422)  # refusals of what was sent, not of who sent it or where
_ALL_REFUSED = 3  # single records refused, none accepted: the server refuses everything


class _Retry(Exception):
    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


def _seq_of(line: str) -> str:
    """``seq N`` of a ``metrics.jsonl`` line, for messages (the line's head when it has none)."""
    try:
        return f"seq {json.loads(line)['seq']}"
    except (ValueError, KeyError, TypeError):
        return repr(line[:80])


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpSink(Sink):
    """Deliver ``metrics.jsonl`` to the platform's metric endpoint from a daemon thread.

    Args:
        base_url: the status host (``AVA_STATUS_HOST``).
        instance_id: the training instance id (in the URL and the ``id`` tag).
        jsonl_path: the durable record to read.
        batch_records: records per POST at most.
        connect_timeout: seconds to connect.
        read_timeout: seconds to wait for an answer.
        max_backoff: the longest pause between retries.
        env: an ``ava.env.Env`` for ``AVA_TLS_VERIFY`` (the process's environment by default).

    Certificates of an ``https://`` host are verified unless ``AVA_TLS_VERIFY=0``; a plain
    ``http://`` host that is not loopback is warned about once. The offset file is created 0600
    (it names the endpoint, which may carry credentials).
    """

    wants_records = False  # it tails metrics.jsonl; the records handed to write() are not read

    def __init__(self, base_url: str, instance_id: str, jsonl_path: Path | str, *, batch_records: int = 10_000,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, max_backoff: float = 30.0,
                 env: Any = None) -> None:
        scheme, host, port, prefix = parse_base_url(base_url)
        warn_plain_http(base_url, "the metric endpoint")
        self.base_url = base_url
        self.instance_id = instance_id
        self.path = f"{prefix}/v1/report/trainings/{quote(instance_id, safe='')}/metric"
        self.jsonl_path = Path(jsonl_path)
        self.offset_path = self.jsonl_path.with_name(self.jsonl_path.name + OFFSET_SUFFIX)
        self._conn_args = (host, port, connect_timeout, read_timeout)
        self._conn_cls = _TLSConnection if scheme == "https" else _Connection
        self._conn_kwargs: dict[str, Any] = {"context": ssl_context(tls_verify(env))} if scheme == "https" else {}
        self._conn: http.client.HTTPConnection | None = None
        self._batch = batch_records
        self._max_backoff = max_backoff
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self.offset = self._load_offset()
        self.delivered = 0
        self.refused = False
        self.skipped = 0  # records the server refused one by one (left out of delivery)
        self._accepted = False  # the server took a batch in this process: it is not refusing everything
        self._failing_since: float | None = None
        self._last_fail_log = 0.0
        self._thread = threading.Thread(target=self._run, name="ava-metrics-http", daemon=True)
        self._thread.start()

    # --- Sink ---------------------------------------------------------------------------
    def write(self, records: list[dict[str, Any]]) -> None:
        self._wake.set()  # the records are in metrics.jsonl already

    def close(self) -> None:
        """Called by the writer at its end: deliver what is left (see :meth:`wait`), don't block."""
        self._wake.set()

    # --- control ------------------------------------------------------------------------
    def backlog_bytes(self) -> int:
        """Bytes of ``metrics.jsonl`` not yet delivered."""
        try:
            return max(0, self.jsonl_path.stat().st_size - self.offset)
        except OSError:
            return 0

    def wait(self, timeout: float) -> bool:
        """Wait until everything in ``metrics.jsonl`` now is delivered; False on timeout or refusal."""
        target = self.jsonl_path.stat().st_size if self.jsonl_path.exists() else 0
        deadline = time.monotonic() + max(0.0, timeout)
        self._wake.set()
        with self._cond:
            while self.offset < target and not self.refused and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return self.offset >= target

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (the offset is already saved); safe to call twice.

        A request in flight is cut off by shutting its socket down (a server that stalls, or
        trickles its answer a byte at a time, would otherwise hold the caller, ``done()``, for
        as long as it likes); what it carried is sent again by the next process, and the server
        drops duplicates. The connection is closed by the thread itself: closing it from here
        would wait for the lock of the response the thread is reading.
        """
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            sock = getattr(self._conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._thread.join(timeout)
        elif self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the delivery thread ------------------------------------------------------------
    def _load_offset(self) -> int:
        try:
            doc = json.loads(self.offset_path.read_text())
            offset = int(doc["offset"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; delivering %s from the start (the server drops duplicates)",
                        self.offset_path, self.jsonl_path.name)
            return 0
        if offset < 0:
            log.warning("%s holds a negative offset; delivering %s from the start", self.offset_path,
                        self.jsonl_path.name)
            return 0
        if isinstance(doc, dict) and doc.get("url") not in (None, self.base_url):
            log.info("%s was delivered to %s; delivering it from the start to %s", self.jsonl_path.name,
                     doc.get("url"), self.base_url)
            return 0
        size = self.jsonl_path.stat().st_size if self.jsonl_path.exists() else 0
        if offset > size:
            log.warning("%s points past the end of %s; delivering from the start", self.offset_path, self.jsonl_path.name)
            return 0
        if offset > 0:
            with open(self.jsonl_path, "rb") as fh:
                fh.seek(offset - 1)
                if fh.read(1) != b"\n":  # not at a line start: resend from the start of that line
                    fh.seek(0)
                    head = fh.read(offset)
                    offset = head.rfind(b"\n") + 1
        return offset

    def _save_offset(self) -> None:
        atomic_write_text(self.offset_path, json.dumps({"offset": self.offset, "url": self.base_url}) + "\n",
                          mode=0o600)

    def _prepare(self, offset: int) -> tuple[bytes, int, int, list[str]] | None:
        """(request body, lines in it, offset after them, the lines) for whole lines from ``offset``."""
        try:
            with open(self.jsonl_path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read(_READ_CHUNK)
        except FileNotFoundError:
            return None
        end = chunk.rfind(b"\n")
        if end < 0:
            return self._skip_long_line(offset) if len(chunk) == _READ_CHUNK else None
        lines = chunk[:end].split(b"\n", self._batch)
        if len(lines) > self._batch:
            lines.pop()  # the rest of the chunk: the next batch
        size = sum(map(len, lines)) + len(lines)
        # "\n" is never inside a UTF-8 sequence, so decoding once and splitting again is safe.
        text = b"\n".join(lines).decode("utf-8", "replace").split("\n")
        return self._encode(text, offset), len(lines), offset + size, text

    def _skip_long_line(self, offset: int) -> tuple[bytes, int, int, list[str]] | None:
        """A line longer than a read (an event with megabytes of details: events are not sent)
        is stepped over whole, so the records after it are delivered; None until it ends."""
        pos = offset + _READ_CHUNK
        with open(self.jsonl_path, "rb") as fh:
            fh.seek(pos)
            while True:
                block = fh.read(_READ_CHUNK)
                if not block:
                    return None  # still being written
                nl = block.find(b"\n")
                if nl >= 0:
                    end = pos + nl + 1
                    break
                pos += len(block)
        log.warning("a line of %d bytes at byte %d of %s is too long to deliver; skipped, it stays there",
                    end - offset, offset, self.jsonl_path.name)
        return b"", 0, end, []

    def _encode(self, lines: list[str], offset: int) -> bytes:
        """Line protocol for ``lines`` (read from ``offset``), leaving out any it cannot read."""
        try:
            return encode_json_lines(lines, self.instance_id)
        except ValueError:
            return self._encode_skipping_bad(lines, offset)

    def _encode_skipping_bad(self, lines: list[str], offset: int) -> bytes:
        parts = []
        for line in lines:
            try:
                parts.append(encode_json_lines([line], self.instance_id))
            except ValueError:
                log.warning("skipping an unreadable line of %s after byte %d", self.jsonl_path.name, offset)
        return b"".join(parts)

    def _run(self) -> None:
        said = -_LOG_EVERY
        try:
            while not self._stop.is_set():
                try:
                    self._deliver()
                    return
                except Exception as exc:  # noqa: BLE001 - the thread must not die: records would wait for good
                    if time.monotonic() - said > _LOG_EVERY:  # once a minute while it lasts
                        said = time.monotonic()
                        log.error("metric delivery to %s: unexpected %s: %s; trying again every 5 s, nothing is lost",
                                  self.base_url, type(exc).__name__, exc, exc_info=True)
                    self._stop.wait(5.0)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _deliver(self) -> None:
        """Deliver until stopped or refused (see the module's docstring)."""
        attempt = 0
        batch: tuple[bytes, int, int, list[str]] | None = None
        while not self._stop.is_set():
            if batch is None:
                batch = self._prepare(self.offset)
                if batch is None:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
            body, count, new_offset, text = batch
            following: tuple[bytes, int, int, list[str]] | None = None
            try:
                if body:
                    self._send(body)
                    # Pipelining: read and encode the next batch while the server handles this one.
                    following = self._prepare(new_offset)
                    try:
                        self._receive()
                    except _Refused as exc:
                        if exc.status not in _BAD_RECORDS:
                            raise
                        following = None
                        self._deliver_isolating(text, exc)
            except _Refused as exc:
                self.refused = True
                log.error("the metric endpoint %s refused the records (%s); stopping delivery for this process, "
                          "the records stay in %s", self.base_url, exc, self.jsonl_path)
                with self._cond:
                    self._cond.notify_all()
                return
            except _Retry as exc:
                if self._stop.is_set():  # stop() cut the request: done() has said what is left
                    return
                attempt += 1
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                if now - self._last_fail_log > _LOG_EVERY or attempt == 1:
                    log.warning("metric delivery to %s failed (%s); retrying, nothing is lost (%d bytes waiting)",
                                self.base_url, exc, self.backlog_bytes())
                    self._last_fail_log = now
                delay = random.uniform(0, min(self._max_backoff, 0.1 * 2 ** min(attempt, 20)))
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self._max_backoff * 4))
                self._stop.wait(delay)
                continue  # the same batch again
            if self._failing_since is not None:
                log.info("metric delivery to %s works again after %.1f s", self.base_url,
                         time.monotonic() - self._failing_since)
                self._failing_since = None
            attempt = 0
            self.delivered += count
            self.offset = new_offset
            batch = following
            try:
                self._save_offset()
            except OSError as exc:
                log.warning("cannot save %s: %s (a restart may resend; the server drops duplicates)", self.offset_path, exc)
            with self._cond:
                self._cond.notify_all()

    def _deliver_isolating(self, lines: list[str], first: _Refused) -> None:
        """Deliver ``lines`` in ever smaller parts after the server refused them together: a
        single line it refuses is skipped with an error. When the first few single lines are all
        refused and nothing was accepted, it is the server refusing everything, not a bad record:
        ``first`` is raised (delivery stops, nothing is skipped). Raises what a part raises
        otherwise (:class:`_Retry`: the whole batch is sent again later; the server drops the
        duplicates)."""
        log.warning("the metric endpoint %s refused a batch of %d records (%s); looking for the records it "
                    "refuses", self.base_url, len(lines), first)
        parts = [lines[: len(lines) // 2], lines[len(lines) // 2:]] if len(lines) > 1 else [lines]
        accepted = 0
        refused: list[str] = []
        while parts:
            part = parts.pop(0)
            body = self._encode(part, self.offset) if part else b""
            if not body:
                continue
            try:
                self._send(body)
                self._receive()
                accepted += len(part)
            except _Refused as exc:
                if exc.status not in _BAD_RECORDS:
                    raise
                if len(part) > 1:
                    half = len(part) // 2
                    parts[:0] = [part[:half], part[half:]]
                    continue
                refused.append(part[0])
                # Nothing accepted in this batch: the server may refuse everything. Only a batch too
                # small to tell (a lone record) is judged by what the server took before.
                lone = len(lines) < _ALL_REFUSED and self._accepted
                if not accepted and not lone and len(refused) >= min(_ALL_REFUSED, len(lines)):
                    raise first from None
        for line in refused:
            log.error("the metric endpoint %s refused the record %s; skipped, it stays in %s",
                      self.base_url, _seq_of(line), self.jsonl_path)
        self.skipped += len(refused)

    def _fail(self, exc: BaseException) -> _Retry:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        if isinstance(exc, socket.gaierror):
            return _Retry(f"cannot resolve the host: {exc}")
        return _Retry(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    def _send(self, body: bytes) -> None:
        if self._conn is None:
            self._conn = self._conn_cls(*self._conn_args, **self._conn_kwargs)
        try:
            self._conn.request("POST", self.path, body=body, headers={"Content-Type": "text/plain; charset=utf-8"})
        except (OSError, http.client.HTTPException) as exc:
            raise self._fail(exc) from None

    def _receive(self) -> None:
        assert self._conn is not None
        try:
            resp = self._conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._fail(exc) from None
        if 200 <= resp.status < 300:
            self._accepted = True
            if resp.will_close:
                self._conn.close()
                self._conn = None
            return
        self._conn.close()
        self._conn = None
        if resp.status in (408, 429) or resp.status >= 500:
            raise _Retry(f"HTTP {resp.status} {resp.reason}", _retry_after(resp.getheader("Retry-After")))
        moved = resp.getheader("Location") if 300 <= resp.status < 400 else None
        raise _Refused(f"HTTP {resp.status} {resp.reason}" + (f" to {moved}; set AVA_STATUS_HOST to the new place"
                                                             if moved else ""), resp.status)
