"""The platform's metric wire format: InfluxDB-style line protocol, as the old AVA SDK sent it.

One metric record becomes one line::

    ava_metric_training_loss,job_type=training,id=run-1,epoch=3,batch=45,rank=0,phase=train,name=loss value=0.2134,seq=17i,step=1200i 1732240000123000000

Measurements keep the old AVA names (``ava_metric_training_loss``,
``ava_metric_training_learning_rate``, ``ava_metric_training_val_accuracy``,
``ava_metric_training_sample_num``) and add one per other metric name
(``ava_metric_training_<phase prefix><name>``, with characters other than letters, digits and
``_`` turned into ``_``). The record's exact name travels in the ``name`` tag, so a reader gets
back ``loss3/top-5`` as printed. Tags that are unknown (a null epoch) are left out. Integers are
``123i``; floats use ``repr`` (round-trips exactly); non-finite values are the string fields
``"nan"``, ``"inf"``, ``"-inf"``.

Example:
    >>> line = encode_record({"ts": 1.5, "step": 3, "epoch": None, "batch": None, "phase": "val",
    ...                       "name": "accuracy", "value": 0.5, "rank": 0, "seq": 9}, "run-1")
    >>> line
    'ava_metric_training_val_accuracy,job_type=training,id=run-1,rank=0,phase=val,name=accuracy value=0.5,seq=9i,step=3i 1500000000'
    >>> decode_line(line)["value"], decode_line(line)["name"]
    (0.5, 'accuracy')
"""

from __future__ import annotations

import math
import re
from typing import Any

JOB_TYPE = "training"
PREFIX = "ava_metric_training_"
_OLD_NAMES = {"loss": "loss", "lr": "learning_rate", "learning_rate": "learning_rate", "samples": "sample_num"}
_PHASE_PREFIX = {"train": "", "val": "val_", "test": "test_"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_TAG_ORDER = ("job_type", "id", "epoch", "batch", "rank", "phase", "name", "net")


class LineProtocolError(ValueError):
    """A line that is not valid line protocol (the message names what is wrong)."""


def measurement_for(name: str, phase: str) -> str:
    """The measurement a metric is sent as (old AVA names where there was one)."""
    base = _OLD_NAMES.get(name) or _UNSAFE.sub("_", name) or "_"
    return PREFIX + _PHASE_PREFIX.get(phase, "") + base


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ").replace("\n", "\\n")


def _escape_measurement(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _field_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        value = "nan" if value != value else ("inf" if value > 0 else "-inf")
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def encode_record(record: dict[str, Any], instance_id: str) -> str:
    """One metric record (CONTRACT.md section 5) as one line, without the newline."""
    phase = record.get("phase") or "train"
    name = record["name"]
    tags = [("job_type", JOB_TYPE), ("id", instance_id)]
    for key in ("epoch", "batch", "rank"):
        if record.get(key) is not None:
            tags.append((key, str(record[key])))
    tags.append(("phase", phase))
    tags.append(("name", name))
    if record.get("net") is not None:
        tags.append(("net", str(record["net"])))
    tag_text = ",".join(f"{k}={_escape_tag(v)}" for k, v in tags if v != "")
    fields = [f"value={_field_value(record['value'])}"]
    if record.get("seq") is not None:
        fields.append(f"seq={int(record['seq'])}i")
    if record.get("step") is not None:
        fields.append(f"step={int(record['step'])}i")
    ts_ns = int(round(float(record.get("ts") or 0.0) * 1_000_000)) * 1000
    return f"{_escape_measurement(measurement_for(name, phase))},{tag_text} {','.join(fields)} {ts_ns}"


def encode_records(records: list[dict[str, Any]], instance_id: str) -> bytes:
    """Metric records as a request body (events are skipped)."""
    return "".join(encode_record(r, instance_id) + "\n" for r in records if "event" not in r).encode("utf-8")


# --- decoding (the reference server's side) ------------------------------------------------------

def _split_unescaped(text: str, sep: str, quotes: bool = True, maxsplit: int = -1) -> list[str]:
    """Split on ``sep`` where it is not escaped by a backslash (nor, with ``quotes``, inside
    double quotes: quotes delimit strings only in the field set, they are literal in tags)."""
    parts: list[str] = []
    buf: list[str] = []
    in_quotes = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf.append(text[i : i + 2])
            i += 2
            continue
        if ch == '"' and quotes:
            in_quotes = not in_quotes
        elif ch == sep and not in_quotes and maxsplit != len(parts):
            parts.append("".join(buf))
            buf = []
            i += 1
            continue
        buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _parse_field(raw: str) -> Any:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise LineProtocolError(f"unterminated string field {raw!r}")
        return _unescape(raw[1:-1])
    if raw.endswith("i") and raw[:-1].lstrip("-").isdigit():
        return int(raw[:-1])
    if raw in ("true", "t", "T", "True", "TRUE"):
        return True
    if raw in ("false", "f", "F", "False", "FALSE"):
        return False
    try:
        return float(raw)
    except ValueError:
        raise LineProtocolError(f"bad field value {raw!r}") from None


def decode_line(line: str) -> dict[str, Any]:
    """Parse one line back into a record-like dict (``name``, ``phase``, ``value``, ...).

    Raises:
        LineProtocolError: the line is malformed.
    """
    line = line.strip()
    plain = "\\" not in line and '"' not in line  # the common case: split without a scanner
    if plain:
        sections = line.split(" ")
    else:
        head_rest = _split_unescaped(line, " ", quotes=False, maxsplit=1)
        sections = head_rest[:1] + [s for s in _split_unescaped(head_rest[1], " ") if s != ""] if len(head_rest) == 2 else head_rest
    if len(sections) not in (2, 3):
        raise LineProtocolError(f"expected 'measurement,tags fields [timestamp]', got {line[:80]!r}")
    head = sections[0].split(",") if plain else _split_unescaped(sections[0], ",", quotes=False)
    measurement = _unescape(head[0])
    tags: dict[str, str] = {}
    for tag in head[1:]:
        key, sep, value = tag.partition("=")
        if not sep:
            raise LineProtocolError(f"tag without '=' in {line[:80]!r}")
        tags[_unescape(key)] = _unescape(value)
    fields: dict[str, Any] = {}
    for field in sections[1].split(",") if plain else _split_unescaped(sections[1], ","):
        key, sep, value = field.partition("=")
        if not sep or not key:
            raise LineProtocolError(f"field without '=' in {line[:80]!r}")
        fields[_unescape(key)] = _parse_field(value)
    if "value" not in fields:
        raise LineProtocolError(f"no 'value' field in {line[:80]!r}")
    ts_ns = int(sections[2]) if len(sections) == 3 else None
    value = fields["value"]
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        value = float(value)
    name = tags.get("name") or (measurement[len(PREFIX):] if measurement.startswith(PREFIX) else measurement)
    return {
        "measurement": measurement,
        "id": tags.get("id"),
        "name": name,
        "phase": tags.get("phase", "train"),
        "epoch": int(tags["epoch"]) if tags.get("epoch", "").lstrip("-").isdigit() else None,
        "batch": int(tags["batch"]) if tags.get("batch", "").lstrip("-").isdigit() else None,
        "rank": int(tags["rank"]) if tags.get("rank", "").lstrip("-").isdigit() else None,
        "net": int(tags["net"]) if tags.get("net", "").lstrip("-").isdigit() else None,
        "seq": fields.get("seq"),
        "step": fields.get("step"),
        "value": value,
        "ts_ns": ts_ns,
    }
