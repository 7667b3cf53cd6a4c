import threading
import time

import pytest

from ava.errors import MetricsError
from ava.metrics.sinks.base import Sink
from ava.metrics.writer import MetricsWriter


class Collect(Sink):
    def __init__(self):
        self.records = []
        self.threads = set()
        self.flushes = 0
        self.closed = 0

    def write(self, records):
        self.threads.add(threading.current_thread().name)
        self.records.extend(records)

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed += 1


class Gate(Collect):
    """A durable sink that blocks until opened."""

    def __init__(self):
        super().__init__()
        self.open = threading.Event()

    def write(self, records):
        self.open.wait(30)
        super().write(records)


class Flaky(Collect):
    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    def write(self, records):
        if self.failures > 0:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().write(records)


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_seq_is_contiguous_and_order_kept():
    sink = Collect()
    w = MetricsWriter([sink], start_seq=10)
    for i in range(1000):
        w.log_metrics({"loss": float(i), "acc": 0.5}, step=i, epoch=0, batch=i)
    w.log_event("snapshot", step=999, path="/x")
    assert w.close(timeout=10)
    seqs = [r["seq"] for r in sink.records]
    assert seqs == list(range(10, 10 + 2001))
    assert sink.records[-1]["event"] == "snapshot" and sink.records[-1]["path"] == "/x"
    assert [r["value"] for r in sink.records[:4]] == [0.0, 0.5, 1.0, 0.5]
    assert sink.closed == 1


def test_values_are_converted_on_the_writer_thread_only():
    seen = []

    class Lazy:
        def item(self):
            seen.append(threading.current_thread().name)
            return 0.25

    sink = Collect()
    w = MetricsWriter([sink])
    w.log_metrics({"loss": Lazy()}, step=1)
    assert w.close(timeout=10)
    assert seen == ["ava-metrics-writer"]
    assert sink.records[0]["value"] == 0.25


def test_full_buffer_makes_the_caller_wait_and_drops_nothing():
    sink = Gate()
    w = MetricsWriter([sink], max_buffer=5, flush_interval=0.01)
    done = threading.Event()

    def produce():
        for i in range(50):
            w.log_metrics({"loss": 1.0}, step=i)
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    assert wait_until(lambda: w.pending >= 5)
    assert not done.wait(0.3), "the producer should be blocked by the full buffer"
    sink.open.set()
    assert done.wait(10)
    assert w.close(timeout=10)
    assert [r["step"] for r in sink.records] == list(range(50))


def test_durable_sink_failure_is_retried_surfaced_once_and_recovers():
    sink = Flaky(failures=3)
    w = MetricsWriter([sink], flush_interval=0.01)
    w.log_metrics({"loss": 1.0}, step=1)
    assert wait_until(lambda: w._surface is not None)
    with pytest.raises(MetricsError, match="No space left on device"):
        w.log_metrics({"loss": 2.0}, step=2)
    w.log_metrics({"loss": 3.0}, step=3)
    assert w.close(timeout=10)
    assert [r["step"] for r in sink.records] == [1, 2, 3]  # the call that reported the error kept its record


def test_a_failing_secondary_sink_does_not_stop_the_durable_one():
    class Broken(Collect):
        def write(self, records):
            raise RuntimeError("down")

    sink = Collect()
    w = MetricsWriter([sink, Broken()])
    for i in range(10):
        w.log_metrics({"loss": 1.0}, step=i)
    assert w.close(timeout=10)
    assert len(sink.records) == 10


def test_flush_waits_for_everything_before_it():
    sink = Collect()
    w = MetricsWriter([sink], flush_interval=60)
    for i in range(100):
        w.log_metrics({"loss": 1.0}, step=i)
    assert w.flush(timeout=10)
    assert len(sink.records) == 100 and sink.flushes >= 1
    w.close()


def test_close_is_bounded_when_the_sink_hangs():
    sink = Gate()
    w = MetricsWriter([sink], flush_interval=0.01)
    w.log_metrics({"loss": 1.0}, step=1)
    t0 = time.monotonic()
    assert w.close(timeout=0.3) is False
    assert time.monotonic() - t0 < 5
    sink.open.set()


def test_close_twice_and_log_after_close():
    w = MetricsWriter([Collect()])
    assert w.close() and w.close()
    with pytest.raises(MetricsError, match="closed"):
        w.log_metrics({"loss": 1.0}, step=1)


def test_bad_phase_and_step_are_refused():
    w = MetricsWriter([Collect()])
    with pytest.raises(MetricsError, match="phase must be one of"):
        w.log_metrics({"loss": 1.0}, step=1, phase="training")
    with pytest.raises(MetricsError, match="epoch must be an integer"):
        w.log_metrics({"loss": 1.0}, step=1, epoch="1")
    w.close()


def test_conversion_failure_on_the_writer_thread_is_surfaced_and_others_kept():
    class Bad:
        def item(self):
            raise RuntimeError("device lost")

    sink = Collect()
    w = MetricsWriter([sink], flush_interval=0.01)
    w.log_metrics({"loss": Bad(), "acc": 0.5}, step=1)
    assert w.flush(timeout=10)
    with pytest.raises(MetricsError, match="'loss' at step 1 could not be converted"):
        w.log_metrics({"acc": 0.6}, step=2)
    assert w.close(timeout=10)
    assert [(r["name"], r["value"]) for r in sink.records] == [("acc", 0.5), ("acc", 0.6)]


