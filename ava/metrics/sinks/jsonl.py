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
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from ava.errors import InstanceError, MetricsError
from ava.metrics.record import plain_details, records_of
from ava.metrics.sinks.base import Sink

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
LINE_RESERVE = 512
_SCAN_BLOCK = 1 << 16

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


_names: dict[str, str] = {}
_METRIC_KEYS = ("ts", "step", "epoch", "batch", "phase", "name", "value", "rank", "seq")
_OPTIONAL = ("net", "unit")


_UNSET: Any = object()
_PHASES = frozenset(("train", "val", "test"))
_NONFINITE = frozenset(("nan", "inf", "-inf"))


def _int_or_null(v: Any) -> str:
    return "null" if v is None else str(int(v))


def _encode_text(record: dict[str, Any]) -> str:
    """One record as JSON text ending in ``\\n`` (see :func:`encode_line`)."""
    if "event" not in record and len(record) <= 11:
        try:
            name_json = _json_of(record["name"])
            value_json = _value_json(record["value"])
            if not value_json:
                raise TypeError
            text = (f'{{"ts":{record["ts"]!r},"step":{_int_or_null(record["step"])},'
                    f'"epoch":{_int_or_null(record["epoch"])},"batch":{_int_or_null(record["batch"])},'
                    f'"phase":"{record["phase"]}","name":{name_json},"value":{value_json},'
                    f'"rank":{_int_or_null(record["rank"])},"seq":{int(record["seq"])}')
            extra = len(record) - 9
            if extra:
                if "net" in record:
                    text += f',"net":{_int_or_null(record["net"])}'
                    extra -= 1
                if "unit" in record:
                    text += f',"unit":{_json_of(record["unit"])}'
                    extra -= 1
                if extra:
                    raise TypeError
            if record["phase"] in ("train", "val", "test") and type(record["ts"]) is float:
                return text + "}\n"
        except (KeyError, TypeError, ValueError):
            pass
    return _dumps(record) + "\n"


def encode_line(record: dict[str, Any]) -> bytes:
    """One record as a UTF-8 line ending in ``\\n``.

    Metric records built by the writer (the contract's keys, converted values) are formatted
    directly, which is several times faster than ``json.dumps`` and gives the same text; any
    other record goes through the JSON encoder.
    """
    return _encode_text(record).encode("utf-8")


def encode_lines(records: list[dict[str, Any]]) -> list[str]:
    """The text of :func:`encode_line` for each record (as ``str``), built for a whole batch.

    The writer gives the records of one ``log_metrics`` call the very same ``ts``, ``step``,
    ``epoch``, ``batch``, ``phase`` and ``rank`` objects, so the text of those keys is built once
    per call instead of once per record; a record of any other shape goes through
    :func:`encode_line`'s path and comes out identical.
    """
    out: list[str] = []
    append = out.append
    k_ts: Any = _UNSET
    k_step = k_epoch = k_batch = k_phase = k_rank = _UNSET
    head = tail = ""  # the text before the name, and between the value and seq; "" = no fast path
    for rec in records:
        try:
            if len(rec) > 11 or "event" in rec:
                raise KeyError
            ts, step, epoch, batch, phase, rank = (
                rec["ts"], rec["step"], rec["epoch"], rec["batch"], rec["phase"], rec["rank"])
            name, value, seq = rec["name"], rec["value"], rec["seq"]
        except KeyError:
            append(_encode_text(rec))
            continue
        if (ts is not k_ts or step is not k_step or epoch is not k_epoch or batch is not k_batch
                or phase is not k_phase or rank is not k_rank):
            k_ts, k_step, k_epoch, k_batch, k_phase, k_rank = ts, step, epoch, batch, phase, rank
            if (type(ts) is float and type(phase) is str and phase in _PHASES and _plain_int(step) and _plain_int(epoch)
                    and _plain_int(batch) and _plain_int(rank)):
                head, tail = _head_tail(ts, step, epoch, batch, phase, rank)
            else:
                head = ""
        if not head or type(seq) is not int or type(name) is not str:
            append(_encode_text(rec))
            continue
        value_json = _value_json(value)
        if not value_json:
            append(_encode_text(rec))
            continue
        name_json = _json_of(name)
        extra = len(rec) - 9
        if not extra:
            append(f"{head}{name_json},\"value\":{value_json}{tail}{seq}}}\n")
            continue
        more = ""
        if "net" in rec:
            net = rec["net"]
            if not _plain_int(net):
                append(_encode_text(rec))
                continue
            more = f',"net":{"null" if net is None else net}'
            extra -= 1
        if "unit" in rec:
            more += f',"unit":{_json_of(rec["unit"])}'
            extra -= 1
        if extra:
            append(_encode_text(rec))
            continue
        append(f"{head}{name_json},\"value\":{value_json}{tail}{seq}{more}}}\n")
    return out


