"""Property tests: a metric record encoded as line protocol comes back unchanged through the
reference server's parser, for any metric name and value, by every encoding path (a record, a
batch of records, ``metrics.jsonl`` lines) and both decoding paths (the one-regex fast path and
the general scanner)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ava.metrics.record import make_record, to_json_number
from ava.metrics.sinks.jsonl import encode_line
from ava.platform.lineproto import LineProtocolError, decode_line, encode_json_lines, encode_record, encode_records, measurement_for

pytest.importorskip("tornado")  # the reference server is the platform extra
from ava.platform_server import parse_body  # noqa: E402

FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Any text, and text made of what line protocol escapes, so that the escapes meet each other.
nasty = st.lists(st.sampled_from(list(" ,=\"'\\\n\r\t\x00\u2028\x85") + ["a", "é", "名", "\\n", "\\ ", "i"]),
                 min_size=1, max_size=12).map("".join)
names = st.one_of(st.text(st.characters(codec="utf-8"), min_size=1, max_size=30), nasty,
                  st.from_regex(r"[A-Za-z0-9_./#:+-]{1,20}", fullmatch=True))
ids = st.one_of(st.text(st.characters(codec="utf-8"), min_size=1, max_size=20), nasty,
                st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True))
values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # nan, +-inf, subnormals, +-0.0, 1e308 included
    st.sampled_from([1e-320, 5e-324, -5e-324, 1.7976931348623157e308, 1e16, 1e22, 0.1, -0.0, 2**53 + 0.0]),
)
small = st.one_of(st.none(), st.integers(min_value=-(2**40), max_value=2**62))


@st.composite
def records(draw):
    value = draw(values)
    return make_record(
        draw(st.floats(min_value=0, max_value=4e9)), draw(small), draw(small), draw(small),
        draw(st.sampled_from(["train", "val", "test"])), draw(names), to_json_number(value),
        rank=draw(st.integers(0, 4096)), seq=draw(st.integers(0, 2**62)), net=draw(small),
        unit=draw(st.one_of(st.none(), st.sampled_from(["iter/s", "samples/s", "s"]))),
    )


def _ts_ns(record) -> int:
    return int(round(float(record["ts"] or 0.0) * 1_000_000)) * 1000


def _same_value(got, record) -> None:
    want = record["value"]
    if isinstance(want, str):
        want = float(want)
    if isinstance(want, int) and not -(2**63) <= want < 2**63:
        want = float(want)  # line protocol integers are 64-bit: a larger one travels as a float
    if isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got)
    else:
        assert got == want and type(got) is type(want), (got, want)
        if isinstance(want, float):
            assert math.copysign(1.0, got) == math.copysign(1.0, want)


def _check_decoded(p, record, instance_id) -> None:
    assert p["name"] == record["name"]
    assert p["id"] == instance_id
    assert p["measurement"] == measurement_for(record["name"], record["phase"])
    for key in ("phase", "step", "epoch", "batch", "rank", "seq"):
        assert p[key] == record[key], key
    assert p["net"] == record.get("net")
    assert p["ts_ns"] == _ts_ns(record)
    _same_value(p["value"], record)


def _check_row(row, record, instance_id) -> None:
    rid, rank, seq, name, phase, step, epoch, batch, net, value_text, ts_ns, measurement = row
    assert (rid, rank, seq, name, phase) == (instance_id, record["rank"], record["seq"], record["name"], record["phase"])
    assert (step, epoch, batch, net) == (record["step"], record["epoch"], record["batch"], record.get("net"))
    assert ts_ns == _ts_ns(record)
    assert measurement == measurement_for(record["name"], record["phase"])
    stored = json.loads(value_text)
    _same_value(float(stored) if isinstance(stored, str) else stored, record)


@FUZZ
@given(record=records(), instance_id=ids)
@example(record=make_record(1.0, 1, None, None, "train", "a b,c=d\"e\\f\ng", "nan", rank=0, seq=0), instance_id="r")
@example(record=make_record(1.0, 1, None, None, "train", "x\\", 1, rank=0, seq=0), instance_id="x\\")
@example(record=make_record(1.0, 1, None, None, "val", "\\n", -0.0, rank=0, seq=0), instance_id="\\n")
@example(record=make_record(1.0, None, None, None, "test", "i", 10**20, rank=0, seq=0), instance_id=" ")
@example(record=make_record(1.0, None, None, None, "train", "v\r", 1e-320, rank=0, seq=0), instance_id="\r")
@example(record=make_record(1.0, None, None, None, "train", "=", 1.0, rank=0, seq=0), instance_id="=")
@example(record=make_record(1.0, None, None, None, "train", "\u2028", "-inf", rank=0, seq=0), instance_id="\x85")
def test_a_record_round_trips_through_the_decoder_and_the_server(record, instance_id):
    line = encode_record(record, instance_id)
    assert "\n" not in line
    _check_decoded(decode_line(line), record, instance_id)
    rows = parse_body("other-id", line + "\n")
    assert len(rows) == 1
    _check_row(rows[0], record, instance_id)


@FUZZ
@given(batch=st.lists(records(), min_size=1, max_size=8), instance_id=ids, blank=st.booleans())
def test_a_batch_round_trips_through_the_server(batch, instance_id, blank):
    body = encode_records(batch, instance_id).decode("utf-8")
    if blank:
        body = "\n" + body.replace("\n", "\n\n", 1)
    rows = parse_body("other-id", body)
    assert len(rows) == len(batch)
    for row, record in zip(rows, batch):
        _check_row(row, record, instance_id)


@FUZZ
@given(batch=st.lists(records(), min_size=1, max_size=8), instance_id=ids)
def test_metrics_jsonl_lines_round_trip_through_the_server(batch, instance_id):
    """metrics.jsonl as JsonlSink writes it -> encode_json_lines (HttpSink) -> the server."""
    lines = [encode_line(r).decode("utf-8") for r in batch]
    rows = parse_body("other-id", encode_json_lines(lines, instance_id).decode("utf-8"))
    assert len(rows) == len(batch)
    for row, record in zip(rows, batch):
        _check_row(row, record, instance_id)


LINE_PIECES = ["ava_metric_training_loss", ",job_type=training", ",id=r", ",epoch=1", ",rank=0", ",phase=train",
               ",name=loss", ",net=0", " value=", "0.5", "1i", '"nan"', ",seq=", "7i", ",step=", "9" * 5000, "\\",
               '"', "=", ",", " ", "\n", "\r", "١", "1_0", "t", "-", "e", "."]


@FUZZ
@given(body=st.one_of(st.text(st.characters(codec="utf-8"), max_size=200),
                      st.lists(st.sampled_from(LINE_PIECES), max_size=30).map("".join)))
@example(body="m,job_type=t,id=r,phase=train,name=n value=1,seq=" + "9" * 5000 + "i 1")
@example(body="m,job_type=t,id=r,phase=train,name=n value=1,seq=1i " + "9" * 5000)
@example(body="m,job_type=t,id=r,rank=" + "9" * 5000 + ",phase=train,name=n value=1,seq=1i 1")
@example(body="m,phase=train,name=n value=1,seq=" + "9" * 5000 + "i")
@example(body="m,phase=train,name=n value=" + "9" * 5000 + "i,seq=1i")
@example(body="m,phase=train,name=n value=.5,seq=1i 1\nm,phase=train,name=n value=01i,seq=2i 1")
@example(body="m,job_type=t,id=r,phase=train,name=n value=1.,seq=1i 1")
@example(body="m,job_type=t,id=r,phase=train,name=n value=01i,seq=1i 1")
@example(body="m,job_type=t,id=r,phase=train,name=n value=1e999,seq=1i 1")
@example(body='m,phase=train,name=n value="abc",seq=1i')
@example(body="m,phase=train,name=n value=1,seq=1.5")
@example(body="m,phase=train,name=n value=1,seq=--5i")
@example(body="m,phase=train,name=n value=1,seq=\u00b2i")
@example(body="m,phase=train,name=n value=1,seq=1i 1_0")
@example(body="m,job_type=t,id=r,phase=train,name=n value=1,seq=\u0661i 1")
@example(body="m,job_type=t,id=r,phase=train,name=n value=1,seq=9223372036854775808i 1")
def test_any_body_gives_rows_or_a_line_protocol_error(body):
    """Whatever a client sends, the server's parser answers rows or LineProtocolError (a 400),
    never another exception (a 500)."""
    try:
        rows = parse_body("fallback", body)
    except LineProtocolError:
        return
    for row in rows:
        assert len(row) == 12 and isinstance(row[3], str)
        for index in (1, 2, 5, 6, 7, 8, 10):  # rank, seq, step, epoch, batch, net, ts_ns: SQLite INTEGERs
            assert row[index] is None or (type(row[index]) is int and -(2**63) <= row[index] < 2**63), row
        assert type(row[2]) is int
        value = json.loads(row[9], parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
        assert type(value) in (int, float) or value in ("nan", "inf", "-inf"), row
