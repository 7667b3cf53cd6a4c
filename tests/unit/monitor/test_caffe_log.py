"""CaffeLogParser on the real logs of shared/testdata/caffe_logs and on hand-made lines.

Every expected number below was counted with grep/awk on the log or read off the quoted line,
not produced by the parser: e.g. ``grep -cE '^I[0-9]{4}.*\\] Iteration [0-9]+.*, loss = '`` for
``smoothed_loss``, ``grep -oE 'Train net output #[0-9]+: [^ ]+ = ' | awk ... | uniq -c`` for the
outputs. Each log's comment names the line a value comes from.
"""

from __future__ import annotations

import calendar
import math
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from ava.monitor import caffe
from ava.monitor.caffe import CaffeLogParser

CAFFE_LOGS = Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata" / "caffe_logs"
YEAR = 2000  # a leap year, so any month-day of a year-less prefix is valid


def log_path(name: str) -> Path:
    path = CAFFE_LOGS / name
    if not path.is_file():
        pytest.skip(f"shared test data not present: {path}")
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8", "replace").split("\n")


def parse(name: str, parser: CaffeLogParser | None = None) -> list[dict]:
    parser = parser or CaffeLogParser(year=YEAR)
    out: list[dict] = []
    for line in lines_of(log_path(name)):
        out += parser.parse_line(line)
    return out


def comparable(records: list[dict]) -> list[dict]:
    """Records with NaN values replaced by a marker, so that == compares them (nan != nan)."""
    return [{**r, "value": "NaN"} if r.get("value") != r.get("value") else r for r in records]


def utc(year: int, month: int, day: int, hh: int, mm: int, ss: int, us: int) -> float:
    return calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)) + us / 1e6


def metrics(records: list[dict], phase: str, name: str) -> list[dict]:
    return [r for r in records if r.get("phase") == phase and r.get("name") == name]


def at(records: list[dict], phase: str, name: str, step: int) -> float:
    found = [r["value"] for r in metrics(records, phase, name) if r["step"] == step]
    assert len(found) == 1, (phase, name, step, found)
    return found[0]


# (phase, name) -> count, and event -> count, per log; from grep -c on the log (see module doc).
EXPECTED_COUNTS = {
    "01_bvlc2014_trainnet_testscore.log": (
        {("train", "smoothed_loss"): 1321, ("train", "lr"): 1322, ("test", "score#0"): 26, ("test", "score#1"): 26},
        {"snapshot": 4, "start": 1},
    ),
    "02_bvlc2015_rmsprop_solvercpp.log": (
        {("train", "smoothed_loss"): 101, ("train", "lr"): 100, ("train", "loss"): 100,
         ("test", "accuracy"): 21, ("test", "loss"): 21},
        {"snapshot": 4, "done": 1, "start": 1},  # "Optimization Done." twice (solver.cpp, caffe.cpp)
    ),
    "03_jin2015_googlenet_restore_diverge.log": (
        {("train", "smoothed_loss"): 6, ("train", "lr"): 6, ("train", "loss1/loss1"): 6,
         ("train", "loss2/loss1"): 6, ("train", "loss3/loss3"): 6,
         **{("test", f"loss{i}/{o}"): 1 for i in (1, 2, 3) for o in ("top-1", "top-5")},
         ("test", "loss1/loss1"): 1, ("test", "loss2/loss1"): 1, ("test", "loss3/loss3"): 1},
        {"resume": 1, "start": 1},  # "Resuming from X" and "Restoring previous solver status from X"
    ),
    "06_ducha2016_crash_then_run_killed.log": (
        {("train", "smoothed_loss"): 61, ("train", "lr"): 61, ("train", "loss"): 61,
         ("test", "accuracy"): 1, ("test", "loss"): 1},
        {"start": 1},
    ),
    "09_bvlc2017_cpu_speedfield_short.log": (
        {("train", "smoothed_loss"): 2, ("train", "lr"): 2, ("train", "speed"): 2, ("train", "loss"): 2},
        {"start": 1},
    ),
    "10_nvcaffe016_alexnet_fp16_8gpu.log": (
        {("train", "smoothed_loss"): 288, ("train", "lr"): 284, ("train", "speed"): 288,
         ("train", "accuracy/top-1"): 286, ("train", "loss"): 285,
         ("test", "accuracy/top-1"): 6, ("test", "accuracy/top-5"): 6, ("test", "loss"): 6},
        {"start": 1},  # 8 GPU threads print "Solving AlexNet_fp16"
    ),
    "12_ssd2017_multigpu_nan.log": (
        {("train", "smoothed_loss"): 34, ("train", "lr"): 34, ("train", "mbox_loss"): 34},
        {"resume": 1, "start": 1},
    ),
    "13_ssd2019_detection_eval_full.log": (
        {("train", "smoothed_loss"): 101, ("train", "lr"): 100, ("train", "mbox_loss"): 100,
         ("test", "detection_eval"): 20},
        {"snapshot": 10, "done": 1, "start": 1},
    ),
}


