"""The writer's and the JSONL sink's fast paths give exactly what the general paths give, and
the writer drains in few batches without delaying flush(), close() or a filling buffer."""

import json
import random
import threading
import time

import numpy as np
import pytest

from ava.metrics.record import make_record, to_json_number
from ava.metrics.sinks.base import Sink
from ava.metrics.sinks.jsonl import PAGE, JsonlSink, encode_line, encode_lines, frame_data, frame_lines, iter_records
from ava.metrics.writer import MetricsWriter


class Collect(Sink):
    def __init__(self):
        self.records = []
        self.batches = 0

    def write(self, records):
        self.batches += 1
        self.records.extend(records)


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("seed", range(4))
def test_frame_data_gives_the_bytes_of_frame_lines(seed):
    rng = random.Random(seed)
    sizes = [0, 1, 7, 60, 120, 511, 1000, PAGE - 2, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE + 5]
    for _ in range(3000):
        lines = [b"x" * rng.choice(sizes) + b"\n" for _ in range(rng.randint(0, 50))]
        offset = rng.choice([0, PAGE - 1, PAGE - 100, PAGE, rng.randint(0, 4 * PAGE)])
        reserve = rng.choice([1, 120, 512, PAGE, PAGE + 10])
        assert frame_data(b"".join(lines), offset, reserve) == b"".join(frame_lines(lines, offset, reserve))


def _records():
    """Records of every shape the sink may get: the writer's, and anything else."""
    ts = 1795326436.487047
    out = []
    for seq, value in enumerate([0.5, 1e-320, -0.0, 3, 10**20, "nan", "inf", "-inf", True, 1.5e300]):
        out.append(make_record(ts, 7, 1, 2, "train", "loss", value, rank=0, seq=seq))  # one shared prefix
    out += [
        make_record(ts, 8, None, None, "val", "speed", 12.5, rank=1, seq=20, unit="samples/s"),
        make_record(ts, 8, None, None, "val", "acc", 0.25, rank=1, seq=21, net=3),
        make_record(ts, 8, None, None, "val", "acc", 0.25, rank=1, seq=22, net=None, unit=None),
        make_record(ts, 8, 0, 0, "test", "m\u00e9trique \"q\"\n", 1.0, rank=0, seq=23, unit="\u00b5s"),
        {**make_record(ts, 9, 0, 0, "train", "x", 1.0, rank=0, seq=24), "ts": 5},  # an int ts
        {**make_record(ts, True, 0, 0, "train", "x", 1.0, rank=0, seq=25)},  # a bool step
        {**make_record(ts, 9, 0, 0, "bogus", "x", 1.0, rank=0, seq=26)},  # an unknown phase
        {**make_record(ts, 9, 0, 0, "train", "x", 1.0, rank=0, seq=27), "extra": 1},
        {"ts": ts, "step": 9, "event": "snapshot", "path": "/x", "rank": 0, "seq": 28},
        {"name": "loss", "value": 1.0, "rank": 0, "seq": 29},
        {**make_record(ts, 9, 0, 0, "train", "x", 1.0, rank=0, seq=30), "unit": 7},
    ]
    return out


def test_encode_lines_gives_the_text_of_encode_line():
    records = _records()
    texts = encode_lines(records)
    assert [t.encode("utf-8") for t in texts] == [encode_line(r) for r in records]
    for text, rec in zip(texts, records):
        assert text.endswith("\n") and "\n" not in text[:-1]
        assert json.loads(text) == json.loads(json.dumps(rec))


def test_jsonl_sink_writes_whole_padded_lines_with_non_ascii_names(tmp_path):
    path = tmp_path / "m.jsonl"
    sink = JsonlSink(path)
    records = [make_record(1.5, i, 0, i, "train", "\u00e9" * (i % 300), float(i), rank=0, seq=i) for i in range(3000)]
    sink.write(records[:1500])
    sink.write(records[1500:])
    sink.close()
    data = path.read_bytes()
    pos = 0
    for line in data.splitlines(keepends=True):
        assert pos // PAGE == (pos + len(line) - 1) // PAGE, "a line crosses a page boundary"
        pos += len(line)
    assert [r["seq"] for r in iter_records(path)] == list(range(3000))
    assert [r["name"] for r in iter_records(path)][299] == "\u00e9" * 299


