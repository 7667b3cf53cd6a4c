"""The text of ``metrics.jsonl`` lines: the writer's calls encoded by msgspec in one native pass
(:func:`encode_calls_data`); otherwise metric records formatted directly (several times faster
than ``json.dumps``, the same text) and anything else through the JSON encoder; and the repairs a
record needs when it cannot be written as given (a lone surrogate, an int too long to print).
Used by :class:`~ava.metrics.sinks.jsonl.JsonlSink`, which re-exports the public names.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from ava.metrics.record import plain_details, records_of

log = logging.getLogger("ava.metrics.sinks.jsonl")  # the sink's messages keep their logger

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


_names: dict[str, str] = {}
_METRIC_KEYS = ("ts", "step", "epoch", "batch", "phase", "name", "value", "rank", "seq")
_OPTIONAL = ("net", "unit")


_UNSET: Any = object()
_PHASES = frozenset(("train", "val", "test"))
_NONFINITE = frozenset(("nan", "inf", "-inf"))
_COUNTER_TYPES = frozenset((int, type(None)))


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


class _Native:
    """msgspec's pieces for :func:`encode_calls_data`, loaded by :func:`load_native` (importing
    msgspec takes about 20 ms, so not at ``import ava``)."""

    loaded = False
    encode_lines: Any = None  # None: msgspec is not installed
    Record: Any = None
    Raw: Any = None
    errors: tuple[type[BaseException], ...] = (ValueError, UnicodeError, TypeError)


def load_native() -> bool:
    """Import msgspec once (the JSONL sink calls this when it opens); False when it is missing."""
    if not _Native.loaded:
        _Native.loaded = True
        try:
            import msgspec
        except ImportError:  # the pure-Python encoder writes the same records
            return False

        class Record(msgspec.Struct, omit_defaults=True, gc=False):
            """A metric record as msgspec writes it: the contract's keys in its order, ``net``
            and ``unit`` left out when None (as :func:`encode_calls` leaves them out)."""

            ts: Any
            step: Any
            epoch: Any
            batch: Any
            phase: Any
            name: Any
            value: Any
            rank: Any
            seq: Any
            net: Any = None
            unit: Any = None

        _Native.Record, _Native.Raw = Record, msgspec.Raw
        _Native.encode_lines = msgspec.json.Encoder().encode_lines
        _Native.errors = (ValueError, UnicodeError, TypeError, msgspec.EncodeError)
    return _Native.encode_lines is not None


def encode_calls_data(entries: list[Any]) -> bytes | None:
    """The lines of the writer's converted calls and event records as UTF-8, in one native pass.

    On the writer thread this costs about a third of :func:`encode_calls`, most of which is
    Python's float ``repr``. The records are the same; the text differs only in how some floats
    are spelt (``1e16`` for ``1e+16``, ``0.000025`` for ``2.5e-05``: the same JSON numbers).
    Values must be converted (finite int or float, or "nan", "inf", "-inf"), as the writer
    leaves them. Returns None when msgspec is not installed or cannot write a record as given
    (a lone surrogate in a name, an int too long to print): :func:`encode_calls` then writes
    the batch, with its repairs.
    """
    if not load_native():
        return None
    records: list[Any] = []
    append = records.append
    Record = _Native.Record
    try:
        for entry in entries:
            if type(entry) is dict:  # an event: its details may be any JSON, so the general encoder's text
                append(_Native.Raw(_encode_text(entry)[:-1].encode("utf-8")))
                continue
            ts, step, epoch, batch, phase, metrics, net, units, seq, rank = entry
            if (type(ts) is not float or phase not in _PHASES or type(seq) is not int
                    or not {type(step), type(epoch), type(batch), type(net), type(rank)} <= _COUNTER_TYPES):
                return None  # e.g. a bool or float step: the general path writes it as an int
            for name, value in metrics.items():
                append(Record(ts, step, epoch, batch, phase, name, value, rank, seq, net,
                              units.get(name) if units else None))
                seq += 1
        return _Native.encode_lines(records)
    except _Native.errors:
        return None


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