def encode_calls(entries: list[Any]) -> list[str]:
    """The lines of converted calls (:data:`~ava.metrics.record.CallEntry`) and event records.

    Gives exactly ``encode_lines(records_of(entries))``, without a dict per record: the text of
    ``ts``, ``step``, ``epoch``, ``batch``, ``phase`` and ``rank`` is built once per call.
    """
    out: list[str] = []
    append = out.append
    for entry in entries:
        if type(entry) is dict:
            append(_encode_text(entry))
            continue
        ts, step, epoch, batch, phase, metrics, net, units, seq, rank = entry
        if not (type(ts) is float and type(phase) is str and phase in _PHASES and _plain_int(step)
                and _plain_int(epoch) and _plain_int(batch) and _plain_int(rank) and _plain_int(net)
                and type(seq) is int):
            out.extend(encode_lines(records_of([entry])))
            continue
        head, tail = _head_tail(ts, step, epoch, batch, phase, rank)
        net_json = "" if net is None else f',"net":{net}'
        names = _names
        for name, value in metrics.items():
            # _value_json and _json_of inlined: this loop runs once per record on the writer
            # thread (each call would add about a tenth to it, measured).
            vt = type(value)
            if vt is float:
                value_json = repr(value)
            elif vt is int:
                value_json = str(value)
            elif vt is str and value in _NONFINITE:
                value_json = f'"{value}"'
            else:
                value_json = ""
            name_json = names.get(name) if type(name) is str else None
            if name_json is None and type(name) is str:
                name_json = names[name] = _dumps(name)
            more = net_json
            if units:
                unit = units.get(name)
                if unit is not None:
                    more += f',"unit":{_json_of(unit)}'
            if value_json and name_json is not None:
                append(f"{head}{name_json},\"value\":{value_json}{tail}{seq}{more}}}\n")
            else:
                rec = records_of([(ts, step, epoch, batch, phase, {name: value}, net, units, seq, rank)])[0]
                append(_encode_text(rec))
            seq += 1
    return out


def _head_tail(ts: float, step: int | None, epoch: int | None, batch: int | None, phase: str,
               rank: int | None) -> tuple[str, str]:
    """A metric line's text before its name and between its value and its seq (the keys every
    record of one call shares; all checked to be plain by the caller)."""
    head = (f'{{"ts":{ts!r},"step":{"null" if step is None else step},'
            f'"epoch":{"null" if epoch is None else epoch},"batch":{"null" if batch is None else batch},'
            f'"phase":"{phase}","name":')
    return head, f',"rank":{"null" if rank is None else rank},"seq":'


def _value_json(value: Any) -> str:
    """An int, a float or a non-finite string ("nan", "inf", "-inf") as JSON; "" for anything
    else (the general encoder takes that record)."""
    vt = type(value)
    if vt is float:
        return repr(value)
    if vt is int:
        return str(value)
    if vt is str and value in _NONFINITE:
        return f'"{value}"'
    return ""


def _json_of(value: Any) -> str:
    """``value`` (a metric name or unit) as JSON; a string's text is kept for the next time."""
    if type(value) is not str:
        return _dumps(value)
    text = _names.get(value)
    if text is None:
        text = _names[value] = _dumps(value)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8_safe(text: str) -> str:
    """``text`` with lone surrogates written as JSON ``\\uXXXX`` escapes (they cannot be UTF-8)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        log.error("a metric record holds text that is not valid Unicode; written with \\u escapes: %.200r", text)
        return _SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def _repaired(item: Any) -> Any:
    """A call or record whose values cannot be written as they are, made writable: an integer
    too long to print becomes a float (or "inf"/"-inf"), said once in the log. Names and text
    are left to :func:`_utf8_safe`."""
    def fix(name: Any, value: Any) -> Any:
        if type(value) is int:
            try:
                str(value)
            except ValueError:
                fixed: Any = float(value) if abs(value) < 1e308 else ("inf" if value > 0 else "-inf")
                log.error("metric %r: an integer of more than %d digits cannot be written; recorded as %s",
                          name, sys.get_int_max_str_digits(), fixed)
                return fixed
        return value

    if isinstance(item, dict):
        if "name" in item and "value" in item:
            return {**item, "value": fix(item["name"], item["value"])}
        return plain_details(item, strict=False)  # an event whose details are not all JSON
    ts, step, epoch, batch, phase, metrics, net, units, seq, rank = item
    return (ts, step, epoch, batch, phase, {k: fix(k, v) for k, v in metrics.items()}, net, units, seq, rank)


def _plain_int(v: Any) -> bool:
    return v is None or type(v) is int


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
        """Write converted calls (the writer's fast path: no dict per record); see :func:`encode_calls`."""
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
