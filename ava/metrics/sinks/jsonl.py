"""The durable record: ``run/<id>/logs/metrics.jsonl``, one JSON object a line.

Why lines are never torn, even by ``kill -9``: the file has one writer (this sink, holding an
exclusive ``flock``), every ``os.write`` carries whole lines only, and a failed or short write is
truncated back. The kernel copies a write into the page cache one page at a time and checks for
a fatal signal between pages, so a SIGKILL can cut a write only at a page boundary. The sink
therefore never lets a line straddle a page boundary: when one would, the line before it is
padded with spaces (JSON allows trailing whitespace), and each write ends with at least as much
room left in its page as the longest line written so far (at least :data:`LINE_RESERVE` bytes).
Only a line longer than every line before it, or than a page, can still be cut, and only at the
very end of the file; opening the file again moves such a tail to ``metrics.jsonl.torn``.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> s = JsonlSink(p); s.write([{"name": "loss", "value": 1.0, "rank": 0, "seq": 0}]); s.close()
    >>> [r["seq"] for r in iter_records(p)], JsonlSink(p).last_seq
    ([0], 0)
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import mmap
import os
from pathlib import Path
from typing import Any, Iterator

from ava.errors import InstanceError, MetricsError
from ava.metrics.sinks._jsonl_encode import (  # noqa: F401 - encode_line and the rest are used from here too
    _repaired, _utf8_safe, encode_calls, encode_calls_data, encode_line, encode_lines, load_native)
from ava.metrics.sinks.base import Sink

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
LINE_RESERVE = 512
_SCAN_BLOCK = 1 << 16

def frame_lines(lines: list[bytes], offset: int, reserve: int = LINE_RESERVE) -> list[bytes]:
    """Pad lines so that no line of up to a page straddles a page boundary (see module doc).

    ``offset`` is where the first line will land in the file; ``reserve`` is the room the last
    line leaves in its page for the next write. Returns the (possibly padded) lines; their
    concatenation is what to write.
    """
    out: list[bytes] = []
    pos = offset
    for line in lines:
        room = PAGE - pos % PAGE
        if len(line) > room and len(line) <= PAGE and out:
            out[-1] = out[-1][:-1] + b" " * room + b"\n"
            pos += room
        out.append(line)
        pos += len(line)
    room = PAGE - pos % PAGE
    if out and room < min(reserve, PAGE):
        out[-1] = out[-1][:-1] + b" " * room + b"\n"
    return out


def frame_data(data: bytes, offset: int, reserve: int = LINE_RESERVE) -> bytes:
    """:func:`frame_lines` over whole lines already joined: the same bytes, found per page.

    Only the lines that hold a page boundary are looked at (``rfind``/``find`` around each
    boundary), so a batch costs a few operations per page instead of a few per line.
    """
    n = len(data)
    if not n:
        return data
    chunks: list[bytes] = []
    start = 0  # data[start:] is not in chunks yet
    shift = 0  # spaces inserted so far: data[j] lands at offset + shift + j
    j = 0  # a line start; no line before it straddles a boundary any more
    while True:
        b = j + PAGE - (offset + shift + j) % PAGE  # the next page boundary, as an index in data
        if b >= n:
            break
        nl = data.rfind(b"\n", j, b)
        ls = nl + 1 if nl >= 0 else j  # the start of the line that holds byte b
        if ls == b:  # a line starts right on the boundary
            j = b
            continue
        le = data.find(b"\n", b) + 1  # that line's end
        if le - ls <= PAGE and ls > 0:  # pad the line before it to the boundary
            room = PAGE - (offset + shift + ls) % PAGE
            chunks.append(data[start:ls - 1])
            chunks.append(b" " * room + b"\n")
            start = j = ls
            shift += room
        else:  # the batch's first line, or longer than a page: it lands where it lands
            j = le
    room = PAGE - (offset + shift + n) % PAGE
    if room < min(reserve, PAGE):
        chunks.append(data[start:n - 1])
        chunks.append(b" " * room + b"\n")
    elif not chunks:
        return data
    else:
        chunks.append(data[start:])
    return b"".join(chunks)


def iter_records(path: Path | str) -> Iterator[dict[str, Any]]:
    """Yield the records of a ``metrics.jsonl``; a final line without ``\\n`` is not yet a record."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                return
            if raw.strip():
                try:
                    yield json.loads(raw)
                except ValueError:
                    raise MetricsError(f"{path}:{lineno} is not a JSON record") from None


