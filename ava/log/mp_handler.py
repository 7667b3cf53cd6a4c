"""Logging from many processes into one rotated file: :class:`MultiProcessingLogHandler`.

``MultiProcessingLogHandler`` is created once, in the process that owns the log file. That
process runs a listener thread behind a Unix socket (in a private 0700 directory); every other
process that logs through the handler (forked children, spawned children that received the
handler as an argument) formats its record itself and sends it as one length-prefixed frame over
its own connection. Only the owner writes the file and rotates it, one whole record at a time
under one lock (its own records directly, as ``FileHandler`` would: a line whose call returned
is in the file even if the process then dies by ``os._exit`` or a signal; the others' from the
listener thread), so no line is lost, torn or interleaved. A sender killed mid-frame loses only
that frame and cannot block the others (there is no lock shared between processes); a full
socket makes the sender wait rather than drop.

It lives apart from :mod:`ava.log.logger` so that importing the logger (every ``import ava``)
does not import ``socket``, ``selectors``, ``shutil`` and ``tempfile``;
``from ava.log.logger import MultiProcessingLogHandler`` still works.

Example:
    >>> import logging, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "run.log")
    >>> handler = MultiProcessingLogHandler(path, maxBytes=1 << 20, backupCount=3)
    >>> log = logging.getLogger("doc-example"); log.addHandler(handler); log.setLevel(logging.INFO)
    >>> log.info("hello"); handler.close(); log.removeHandler(handler)
    >>> open(path).read()
    'hello\\n'
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ava.log.redact import RedactingFilter, known_secrets, redact_values, register_secret

__all__ = ["MultiProcessingLogHandler"]

_HEADER = struct.Struct("!I")
_RECV = 1 << 18
_DRAIN_SECONDS = 2.0
_ACCEPT_PAUSE = 0.1  # after accept() failed (no file descriptor free): try again this much later


def _open_private(path: str, truncate: bool = False) -> Any:
    """Open ``path`` to append (or truncate), created with mode 0600: a log may quote what a secret protects."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND) | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(path, flags, 0o600), "wb")