def test_every_log_has_expectations():
    if not CAFFE_LOGS.is_dir():
        pytest.skip(f"shared test data not present: {CAFFE_LOGS}")
    assert sorted(p.name for p in CAFFE_LOGS.glob("*.log")) == sorted(EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_counts_per_phase_name_and_event(name):
    records = parse(name)
    metric_counts = Counter((r["phase"], r["name"]) for r in records if "event" not in r)
    event_counts = Counter(r["event"] for r in records if "event" in r)
    expected_metrics, expected_events = EXPECTED_COUNTS[name]
    assert dict(metric_counts) == expected_metrics
    assert dict(event_counts) == expected_events
    for r in records:
        if "event" in r:
            assert "name" not in r and "value" not in r
        else:
            assert r["epoch"] is None and r["batch"] is None
            assert (r["net"] is not None) == (r["phase"] == "test")
            assert type(r["step"]) is int


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_block_parsing_equals_line_parsing(name):
    """parse_block (one regex scan per block) gives what parse_line gives line by line."""
    text = log_path(name).read_bytes().decode("utf-8", "replace")
    assert comparable(CaffeLogParser(year=YEAR).parse_block(text)) == comparable(parse(name))


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_fast_path_equals_general_path(name, monkeypatch):
    """The one-regex fast path for the common lines gives what the general path gives."""
    fast = parse(name)
    monkeypatch.setattr(caffe, "_HOT", re.compile(r"(?!)"))
    assert comparable(parse(name)) == comparable(fast)


def test_01_bvlc2014_lr_before_loss_and_test_scores():
    r = parse("01_bvlc2014_trainnet_testscore.log")
    # line 276-277: "I0728 17:31:06.379266 ... Iteration 40, lr = 0.01" then "... 17:31:06.379847 ... Iteration 40, loss = 6.90074"
    assert at(r, "train", "lr", 40) == 0.01
    assert at(r, "train", "smoothed_loss", 40) == 6.90074
    loss40 = metrics(r, "train", "smoothed_loss")[0]
    assert loss40["ts"] == pytest.approx(utc(YEAR, 7, 28, 17, 31, 6, 379847), abs=1e-6)
    # lines 376-378: "Iteration 2000, Testing net" / "Test score #0: 0.00518" / "Test score #1: 6.73475"
    assert at(r, "test", "score#0", 2000) == 0.00518
    assert at(r, "test", "score#1", 2000) == 6.73475
    assert {m["net"] for m in metrics(r, "test", "score#0")} == {0}
    # lines 2955-2957: the last test, at 52000
    assert at(r, "test", "score#0", 52000) == 0.24724
    assert at(r, "test", "score#1", 52000) == 3.78158
    # lines 2999-3000: the log is cut after "Iteration 52880, lr = 0.01"
    assert metrics(r, "train", "smoothed_loss")[-1]["step"] == 52840
    assert metrics(r, "train", "lr")[-1]["step"] == 52880
    # lines 1306-1307: "Snapshotting to imagenet-clarifai_train_iter_20000" (+ solver state)
    snaps = [(e["step"], e["kind"], e["path"]) for e in r if e.get("event") == "snapshot"]
    assert snaps[:2] == [(20000, "model", "imagenet-clarifai_train_iter_20000"),
                         (20000, "solverstate", "imagenet-clarifai_train_iter_20000.solverstate")]
    assert [s[0] for s in snaps] == [20000, 20000, 40000, 40000]


def test_02_bvlc2015_values_order_and_done():
    r = parse("02_bvlc2015_rmsprop_solvercpp.log")
    # lines 501-506: the test at iteration 0 comes first, then the iteration 0 train lines
    assert at(r, "test", "accuracy", 0) == 0.1453
    assert at(r, "test", "loss", 0) == 2.30211
    assert at(r, "train", "loss", 0) == 2.30193
    assert at(r, "train", "lr", 0) == 0.01
    # lines 507-509
    assert at(r, "train", "smoothed_loss", 100) == 0.138344
    assert at(r, "train", "lr", 100) == 0.00992565
    # lines 865-869: the last loss line, the last test, "Optimization Done." (printed twice)
    assert at(r, "train", "smoothed_loss", 10000) == 0.0112414
    assert at(r, "test", "accuracy", 10000) == 0.9909
    assert at(r, "test", "loss", 10000) == 0.0279827
    done = [e for e in r if e.get("event") == "done"]
    assert [e["step"] for e in done] == [10000] and r[-1] is done[0]
    # lines 681-682, 863-864: the snapshot at 10000 is printed before "Iteration 10000, loss"
    snaps = [(e["step"], e["kind"]) for e in r if e.get("event") == "snapshot"]
    assert snaps == [(5000, "model"), (5000, "solverstate"), (10000, "model"), (10000, "solverstate")]
    start = [e for e in r if e.get("event") == "start"]
    assert start[0]["net_name"] == "LeNet"
    assert start[0]["ts"] == pytest.approx(utc(YEAR, 2, 16, 11, 58, 37, 838096), abs=1e-6)  # line 499


def test_03_header_year_resume_and_multi_output_names():
    # The header "Log file created at: 2015/07/03 14:40:16" overrides the year given.
    r = parse("03_jin2015_googlenet_restore_diverge.log", CaffeLogParser(year=1999))
    # line 6385: "I0703 14:40:21.199852 30328 solver.cpp:189] Iteration 24000, loss = 7.01314"
    first = metrics(r, "train", "smoothed_loss")[0]
    assert (first["step"], first["value"]) == (24000, 7.01314)
    assert first["ts"] == pytest.approx(utc(2015, 7, 3, 14, 40, 21, 199852), abs=1e-6)
    resume = [e for e in r if e.get("event") == "resume"]
    assert len(resume) == 1  # lines 6370 and 6373 name the same file
    assert resume[0]["path"] == "models/bvlc_googlenet/result_scratch_0703/bvlc_googlenet_quick_iter_24000.solverstate"
    assert resume[0]["step"] == 24000
    # lines 6376-6384: the test at 24000, names with "/" and "-"; the value before "(* w = u loss)"
    assert at(r, "test", "loss1/loss1", 24000) == 11.3731
    assert at(r, "test", "loss3/top-5", 24000) == 0.548
    # lines 6390-6393: the divergence
    assert at(r, "train", "loss3/loss3", 24040) == 87.3365
    assert at(r, "train", "smoothed_loss", 24200) == 90.5487
    # line 6415, the last: "Iteration 24240, Testing net (#0)" with no outputs after it
    assert max(m["step"] for m in r if "event" not in m) == 24200


def test_06_fatal_crash_before_the_run_is_ignored():
    r = parse("06_ducha2016_crash_then_run_killed.log")
    # lines 1-12: F-line, "*** Check failure stack trace: ***", "@ 0x..." frames: nothing
    assert r[0]["event"] == "start"
    # lines 1536-1538
    assert at(r, "train", "smoothed_loss", 0) == 7.36924
    assert at(r, "train", "loss", 0) == 7.36924
    assert {m["value"] for m in metrics(r, "train", "lr")} == {1.0}
    # lines 1687-1690, with a blocking_queue.cpp line between the header and the outputs
    assert at(r, "test", "accuracy", 1000) == 0.001
    assert at(r, "test", "loss", 1000) == 6.91135
    assert metrics(r, "train", "loss")[-1]["step"] == 1200 and metrics(r, "train", "loss")[-1]["value"] == 6.9048


def test_09_speed_field_and_trailing_empty_line():
    r = parse("09_bvlc2017_cpu_speedfield_short.log")
    # line 255: "Iteration 0 (-1.02432e-37 iter/s, 0.199s/100 iters), loss = 2.40473" (as printed)
    # line 258: "Iteration 100 (4.71409 iter/s, 21.213s/100 iters), loss = 0.224371"
    speeds = metrics(r, "train", "speed")
    assert [(s["step"], s["value"], s["unit"]) for s in speeds] == [(0, -1.02432e-37, "iter/s"), (100, 4.71409, "iter/s")]
    assert [m["value"] for m in metrics(r, "train", "smoothed_loss")] == [2.40473, 0.224371]
    assert [m["value"] for m in metrics(r, "train", "lr")] == [0.01, 0.00992565]


def test_10_nvcaffe_8gpu_speed_forms_and_interleaved_threads():
    r = parse("10_nvcaffe016_alexnet_fp16_8gpu.log")
    # lines 1729, 1807: "Iteration 0 (5.99239 s), loss = 6.92188", "Iteration 1 (2.27286 s), loss = 6.91797"
    # line 1808: "Iteration 2 (8.02912 iter/s, 0.124547s/100 iter), loss = 6.90625"
    speeds = metrics(r, "train", "speed")
    assert [s["step"] for s in speeds[:3]] == [0, 1, 2]
    assert speeds[0]["value"] == pytest.approx(1 / 5.99239)
    assert speeds[1]["value"] == pytest.approx(1 / 2.27286)
    assert speeds[2]["value"] == 8.02912
    assert at(r, "train", "smoothed_loss", 0) == 6.92188
    # lines 1809-1810: the first train outputs, at iteration 2 (NVCaffe prints none at 0 and 1)
    assert at(r, "train", "accuracy/top-1", 2) == 0.0078125
    assert metrics(r, "train", "lr")[0]["step"] == 100 and metrics(r, "train", "lr")[0]["value"] == 0.019968
    # lines 1520-1538: the initial test, with lines of 7 other threads in between
    assert at(r, "test", "accuracy/top-1", 0) == 0.0
    assert at(r, "test", "accuracy/top-5", 0) == 0.00015625
    assert at(r, "test", "loss", 0) == 0.0345313
    # lines 2011-2015: a data_reader.cpp line of thread 73498 between "Testing net" and the outputs
    assert at(r, "test", "accuracy/top-1", 5000) == 0.329844
    assert at(r, "test", "loss", 25000) == 2.35985
    assert [m["step"] for m in metrics(r, "test", "loss")] == [0, 5000, 10000, 15000, 20000, 25000]
    # the log is cut after "Train net output #0: accuracy/top-1 = 0.5" of iteration 28500
    assert metrics(r, "train", "accuracy/top-1")[-1]["step"] == 28500
    assert metrics(r, "train", "loss")[-1]["step"] == 28400


def test_12_nan_values_are_kept():
    r = parse("12_ssd2017_multigpu_nan.log")
    # every "Iteration N, loss = nan" (34 lines); mbox_loss is nan on 17 lines and 0 on 17
    assert all(math.isnan(m["value"]) for m in metrics(r, "train", "smoothed_loss"))
    mbox = metrics(r, "train", "mbox_loss")
    assert sum(math.isnan(m["value"]) for m in mbox) == 17
    assert sum(m["value"] == 0.0 for m in mbox) == 17
    assert at(r, "train", "mbox_loss", 140) == 0.0  # line 5361
    assert math.isnan(at(r, "train", "mbox_loss", 150))  # line 5364
    assert [m["step"] for m in mbox][-1] == 470
    resume = [e for e in r if e.get("event") == "resume"]
    assert [(e["step"], e["path"]) for e in resume] == [
        (138, "models/VGGNet/VOC0712/SSD_300x300/VGG_VOC0712_SSD_300x300_iter_138.solverstate")]


def test_13_ssd_detection_eval_snapshots_and_done():
    r = parse("13_ssd2019_detection_eval_full.log")
    assert at(r, "test", "detection_eval", 50) == 0.90878  # line 5369
    assert at(r, "test", "detection_eval", 1000) == 0.980258  # line 5726
    assert at(r, "train", "mbox_loss", 0) == 1.7427  # line 5353
    assert at(r, "train", "smoothed_loss", 1000) == 2.71104  # line 5723
    assert metrics(r, "train", "lr")[-1]["value"] == 2.5e-07
    snaps = [(e["step"], e["kind"]) for e in r if e.get("event") == "snapshot"]
    assert snaps == [(s, k) for s in (200, 400, 600, 800, 1000) for k in ("model", "solverstate")]
    assert [e for e in r if e.get("event") == "snapshot"][0]["path"] == (
        "models/VGGNet/ccpd/SSD_300x300/VGG_ccpd_SSD_300x300_iter_200.caffemodel")
    assert [e["step"] for e in r if e.get("event") == "done"] == [1000]
    # "MultiStep Status: Iteration 200, step = 1" (3 lines) is no iteration line: lr is 100, not 103


# -- hand-made lines -----------------------------------------------------------------------------
def line(date: str, time: str, msg: str, tid: int = 100, level: str = "I", src: str = "solver.cpp:228") -> str:
    return f"{level}{date} {time} {tid:5d} {src}] {msg}"


def test_year_rolls_over_when_the_month_goes_back():
    p = CaffeLogParser(year=2015)
    a = p.parse_line(line("1231", "23:59:59.500000", "Iteration 10, loss = 1"))[0]
    b = p.parse_line(line("0101", "00:00:00.500000", "Iteration 20, loss = 1"))[0]
    c = p.parse_line(line("0215", "08:00:00.000000", "Iteration 30, loss = 1"))[0]
    assert a["ts"] == utc(2015, 12, 31, 23, 59, 59, 500000)
    assert b["ts"] == utc(2016, 1, 1, 0, 0, 0, 500000)
    assert c["ts"] == utc(2016, 2, 15, 8, 0, 0, 0)
    assert b["ts"] - a["ts"] == pytest.approx(1.0)


def test_late_lines_across_new_year_and_month_end_do_not_shift_the_year():
    p = CaffeLogParser(year=2015)
    p.parse_line(line("1231", "23:59:59.000000", "Iteration 1, loss = 1"))
    jan = p.parse_line(line("0101", "00:00:00.000100", "Iteration 2, loss = 1", tid=1))[0]
    late = p.parse_line(line("1231", "23:59:59.999900", "Iteration 2, lr = 1", tid=2))[0]  # another thread
    after = p.parse_line(line("0101", "00:00:01.000000", "Iteration 3, loss = 1", tid=1))[0]
    assert jan["ts"] == utc(2016, 1, 1, 0, 0, 0, 100)
    assert late["ts"] == utc(2015, 12, 31, 23, 59, 59, 999900)
    assert after["ts"] == utc(2016, 1, 1, 0, 0, 1, 0)
    q = CaffeLogParser(year=2015)
    q.parse_line(line("0501", "00:00:00.000100", "Iteration 2, loss = 1"))
    apr = q.parse_line(line("0430", "23:59:59.999900", "Iteration 2, lr = 1", tid=2))[0]
    may = q.parse_line(line("0501", "00:00:02.000000", "Iteration 3, loss = 1"))[0]
    assert apr["ts"] == utc(2015, 4, 30, 23, 59, 59, 999900)
    assert may["ts"] == utc(2015, 5, 1, 0, 0, 2, 0)


def test_header_and_prefix_with_year():
    p = CaffeLogParser(year=1999)
    assert p.parse_line("Log file created at: 2015/07/03 14:40:16") == []
    r = p.parse_line(line("0703", "14:40:21.199852", "Iteration 5, loss = 2"))[0]
    assert r["ts"] == utc(2015, 7, 3, 14, 40, 21, 199852)
    r = p.parse_line("I20261122 02:12:22.480465 26796 solver.cpp:231] Iteration 7, loss = 3")[0]
    assert (r["ts"], r["step"]) == (utc(2026, 11, 22, 2, 12, 22, 480465), 7)
    r = p.parse_line(line("1123", "00:00:00.000000", "Iteration 8, loss = 3"))[0]  # no year: 2026 goes on
    assert r["ts"] == utc(2026, 11, 23, 0, 0, 0, 0)


def test_interleaved_threads_keep_their_own_iteration_and_test():
    p = CaffeLogParser(year=2017)
    out = []
    for tid, msg in [
        (1, "Iteration 200, loss = 0.5"),
        (2, "Iteration 100, Testing net (#1)"),
        (1, "    Train net output #0: loss = 0.4 (* 1 = 0.4 loss)"),
        (3, "Restarting data pre-fetching"),
        (2, "    Test net output #0: accuracy = 0.9"),
        (1, "Iteration 200, lr = 0.01"),
        (2, "    Test net output #1: loss = 0.3 (* 1 = 0.3 loss)"),
    ]:
        out += p.parse_line(line("0404", "19:15:30.000000", msg, tid=tid))
    got = [(r["phase"], r["name"], r["step"], r["net"]) for r in out]
    assert got == [("train", "smoothed_loss", 200, None), ("train", "loss", 200, None),
                   ("test", "accuracy", 100, 1), ("train", "lr", 200, None), ("test", "loss", 100, 1)]
    # a thread with no state of its own uses the last one of any thread
    r = p.parse_line(line("0404", "19:15:31.000000", "    Train net output #0: loss = 1", tid=9))[0]
    assert r["step"] == 200


def test_nvcaffe_forms_snapshots_and_events():
    p = CaffeLogParser(year=2018)
    recs = []
    for msg in [
        "Iteration 300 (16.1 iter/s, 6.2s/100 iter), 1.1/90.9ep, loss = 2.5",
        "Iteration 300, lr = 0.02, m = 0.9, wd = 0.0005, gs = 1",
        "Snapshotting to binary proto file snap/x_iter_300.caffemodel",
        "Snapshotting solver state to binary proto file snap/x_iter_300.solverstate",
        "Snapshotting to HDF5 file snap/y_iter_300.caffemodel.h5",
        "Snapshotting solver state to HDF5 file snap/y_iter_300.solverstate.h5",
        "Snapshotting to snap/z",
        "Test interrupted.",
        "Optimization stopped early.",
        "Optimization Done.",
    ]:
        recs += p.parse_line(line("0101", "00:00:00.000000", msg))
    assert [(r["name"], r["value"]) for r in recs if "event" not in r] == [
        ("speed", 16.1), ("smoothed_loss", 2.5), ("lr", 0.02)]
    events = [(r["event"], r.get("kind"), r.get("path"), r["step"]) for r in recs if "event" in r]
    assert events == [
        ("snapshot", "model", "snap/x_iter_300.caffemodel", 300),
        ("snapshot", "solverstate", "snap/x_iter_300.solverstate", 300),
        ("snapshot", "model", "snap/y_iter_300.caffemodel.h5", 300),
        ("snapshot", "solverstate", "snap/y_iter_300.solverstate.h5", 300),
        ("snapshot", "model", "snap/z", 300),
        ("test_interrupted", None, None, 300),
        ("stopped", None, None, 300),  # and no "done": caffe.cpp prints "Optimization Done." after a stop too
    ]


def test_lines_without_glog_prefix_and_other_levels():
    p = CaffeLogParser(year=2018)
    assert p.parse_line("Iteration 10, loss = 0.5")[0]["ts"] is None
    r = p.parse_line("    Train net output #0: loss = 0.25 (* 1 = 0.25 loss)")[0]
    assert (r["step"], r["value"], r["ts"]) == (10, 0.25, None)
    assert p.parse_line(line("0101", "00:00:00.000000", "Iteration 11, loss = 9", level="W")) == []
    assert p.parse_line(line("0101", "00:00:00.000000", "Iteration 11, loss = 9", level="F")) == []
    # a test output with no "Testing net" before it (a cut log): the last iteration, net 0
    r = CaffeLogParser().parse_line("    Test net output #0: accuracy = 0.5")[0]
    assert (r["step"], r["net"], r["phase"]) == (None, 0, "test")


@pytest.mark.parametrize("text,expected", [
    ("nan", "nan"), ("-nan", "nan"), ("-nan(ind)", "nan"), ("1.#QNAN", "nan"),
    ("inf", math.inf), ("-inf", -math.inf), ("1.#INF", math.inf), ("2.5e-05", 2.5e-05),
])
def test_number_forms(text, expected):
    p = CaffeLogParser(year=2018)
    r = p.parse_line(line("0101", "00:00:00.000000", f"    Train net output #0: loss = {text} (* 1 = {text} loss)"))
    value = r[0]["value"]
    assert math.isnan(value) if expected == "nan" else value == expected


GARBAGE = [
    "", " ", "\x00\x01\x02", "]]]]", "] Iteration", "] Iteration ", "] Test net output #",
    "I0101 00:00:00.000000 1 x.cpp:1] Iteration 99999999999999999999999999999, loss = 1",
    "I0101 00:00:00.000000 1 x.cpp:1] Iteration 5, loss = banana",
    "I0101 00:00:00.000000 1 x.cpp:1]     Train net output #0: loss = ",
    "I1399 25:61:61.000000 1 x.cpp:1] Iteration 5, loss = 1",
    "I0000 00:00:00.0 1 x.cpp:1] Iteration 5, loss = 1",
    "*** Check failure stack trace: ***",
    "    @     0x7f02fd7c985d  google::LogMessage::Fail()",
    "F0124 12:16:04.110388 11870 io.cpp:36] Check failed: fd != -1 (-1 vs. -1) File not found: x",
    "Log file created at: 9999/99/99 99:99:99",
    "Snapshotting to ", "Resuming from ", "Test score #: ",
    os.urandom(4096).decode("utf-8", "replace"),
    "I0101 00:00:00.000000 1 x.cpp:1] Iteration " + "9" * (10 << 20),
    "I0101 00:00:00.000000 1 x.cpp:1] " + "] Test" * (2 << 20),
    "Iteration 1, loss = " + "1" * (10 << 20),
    "x" * (10 << 20),
]


def test_garbage_never_raises():
    p = CaffeLogParser(year=2018)
    for text in GARBAGE:
        records = p.parse_line(text)
        assert isinstance(records, list)
    assert isinstance(p.parse_block("\n".join(GARBAGE)), list)
    # the month-13 prefix gives no timestamp rather than an error
    r = CaffeLogParser(year=2018).parse_line("I1399 25:61:61.000000 1 x.cpp:1] Iteration 5, loss = 1")
    assert r[0]["ts"] is None and r[0]["value"] == 1.0


def test_state_carries_across_calls():
    p = CaffeLogParser(year=2016)
    assert p.parse_line(line("0124", "12:20:27.016808", "Iteration 1000, Testing net (#0)")) == []
    assert p.parse_line("") == []
    assert p.parse_line("some unrelated line") == []
    r = p.parse_line(line("0124", "12:22:07.265573", "    Test net output #0: accuracy = 0.001"))[0]
    assert (r["step"], r["net"]) == (1000, 0)
    p.parse_line(line("0124", "12:22:07.300000", "Iteration 1000, loss = 6.9"))
    r = p.parse_line(line("0124", "12:22:07.300001", "    Train net output #0: loss = 6.9 (* 1 = 6.9 loss)"))[0]
    assert (r["phase"], r["step"], r["net"]) == ("train", 1000, None)