def test_a_record_that_cannot_be_written_as_given_does_not_hold_back_the_others(tmp_path, caplog):
    import json as _json

    from ava.metrics.sinks.jsonl import JsonlSink

    path = tmp_path / "metrics.jsonl"
    w = MetricsWriter([JsonlSink(path)], flush_interval=0.01)
    w.log_metrics({"before": 1.0}, step=0)
    w.log_metrics({"loss\udc80": 2.0}, step=1)  # a lone surrogate: not UTF-8 as it is
    w.log_metrics({"big": 10**5000}, step=2)  # more digits than Python will print
    w.log_metrics({"after": 3.0}, step=3)
    assert w.flush(timeout=10) and w.close(timeout=10)
    lines = path.read_text(encoding="utf-8").splitlines()
    recs = [_json.loads(line) for line in lines]
    assert [(r["name"], r["value"], r["seq"]) for r in recs] == [
        ("before", 1.0, 0), ("loss\udc80", 2.0, 1), ("big", "inf", 2), ("after", 3.0, 3)]
    assert "more than" in caplog.text and "not valid Unicode" in caplog.text


def test_a_tensor_or_array_changed_in_place_after_the_call_keeps_the_value_of_the_call():
    import numpy as np

    torch = pytest.importorskip("torch")
    sink = Gate()  # the writer cannot read anything before the caller has changed its values
    w = MetricsWriter([sink])
    running = torch.zeros(())
    weight = torch.nn.Parameter(torch.ones(1))
    acc = np.zeros(1)
    expected = []
    for step in range(1, 4):
        running += step
        acc += 0.25
        with torch.no_grad():
            weight.mul_(0.5)
        w.log_metrics({"running": running, "weight": weight, "acc": acc}, step=step)
        expected.append((float(running), float(weight.detach()), float(acc[0])))
        running.zero_()  # a script that resets its running sum after reporting it
    sink.open.set()
    assert w.close(timeout=10)
    got = [tuple(r["value"] for r in sink.records[i:i + 3]) for i in range(0, 9, 3)]
    assert got == expected  # the old writer read the tensors later: 0.0 and the last weight each time


def test_units_that_are_not_text_are_refused_at_the_call_and_lose_nothing(tmp_path):
    # A bytes unit was taken; then no record could be written, a good one was lost too, and
    # close() waited out its whole timeout.
    from ava.errors import MetricsError
    from ava.metrics.sinks.jsonl import JsonlSink, iter_records
    from ava.metrics.writer import MetricsWriter

    w = MetricsWriter([JsonlSink(tmp_path / "m.jsonl")], rank=0)
    w.log_metrics({"acc": 0.5}, step=1, units={"acc": "%"})
    with pytest.raises(MetricsError, match="units"):
        w.log_metrics({"acc": 0.6}, step=2, units={"acc": b"%"})
    with pytest.raises(MetricsError, match="units"):
        w.log_metrics({"acc": 0.6}, step=2, units=["%"])
    w.log_metrics({"acc": 0.7}, step=3)
    assert w.close(10)
    assert [(r["step"], r.get("unit")) for r in iter_records(tmp_path / "m.jsonl")] == [(1, "%"), (3, None)]


def test_a_units_dict_changed_after_a_call_is_checked_again_and_not_shared(tmp_path):
    # Checked once per dict object: a bytes unit added to the same dict later went through, and
    # every record was lost again.
    from ava.errors import MetricsError
    from ava.metrics.sinks.jsonl import JsonlSink, iter_records
    from ava.metrics.writer import MetricsWriter

    units = {"acc": "%"}
    w = MetricsWriter([JsonlSink(tmp_path / "m.jsonl")], rank=0)
    w.log_metrics({"acc": 0.5}, step=1, units=units)
    units["acc"] = "percent"  # after the call: the record keeps what it was given
    units["speed"] = b"samples/s"
    with pytest.raises(MetricsError, match="units"):
        w.log_metrics({"acc": 0.6, "speed": 9.0}, step=2, units=units)
    w.log_metrics({"acc": 0.7}, step=3)
    assert w.close(10)
    assert [(r["step"], r.get("unit")) for r in iter_records(tmp_path / "m.jsonl")] == [(1, "%"), (3, None)]


def test_log_own_gives_the_records_of_log_metrics_and_refuses_after_close(tmp_path):
    from ava.metrics.sinks.jsonl import JsonlSink, iter_records

    units = {"speed": "samples/s"}
    files = []
    for k, own in enumerate((False, True)):
        path = tmp_path / f"m{k}.jsonl"
        w = MetricsWriter([JsonlSink(path)])
        for i in range(300):
            values = {"accuracy": i / 7, "lr": 0.1, "speed": float("inf") if i == 5 else 100.0 + i, "samples": 32 * i}
            if own:
                w.log_own(values, i, i // 45, i % 45, units)
            else:
                w.log_metrics(values, i, i // 45, i % 45, units=units)
        assert w.close(timeout=30)
        files.append([{k: v for k, v in r.items() if k != "ts"} for r in iter_records(path)])
        with pytest.raises(MetricsError, match="closed"):
            w.log_own({"x": 1.0}, 1, 0, 0, None)
    assert files[0] == files[1] and len(files[1]) == 1200 and files[1][22]["value"] == "inf"
    assert files[1][2]["unit"] == "samples/s" and files[1][-1]["seq"] == 1199


def test_log_own_surfaces_a_value_it_cannot_convert_at_the_next_call():
    sink = Collect()
    w = MetricsWriter([sink], flush_interval=0.01)
    w.log_own({"loss": object(), "acc": 0.5}, 1, 0, 1, None)
    assert w.flush(timeout=10)
    with pytest.raises(MetricsError, match="'loss' at step 1 could not be converted"):
        w.log_own({"acc": 0.6}, 2, 0, 2, None)
    assert w.close(timeout=10)
    assert [(r["name"], r["value"], r["phase"]) for r in sink.records] == [("acc", 0.5, "train"), ("acc", 0.6, "train")]