def test_writer_records_equal_make_records_in_key_order():
    sink = Collect()
    w = MetricsWriter([sink], start_seq=5)
    values = {"f": 0.5, "i": 3, "b": True, "nan": float("nan"), "inf": float("-inf"), "np": np.float32(0.25),
              "speed": 100.0}
    w.log_metrics(values, step=9, epoch=1, batch=2, units={"speed": "samples/s", "i": "count"})
    w.log_metrics({"acc": 0.75}, step=10, phase="val", net=2)
    assert w.close(timeout=10)
    ts = sink.records[0]["ts"]
    expected = [make_record(ts, 9, 1, 2, "train", name, to_json_number(v), rank=0, seq=5 + k,
                            unit={"speed": "samples/s", "i": "count"}.get(name))
                for k, (name, v) in enumerate(values.items())]
    expected.append(make_record(sink.records[-1]["ts"], 10, None, None, "val", "acc", 0.75, rank=0, seq=12, net=2))
    assert [list(r.items()) for r in sink.records] == [list(r.items()) for r in expected]


def test_flush_and_a_half_full_buffer_do_not_wait_for_the_interval():
    sink = Collect()
    w = MetricsWriter([sink], max_buffer=100, flush_interval=60.0)
    w.log_metrics({"loss": 1.0}, step=0)
    t = time.monotonic()
    assert w.flush(timeout=10)
    assert time.monotonic() - t < 5 and len(sink.records) == 1
    for i in range(50):  # the high-water mark: half of max_buffer
        w.log_metrics({"loss": 1.0}, step=i)
    assert wait_until(lambda: len(sink.records) == 51, timeout=5)
    t = time.monotonic()
    for i in range(1000):  # ten times the buffer: the caller waits, nothing is dropped
        w.log_metrics({"loss": 1.0}, step=i)
    assert w.close(timeout=10)
    assert time.monotonic() - t < 10
    assert [r["seq"] for r in sink.records] == list(range(1051))


def test_records_wait_at_most_about_an_interval_and_drain_in_few_batches():
    sink = Collect()
    w = MetricsWriter([sink], flush_interval=0.2)
    first = time.monotonic()
    w.log_metrics({"loss": 1.0}, step=0)
    assert wait_until(lambda: len(sink.records) == 1, timeout=3)
    assert time.monotonic() - first < 2.0
    batches = sink.batches
    t = time.monotonic()
    n = 0
    while time.monotonic() - t < 0.6:  # a record every ~2 ms for 0.6 s (three intervals)
        w.log_metrics({"loss": 1.0}, step=n)
        n += 1
        time.sleep(0.002)
    assert w.close(timeout=10)
    assert len(sink.records) == n + 1
    assert sink.batches - batches <= 6, f"{sink.batches - batches} drains for {n} calls in 0.6 s"


def test_close_while_the_writer_waits_for_its_interval_returns_at_once():
    sink = Collect()
    w = MetricsWriter([sink], flush_interval=60.0)
    w.log_metrics({"loss": 1.0}, step=0)
    t = time.monotonic()
    done = []
    th = threading.Thread(target=lambda: done.append(w.close(timeout=10)))
    th.start()
    th.join(10)
    assert done == [True] and time.monotonic() - t < 5 and len(sink.records) == 1


def _entries():
    ts = 1795326436.487047
    units = {"speed": "samples/s", "odd": 7}
    return [
        (ts, 7, 1, 2, "train", {"acc": 0.5, "lr": 0.1, "speed": 12.5, "samples": 64, "tiny": 1e-320}, None, units, 0, 0),
        (ts, 8, None, None, "val", {"acc": "nan", "b": "-inf", "m\u00e9trique \"q\"": 2.0}, 3, None, 5, 1),
        {"ts": ts, "step": 9, "event": "snapshot", "path": "/x", "rank": 0, "seq": 8},
        (ts, 9, 0, 0, "test", {"odd": 1.0, "speed": 2.0}, None, units, 9, 0),
        (5, 9, 0, 0, "train", {"int-ts": 1.0}, None, None, 11, 0),  # not the writer's shape: the general path
        (ts, True, 0, 0, "train", {"bool-step": 1.0}, None, None, 12, 0),
        (ts, 9, 0, 0, "bogus", {"phase": 1.0}, None, None, 13, 0),
        (ts, 9, 0, 0, "train", {"big": 10**20, "neg": -0.0}, None, {}, 14, 2),
        (ts, 10, 0, 0, "train", {"speed": 3.0}, None, {"speed": ["samples", "s"]}, 16, 0),  # not hashable
        # the first call's shape again (its cached text) with other values, one of them a string
        (ts + 1.5, 11, 1, 3, "train", {"acc": 0.25, "lr": "inf", "speed": 13.0, "samples": 96, "tiny": 2.0},
         None, units, 17, 0),
    ]


