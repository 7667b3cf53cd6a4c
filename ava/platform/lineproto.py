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

import json
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


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _as_float(value: int) -> float | str:
    """An integer too large for a 64-bit field as a float; as its digits when not even that."""
    try:
        return float(value)
    except OverflowError:
        return str(value)


def _field_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return f"{value}i"
        value = _as_float(value)  # the line protocol's integers are 64-bit
        if isinstance(value, float):
            return repr(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        value = "nan" if value != value else ("inf" if value > 0 else "-inf")
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def encode_record(record: dict[str, Any], instance_id: str) -> str:
    """One metric record (CONTRACT.md section 5) as one line, without the newline."""
    return _Encoder(instance_id).line(record)


def encode_json_lines(lines: list[str], instance_id: str) -> bytes:
    """``metrics.jsonl`` lines as a request body, without a full JSON parse where possible.

    Lines in ava's own shape are translated directly; any other line is parsed; events and
    blank lines are skipped; an unreadable line raises ``ValueError``.
    """
    enc = _Encoder(instance_id)
    out = []
    for text in lines:
        line = enc.line_from_json(text)
        if line is None:
            if not text.strip():
                continue
            record = json.loads(text)
            if not isinstance(record, dict) or "event" in record or "name" not in record:
                continue
            line = enc.line(record)
        out.append(line + "\n")
    return "".join(out).encode("utf-8")


def encode_records(records: list[dict[str, Any]], instance_id: str) -> bytes:
    """Metric records as a request body (events are skipped)."""
    enc = _Encoder(instance_id)
    return "".join([enc.line(r) + "\n" for r in records if "event" not in r]).encode("utf-8")


# A metrics.jsonl line as ava's own JsonlSink writes it, with a name that needs no escaping.
_JSON_LINE = re.compile(
    r'\{"ts":(?P<ts>[-0-9.eE+]+),"step":(?P<step>-?\d+|null),"epoch":(?P<epoch>-?\d+|null),'
    r'"batch":(?P<batch>-?\d+|null),"phase":"(?P<phase>train|val|test)","name":"(?P<name>[A-Za-z0-9_./#:+-]+)",'
    r'"value":(?P<value>-?[0-9.eE+-]+|"nan"|"inf"|"-inf"),"rank":(?P<rank>-?\d+|null),"seq":(?P<seq>\d+)'
    r'(?:,"net":(?P<net>-?\d+|null))?(?:,"unit":"[^"\\]*")?\}\s*'
)


class _Encoder:
    """Encodes records of one instance, caching the parts that repeat (measurement, name tags)."""

    def __init__(self, instance_id: str) -> None:
        self._head = f",job_type={JOB_TYPE},id={_escape_tag(instance_id)}"
        self._cache: dict[tuple[str, str], tuple[str, str]] = {}

    def parts(self, name: str, phase: str) -> tuple[str, str]:
        parts = self._cache.get((name, phase))
        if parts is None:
            parts = self._cache[(name, phase)] = (
                _escape_measurement(measurement_for(name, phase)) + self._head,
                f",phase={_escape_tag(phase)},name={_escape_tag(name)}",
            )
        return parts

    def line_from_json(self, text: str) -> str | None:
        """The line for one ``metrics.jsonl`` line in ava's own shape; None for anything else.

        Skips ``json.loads`` and the dict: delivery reads every record, so this is its hot path.
        """
        m = _JSON_LINE.fullmatch(text)
        if m is None:
            return None
        head, tail = self.parts(m["name"], m["phase"])
        tags = head
        for key in ("epoch", "batch", "rank"):
            v = m[key]
            if v is not None and v != "null":
                tags += f",{key}={v}"
        tags += tail
        net = m["net"]
        if net is not None and net != "null":
            tags += f",net={net}"
        value = m["value"]
        if value[0] != '"' and value.lstrip("-").isdigit():
            if len(value) < 19 or _INT64_MIN <= int(value) <= _INT64_MAX:
                value += "i"
            else:  # the line protocol's integers are 64-bit
                big = _as_float(int(value))
                value = repr(big) if isinstance(big, float) else '"' + big + '"'
        fields = f"value={value},seq={m['seq']}i"
        step = m["step"]
        if step != "null":
            fields += f",step={step}i"
        ts_ns = int(round(float(m["ts"]) * 1_000_000)) * 1000
        return f"{tags} {fields} {ts_ns}"

    def line(self, record: dict[str, Any]) -> str:
        name = record["name"]
        phase = record.get("phase") or "train"
        parts = self.parts(name, phase)
        tags = parts[0]
        epoch, batch, rank, net = record.get("epoch"), record.get("batch"), record.get("rank"), record.get("net")
        if epoch is not None:
            tags += f",epoch={epoch}"
        if batch is not None:
            tags += f",batch={batch}"
        if rank is not None:
            tags += f",rank={rank}"
        tags += parts[1]
        if net is not None:
            tags += f",net={net}"
        value = record["value"]
        if type(value) is float and value - value == 0.0:  # finite
            fields = f"value={value!r}"
        else:
            fields = f"value={_field_value(value)}"
        seq, step = record.get("seq"), record.get("step")
        if seq is not None:
            fields += f",seq={int(seq)}i"
        if step is not None:
            fields += f",step={int(step)}i"
        ts_ns = int(round(float(record.get("ts") or 0.0) * 1_000_000)) * 1000
        return f"{tags} {fields} {ts_ns}"


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


_INT_FIELD = re.compile(r"-?[0-9]{1,4000}i")
_INT_TAG = re.compile(r"-?[0-9]{1,4000}")


def _parse_field(raw: str) -> Any:
    if raw[-1:] == "i" and _INT_FIELD.fullmatch(raw):
        return int(raw[:-1])
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise LineProtocolError(f"unterminated string field {raw!r}")
        return _unescape(raw[1:-1])
    if raw in ("true", "t", "T", "True", "TRUE"):
        return True
    if raw in ("false", "f", "F", "False", "FALSE"):
        return False
    try:
        return float(raw)
    except ValueError:
        raise LineProtocolError(f"bad field value {raw!r}") from None


def _int_tag(tags: dict[str, str], key: str) -> int | None:
    value = tags.get(key)
    if value is None or not _INT_TAG.fullmatch(value):
        return None  # int() would also take "1_0", " 1" and other scripts' digits
    return int(value)


def decode_line(line: str) -> dict[str, Any]:
    """Parse one line back into a record-like dict (``name``, ``phase``, ``value``, ...).

    Raises:
        LineProtocolError: the line is malformed.
    """
    line = line.strip()
    if "\\" not in line and '"' not in line:  # the common case: plain splits, no scanner
        sections = line.split(" ")
        if len(sections) not in (2, 3):
            raise LineProtocolError(f"expected 'measurement,tags fields [timestamp]', got {line[:80]!r}")
        head = sections[0].split(",")
        field_items = sections[1].split(",")
        plain = True
    else:
        head_rest = _split_unescaped(line, " ", quotes=False, maxsplit=1)
        sections = head_rest[:1]
        if len(head_rest) == 2:
            sections += [s for s in _split_unescaped(head_rest[1], " ") if s != ""]
        if len(sections) not in (2, 3):
            raise LineProtocolError(f"expected 'measurement,tags fields [timestamp]', got {line[:80]!r}")
        head = _split_unescaped(sections[0], ",", quotes=False)
        field_items = _split_unescaped(sections[1], ",")
        plain = False
    measurement = head[0] if plain else _unescape(head[0])
    try:
        pairs = [t.split("=", 1) for t in head[1:]]
        tags = dict(pairs) if plain else {_unescape(k): _unescape(v) for k, v in pairs}
    except ValueError:
        raise LineProtocolError(f"tag without '=' in {line[:80]!r}") from None
    try:
        fields = {(k if plain else _unescape(k)): _parse_field(v) for k, v in (f.split("=", 1) for f in field_items)}
    except LineProtocolError:
        raise
    except ValueError:
        raise LineProtocolError(f"field without '=' in {line[:80]!r}") from None
    if "" in fields:
        raise LineProtocolError(f"field without a name in {line[:80]!r}")
    if "value" not in fields:
        raise LineProtocolError(f"no 'value' field in {line[:80]!r}")
    ts_ns = None
    if len(sections) == 3:
        if not _INT_TAG.fullmatch(sections[2]):
            raise LineProtocolError(f"bad timestamp in {line[:80]!r}")
        ts_ns = int(sections[2])
    value = fields["value"]
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        value = float(value)
    name = tags.get("name") or (measurement[len(PREFIX):] if measurement.startswith(PREFIX) else measurement)
    return {
        "measurement": measurement,
        "id": tags.get("id"),
        "name": name,
        "phase": tags.get("phase", "train"),
        "epoch": _int_tag(tags, "epoch"),
        "batch": _int_tag(tags, "batch"),
        "rank": _int_tag(tags, "rank"),
        "net": _int_tag(tags, "net"),
        "seq": fields.get("seq"),
        "step": fields.get("step"),
        "value": value,
        "ts_ns": ts_ns,
    }