class _RotatingFile:
    """Binary append with size-based rotation, named as the standard library names it."""

    def __init__(self, path: str, mode: str, max_bytes: int, backup_count: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._fh: Any = _open_private(path, truncate=mode.startswith("w"))
        self.size = os.fstat(self._fh.fileno()).st_size
        self._rotate_failed = False
        self._rotate_at = max_bytes  # raised after a failed rotation: try again a max_bytes later

    def write(self, records: list[bytes]) -> None:
        if self._fh is None:  # a rotation could not reopen the file: try again (raises OSError if not yet)
            self._reopen()
        rotating = self.max_bytes > 0 and self.backup_count > 0
        batch: list[bytes] = []
        batch_size = 0
        for rec in records:
            if rotating and self.size + batch_size > 0 and self.size + batch_size + len(rec) > self._rotate_at:
                self._fh.write(b"".join(batch))
                batch, batch_size = [], 0
                self._rotate()
            batch.append(rec)
            batch_size += len(rec)
        self._fh.write(b"".join(batch))
        self._fh.flush()
        self.size += batch_size

    def _rotate(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        try:
            for i in range(self.backup_count - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
            self._rotate_failed = False
        except OSError as exc:  # the directory was removed or made read-only: start a new file if we can
            if not self._rotate_failed:  # said once, not at every record while the file stays too big
                self._rotate_failed = True
                sys.stderr.write(f"ava: cannot rotate log file {self.path}: {exc}; writing on\n")
        self._reopen()
        self._rotate_at = self.size + self.max_bytes if self._rotate_failed else self.max_bytes

    def _reopen(self) -> None:
        """Open the log file again, its directory re-created if it was removed; OSError if impossible."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._fh = _open_private(self.path)
        self.size = os.fstat(self._fh.fileno()).st_size

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class _Listener(threading.Thread):
    """The owner's thread: accepts connections, reads frames, writes whole records."""

    def __init__(self, sock_path: str, out: _RotatingFile) -> None:
        super().__init__(name="ava-log-listener", daemon=True)
        self._out = out
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(sock_path)
        self._server.listen(256)
        self._server.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._server, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        # The owner's threads write too (write()); re-entrant: a signal handler that logs while this
        # thread is in a write must not wait for itself (each nested write is still a whole record).
        self._write_lock = threading.RLock()
        self._write_failed = False
        self._accept_failed = False
        self._accept_again = 0.0  # while > 0: the server is out of the selector until then
        self.dropped_partial = 0

    def run(self) -> None:
        failed = False
        while not self._stopping:
            try:
                self._poll(1.0)
            except Exception as exc:  # noqa: BLE001 - every process's logging waits on this thread
                if not failed:
                    failed = True
                    sys.stderr.write(f"ava: log listener for {self._out.path}: {exc!r}; carrying on\n")
                time.sleep(0.05)
        deadline = time.monotonic() + _DRAIN_SECONDS
        while time.monotonic() < deadline and self._poll(0):
            pass
        for key in list(self._sel.get_map().values()):
            if key.data is not None:
                self._close_conn(key.fileobj)  # type: ignore[arg-type]
        self._sel.close()
        self._server.close()
        self._wake_r.close()
        self._wake_w.close()
        self._out.close()

    def _poll(self, timeout: float) -> bool:
        if self._accept_again:
            wait = self._accept_again - time.monotonic()
            if wait <= 0 or self._stopping:  # a connection waiting in the backlog is drained too
                self._accept_again = 0.0
                self._sel.register(self._server, selectors.EVENT_READ, None)
            else:
                timeout = min(timeout, wait)
        events = self._sel.select(timeout)
        records: list[bytes] = []
        for key, _ in events:
            if key.fileobj is self._server:
                self._accept()
            elif key.fileobj is self._wake_r:
                try:
                    self._wake_r.recv(64)
                except OSError:
                    pass
            else:
                self._read(key.fileobj, key.data, records)  # type: ignore[arg-type]
        if records:
            self.write(records)
        return bool(events)

    def write(self, records: list[bytes]) -> None:
        """Write whole records (each ending in a newline); on failure, to stderr. Never raises."""
        with self._write_lock:
            try:
                self._out.write(records)
                return
            except Exception as exc:  # noqa: BLE001 - logging must go on: every process's waits on this
                if not self._write_failed:
                    self._write_failed = True
                    sys.stderr.write(f"ava: cannot write log file {self._out.path}: {exc}; logging to stderr\n")
            sys.stderr.write(b"".join(records).decode("utf-8", "replace"))

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: the connection waits in the backlog
                if not self._accept_failed:
                    self._accept_failed = True
                    sys.stderr.write(f"ava: log listener for {self._out.path} cannot accept a connection "
                                     f"now ({exc}); trying again\n")
                self._sel.unregister(self._server)  # else select() reports it at once, again and again
                self._accept_again = time.monotonic() + _ACCEPT_PAUSE
                return
            conn.setblocking(False)
            self._sel.register(conn, selectors.EVENT_READ, bytearray())

    def _read(self, conn: socket.socket, buf: bytearray, records: list[bytes]) -> None:
        """Read what ``conn`` has; append the whole records it completes."""
        try:
            data = conn.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if buf:
                self.dropped_partial += 1  # a sender died mid-frame
            self._close_conn(conn)
            return
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            records.append(bytes(buf[pos + 4 : pos + 4 + n]) + b"\n")
            pos += 4 + n
        del buf[:pos]

    def _close_conn(self, conn: socket.socket) -> None:
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def stop(self, timeout: float) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.join(timeout)


class MultiProcessingLogHandler(logging.Handler):
    """A handler any number of processes can log through into one rotating file.

    Every record passes a :class:`~ava.log.redact.RedactingFilter` (secrets, tokens and signed
    URL parameters are masked) and the file is created with mode 0600.

    The process that creates it owns the file. Forked children inherit it and just use it;
    a spawned child receives it as an argument (it pickles into a sender on the same socket)
    and adds it to its logger. ``close()`` in the owner stops the listener thread after
    draining what was sent; in any other process it only closes that process's connection.

    Args:
        filename: the log file.
        mode: ``"a"`` (default: a resumed run keeps its earlier log) or ``"w"``.
        maxBytes: rotate before the file would exceed this size; 0 never rotates.
        backupCount: rotated files kept (``run.log.1`` ... ``run.log.N``); 0 never rotates.

    Example:
        >>> import multiprocessing, logging, tempfile, os
        >>> handler = MultiProcessingLogHandler(os.path.join(tempfile.mkdtemp(), "run.log"))
        >>> # spawn: multiprocessing.get_context("spawn").Process(target=work, args=(handler,))
        >>> # in work(handler): logging.getLogger().addHandler(handler)
        >>> handler.close()
    """

    def __init__(self, filename: str | os.PathLike[str], mode: str = "a", maxBytes: int = 0, backupCount: int = 10) -> None:
        super().__init__()
        self.addFilter(RedactingFilter())
        self.baseFilename = os.path.abspath(os.fspath(filename))
        self.maxBytes = maxBytes
        self.backupCount = backupCount
        self._owner_pid: int | None = os.getpid()
        self._listener: _Listener | None = None
        self._conn: socket.socket | None = None
        self._conn_pid: int | None = None
        self._fallback = False
        self._closed = True  # until the listener runs: close() at exit has nothing to do
        self._sock_dir: str | None = _socket_dir()
        self._address = os.path.join(self._sock_dir, "s")
        try:
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            self._listener = _Listener(self._address, _RotatingFile(self.baseFilename, mode, maxBytes, backupCount))
        except BaseException:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            raise
        self._closed = False
        self._listener.start()

    def __reduce__(self) -> tuple[Any, ...]:
        # The secrets this process masks go along: a spawned child has not read config/user,
        # nor seen what was registered here, and the listener writes what it is sent.
        return (_make_sender, (self._address, self.baseFilename, self.level, self.formatter, known_secrets()))

    @property
    def is_owner(self) -> bool:
        return self._owner_pid == os.getpid() and self._listener is not None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
        except Exception:  # noqa: BLE001 - logging must not raise into the caller
            self.handleError(record)
            return
        self._send(msg.encode("utf-8", "backslashreplace"), msg)

    def write_raw(self, text: str) -> None:
        """Send already-formatted text (whole lines, without the final newline) as one record.

        For bulk output such as a wrapped child process's lines: no formatter, no LogRecord,
        one frame however many lines the text holds, so lines stay together and in order. Only
        the known secret values are masked here (a substring check each), which bulk output can
        afford; the patterns of :func:`~ava.log.redact.redact` are for records.
        """
        text = redact_values(text)
        with self.lock:  # type: ignore[union-attr]
            self._send(text.encode("utf-8", "backslashreplace"), text)

    def _send(self, data: bytes, text: str) -> None:
        """The owner writes ``data`` itself (in the file when this returns); others send a frame."""
        if self.is_owner and not self._closed:
            self._listener.write([data + b"\n"])  # type: ignore[union-attr]
            return
        if not self._fallback:
            try:
                self._connection().sendall(_HEADER.pack(len(data)) + data)
                return
            except OSError as exc:
                self._fallback = True
                sys.stderr.write(f"ava: log listener for {self.baseFilename} unreachable ({exc}); logging to stderr\n")
        if text:
            sys.stderr.write(text + "\n")

    def _connection(self) -> socket.socket:
        pid = os.getpid()
        if self._conn is not None and self._conn_pid == pid:
            return self._conn
        if self._conn is not None:
            # Inherited across fork: it is the parent's stream; never write to it.
            try:
                self._conn.close()
            except OSError:
                pass
        if self._closed and pid == self._owner_pid:
            raise OSError("handler is closed")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self._address)
        self._conn, self._conn_pid = conn, pid
        return conn

    def flush(self) -> None:
        """Nothing to wait for: the owner's records are written when ``emit`` returns, and a
        sender's are in its socket, which the owner's listener drains before it stops."""

    def close(self) -> None:
        """Owner: drain, stop the listener and close the file. Elsewhere: close the connection."""
        with self.lock:  # type: ignore[union-attr]
            if self._closed:
                return
            owner = self.is_owner
            if owner:
                self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and self._conn_pid == os.getpid():
                conn.close()
            if owner and self._listener is not None:
                self._listener.stop(timeout=_DRAIN_SECONDS + 3.0)
                if self._sock_dir:
                    shutil.rmtree(self._sock_dir, ignore_errors=True)
        super().close()


def _socket_dir() -> str:
    """A private 0700 directory for the listener's socket, in the temporary directory if its
    path fits a Unix socket address (108 bytes on Linux), else in /tmp."""
    where = tempfile.gettempdir()
    if len(os.path.join(where, "ava-log-xxxxxxxx", "s").encode()) > 100 and os.path.isdir("/tmp"):
        where = "/tmp"
    return tempfile.mkdtemp(prefix="ava-log-", dir=where)


def _make_sender(address: str, filename: str, level: int, formatter: logging.Formatter | None,
                 secrets: tuple[str, ...] = ()) -> MultiProcessingLogHandler:
    for secret in secrets:
        register_secret(secret)
    handler = MultiProcessingLogHandler.__new__(MultiProcessingLogHandler)
    logging.Handler.__init__(handler, level)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(formatter)
    handler.baseFilename = filename
    handler.maxBytes = handler.backupCount = 0
    handler._owner_pid = None
    handler._sock_dir = None
    handler._address = address
    handler._conn = None
    handler._conn_pid = None
    handler._fallback = False
    handler._closed = False
    handler._listener = None
    return handler