def _repair_tail(fd: int, path: Path) -> int:
    """Move a torn last line (no ``\\n``) aside to ``<path>.torn``; return the file's size."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    end = size
    tail = b""
    while end > 0:
        start = max(0, end - _SCAN_BLOCK)
        chunk = os.pread(fd, end - start, start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            tail = chunk[nl + 1 :] + tail
            keep = start + nl + 1
            break
        tail = chunk + tail
        end = start
    else:
        keep = 0
    if keep == size:
        return size
    with open(f"{path}.torn", "ab") as torn:
        torn.write(tail + b"\n")
    os.ftruncate(fd, keep)
    log.warning("%s ended in a torn line of %d bytes (a killed writer); moved it to %s.torn", path, len(tail), path)
    return keep


def records_backwards(fd: int, size: int) -> Iterator[dict[str, Any]]:
    """Yield the records of the first ``size`` bytes of an open file, last first (unparsable lines skipped)."""
    end = size
    carry = b""
    while end > 0:
        start = max(0, end - _SCAN_BLOCK)
        chunk = os.pread(fd, end - start, start) + carry
        lines = chunk.split(b"\n")
        carry = lines[0] if start > 0 else b""
        for raw in reversed(lines[1:] if start > 0 else lines):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec
        end = start


def _last_seq(fd: int, size: int, rank: int) -> int | None:
    """Scan the file backwards for the last ``seq`` recorded by ``rank``."""
    for rec in records_backwards(fd, size):
        if (rec.get("rank") or 0) == rank and isinstance(rec.get("seq"), int):
            return rec["seq"]
    return None


class JsonlSink(Sink):
    """Append records to a JSON-lines file as the one writer of that file.

    Args:
        path: the ``metrics.jsonl`` file; created if missing, appended to if present.
        rank: whose ``seq`` to look up for :attr:`last_seq`.

    Raises:
        InstanceError: another process is already writing this file.
    """

    def __init__(self, path: Path | str, *, rank: int = 0) -> None:
        self.path = Path(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except IsADirectoryError:
            raise InstanceError(f"{self.path} is a directory, not a metrics file; move it aside") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InstanceError(
                    f"{self.path} is already being written by another open instance; "
                    "call done() on it first, or use another instance id"
                ) from None
            raise
        self._reserve = LINE_RESERVE
        load_native()  # here, not on the writer thread at its first batch
        rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._offset = _repair_tail(self._fd, self.path)
            self.last_seq = _last_seq(rfd, self._offset, rank)
        finally:
            os.close(rfd)

    def write(self, records: list[dict[str, Any]]) -> None:
        try:
            texts = encode_lines(records)
        except (ValueError, UnicodeError):  # one bad record must not hold back the others
            texts = encode_lines([_repaired(r) for r in records])
        self._write_texts(texts)

    def write_calls(self, entries: list[Any]) -> None:
        """Write converted calls (the writer's fast path: no dict per record); see
        :func:`encode_calls_data` and :func:`encode_calls`."""
        if self._fd is None:
            raise MetricsError(f"{self.path} is closed")
        data = encode_calls_data(entries)
        if data is not None:
            self._write_data(data, max(map(len, data.split(b"\n"))) + 1)
            return
        try:
            texts = encode_calls(entries)
        except (ValueError, UnicodeError):  # one bad record must not hold back the others
            texts = encode_calls([_repaired(e) for e in entries])
        self._write_texts(texts)

    def _write_texts(self, texts: list[str]) -> None:
        if self._fd is None:
            raise MetricsError(f"{self.path} is closed")
        text = "".join(texts)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in a name: written escaped, as JSON allows
            texts = [_utf8_safe(t) for t in texts]
            text = "".join(texts)
            data = text.encode("utf-8")
        if len(data) == len(text):  # ASCII: a line's length in bytes is its length in characters
            longest = max(map(len, texts), default=0)
        else:
            longest = max((len(t.encode("utf-8")) for t in texts), default=0)
        self._write_data(data, longest)

    def _write_data(self, data: bytes, longest: int) -> None:
        """Write whole lines (``longest``: the longest one's length in bytes), framed so that
        none straddles a page boundary; on failure, cut the file back to where they began."""
        if longest > self._reserve:
            self._reserve = longest
        data = frame_data(data, self._offset, self._reserve)
        start = self._offset
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError:
            # Leave no partial line behind: cut the file back to where this batch began.
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise
        self._offset = start + written

    def flush(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def forget_in_child(self) -> None:
        """In a forked child: close this process's copy of the file (its lock stays the parent's)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        os.close(fd)