def test_encode_calls_gives_the_lines_of_their_records():
    from ava.metrics.record import records_of
    from ava.metrics.sinks.jsonl import encode_calls

    entries = _entries()
    records = records_of(entries)
    assert [r["seq"] for r in records] == list(range(22))
    assert encode_calls(entries) == [encode_line(r).decode("utf-8") for r in records]


def test_writer_gives_jsonl_the_same_file_through_calls_as_through_records(tmp_path):
    class RecordsOnly(Sink):  # the same file, written from records: the general path
        def __init__(self, path):
            self.inner = JsonlSink(path)

        def write(self, records):
            self.inner.write(records)

        def close(self):
            self.inner.close()

    outs = []
    for k, make in enumerate([JsonlSink, RecordsOnly]):
        path = tmp_path / f"m{k}.jsonl"
        w = MetricsWriter([make(path)])
        for i in range(3000):
            w.log_metrics({"acc": i / 7, "n": i, "bad": np.float32(np.inf), "speed": 1.5}, step=i, epoch=i // 45,
                          batch=i % 45, units={"speed": "samples/s"})
            if i % 1000 == 0:
                w.log_event("snapshot", step=i, path="/x")
        assert w.close(timeout=30)
        outs.append(path.read_bytes())
    assert outs[0] and [json.loads(x)["seq"] for x in outs[0].splitlines() if x.strip()] == list(range(12003))
    pos = 0
    for line in outs[0].splitlines(keepends=True):
        assert pos // PAGE == (pos + len(line) - 1) // PAGE, "a line crosses a page boundary"
        pos += len(line)
    # The timestamps differ between the two runs; everything else is the same.
    strip = [[json.dumps({k: v for k, v in json.loads(x).items() if k != "ts"}) for x in o.splitlines() if x.strip()]
             for o in outs]
    assert strip[0] == strip[1]


def test_other_sinks_get_the_records_of_the_jsonl_file(tmp_path):
    class Quiet(Collect):
        wants_records = False  # e.g. a sink that only needs to know that the file grew

    def run(path, *others):
        w = MetricsWriter([JsonlSink(path), *others])
        for i in range(500):
            w.log_metrics({"acc": i / 3, "speed": 2.0, "t": np.float64(0.5)}, step=i, units={"speed": "samples/s"})
        w.log_event("snapshot", step=499, path="/x")
        assert w.close(timeout=30)

    others = Collect()
    run(tmp_path / "a.jsonl", others, Quiet())
    assert others.records == list(iter_records(tmp_path / "a.jsonl"))
    assert len(others.records) == 1501 and others.records[1]["unit"] == "samples/s"
    quiet = Quiet()  # no sink reads records: none are built, the sink is still called for each batch
    run(tmp_path / "b.jsonl", quiet)
    assert quiet.batches >= 1 and quiet.records == []
    assert len(list(iter_records(tmp_path / "b.jsonl"))) == 1501


def _writer_entries():
    """Calls as the writer converts them (float ts, a known phase, int or None counters), with
    floats that msgspec spells differently from Python (1e+16, 2.5e-05) and an event."""
    ts = 1795326436.487047
    units = {"speed": "samples/s", "w%d": "%s {x}"}
    return [
        (ts, 7, 1, 2, "train", {"acc": 0.5, "lr": 0.1, "speed": 12.5, "samples": 64, "tiny": 1e-320}, None, units, 0, 0),
        (ts, 8, None, None, "val", {"acc": "nan", "b": "-inf", "m\u00e9trique \"q\"": 2.0}, 3, None, 5, 1),
        {"ts": ts, "step": 9, "event": "snapshot", "path": "/x", "rank": 0, "seq": 8},
        (ts, 9, 0, 0, "test", {"big": 1e16, "small": 2.5e-05, "w%d": 10**20, "neg": -0.0}, None, units, 9, None),
        (ts + 1.5, None, None, None, "train", {"speed": 3.0}, None, {}, 13, 0),
    ]


def test_encode_calls_data_gives_the_records_of_encode_calls():
    from ava.metrics.sinks.jsonl import encode_calls, encode_calls_data

    entries = _writer_entries()
    data = encode_calls_data(entries)
    assert data is not None and data.endswith(b"\n")
    fast = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    general = [json.loads(text) for text in encode_calls(entries)]
    assert fast == general and [list(r) for r in fast] == [list(r) for r in general]  # the same keys, in order
    assert len(fast) == 14 and fast[8]["event"] == "snapshot" and fast[-1]["seq"] == 13


@pytest.mark.parametrize("bad", [
    (1795326436.5, 1, 0, 0, "train", {"a\ud800": 1.0}, None, None, 0, 0),  # a lone surrogate: repaired by the general path
    (1795326436.5, 1, 0, 0, "train", {"huge": 10 ** 5000}, None, None, 0, 0),  # too long to print: repaired
    (5, 1, 0, 0, "train", {"int-ts": 1.0}, None, None, 0, 0),  # not the writer's shape
    (1795326436.5, 1, 0, 0, "bogus", {"phase": 1.0}, None, None, 0, 0),
    (1795326436.5, True, 0, 0, "train", {"bool-step": 1.0}, None, None, 0, 0),  # written as 1, not true
    (1795326436.5, 1, 2.0, 0, "train", {"float-epoch": 1.0}, None, None, 0, 0),  # written as 2, not 2.0
])
def test_encode_calls_data_leaves_what_it_cannot_write_as_given_to_the_general_path(bad, tmp_path):
    from ava.metrics.sinks.jsonl import encode_calls_data

    good = _writer_entries()[0]
    assert encode_calls_data([good, bad]) is None
    sink = JsonlSink(tmp_path / "m.jsonl")
    sink.write_calls([good, bad])
    sink.close()
    records = list(iter_records(tmp_path / "m.jsonl"))
    assert len(records) == 6 and records[-1]["seq"] == 0 and records[-1]["name"] in (
        "a\ud800", "huge", "int-ts", "phase", "bool-step", "float-epoch")
    assert all(type(records[-1][k]) is int for k in ("step", "epoch", "batch"))


def test_encode_calls_data_without_msgspec_is_none(monkeypatch):
    from ava.metrics.sinks import _jsonl_encode

    monkeypatch.setattr(_jsonl_encode._Native, "loaded", True)  # as load_native() leaves it then
    monkeypatch.setattr(_jsonl_encode._Native, "encode_lines", None)
    assert not _jsonl_encode.load_native()
    assert _jsonl_encode.encode_calls_data(_writer_entries()) is None


def test_write_calls_frames_by_its_longest_line(tmp_path):
    """A line longer than any before raises the room each write leaves in its page, so that
    the next write's first line does not straddle a page boundary either."""
    sink = JsonlSink(tmp_path / "m.jsonl")
    long_name = "n" * 1500
    seq = 0
    for k in range(40):
        metrics = {long_name: float(k), "x": 1.0} if k == 3 else {"x": float(k), "y": 2.0}
        sink.write_calls([(1795326436.5 + k, k, 0, k, "train", metrics, None, None, seq, 0)])
        seq += len(metrics)
    assert sink._reserve > 1500
    sink.close()
    data = (tmp_path / "m.jsonl").read_bytes()
    pos = 0
    for line in data.splitlines(keepends=True):
        assert pos // PAGE == (pos + len(line) - 1) // PAGE, "a line crosses a page boundary"
        pos += len(line)
    assert [r["seq"] for r in iter_records(tmp_path / "m.jsonl")] == list(range(80))
