"""Property tests: the Caffe, MXNet and ``--metric`` parsers never raise on arbitrary text or on
mutated real log lines, and every record they emit is a valid CONTRACT.md section-5 record once
the writer's fields are added (it goes through the jsonl encoder and back through a strict
JSON parser)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ava.errors import UsageError
from ava.metrics.record import PHASES, make_record, to_json_number
from ava.metrics.sinks.jsonl import encode_line
from ava.monitor import caffe
from ava.monitor.caffe import CaffeLogParser
from ava.monitor.mxnet_log import MXNetLogParser
from ava.monitor.regex import RegexParser

FUZZ = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TESTDATA = Path(__file__).resolve().parents[3].parent / "shared" / "testdata"

# Real line shapes, kept here so that the test does not depend on the shared folder.
CAFFE_TEMPLATES = [
    "Log file created at: 2016/01/24 12:16:20",
    "I0124 12:16:25.502713 11911 solver.cpp:236] Iteration 0, loss = 7.36924",
    "I0124 12:16:25.502769 11911 solver.cpp:252]     Train net output #0: loss = 7.36924 (* 1 = 7.36924 loss)",
    "I0124 12:16:25.502780 11911 sgd_solver.cpp:106] Iteration 0, lr = 1",
    "I0216 11:58:37.838112 17497 solver.cpp:267] Iteration 0, Testing net (#0)",
    "I0216 11:58:39.608211 17497 solver.cpp:318]     Test net output #0: accuracy = 0.1453",
    "I0216 11:58:39.608300 17497 solver.cpp:318]     Test net output #1: loss = 2.30211 (* 1 = 2.30211 loss)",
    "I0728 23:55:39.066728  4259 solver.cpp:218] Iteration 0 (-1.02432e-37 iter/s, 0.199s/100 iters), loss = 2.40473",
    "I20160404 19:15:31.443634 73500 solver.cpp:543]     Test net output #1: accuracy/top-5 = 0.00015625",
    "I1226 10:39:44.034162 48847 solver.cpp:243] Iteration 140, loss = nan",
    "I0404 19:15:30.955325 73500 solver.cpp:453] Iteration 1 (0.43 s), loss = -nan(ind)",
    "I0728 17:31:06.379266 18298 solver.cpp:237] Iteration 40, lr = 0.01, m = 0.9, wd = 0.0005, gs = 1",
    "I0728 17:31:36.560282 18298 solver.cpp:237] Iteration 80, Testing net",
    "I0728 17:31:36.560282 18298 solver.cpp:237]     Test score #0: 1.#QNAN",
    "I0516 15:18:16.675149  7124 solver.cpp:464] Snapshotting to binary proto file snap/ssd_iter_500.caffemodel",
    "I0516 15:18:16.675149  7124 sgd_solver.cpp:273] Snapshotting solver state to binary proto file snap/ssd_iter_500.solverstate",
    "I0516 15:18:16.675149  7124 caffe.cpp:129] Resuming from snap/ssd_iter_500.solverstate",
    "I0516 15:18:16.675149  7124 solver.cpp:346] Restoring previous solver status from snap/ssd_iter_500.solverstate",
    "I0516 15:18:16.675149  7124 solver.cpp:279] Solving VGG_VOC0712_SSD_300x300",
    "I0516 15:18:16.675149  7124 solver.cpp:339] Optimization Done.",
    "I0516 15:18:16.675149  7124 solver.cpp:339] Optimization stopped early.",
    "I0516 15:18:16.675149  7124 solver.cpp:339] Test interrupted.",
    "F0516 15:18:16.675149  7124 solver.cpp:339] Check failed: error == cudaSuccess (2 vs. 0)  out of memory",
    "Iteration 5, loss = 1e400",
]
MXNET_TEMPLATES = [
    "INFO:root:Epoch[0] Batch [100]\tSpeed: 652.68 samples/sec\tTrain-accuracy=0.002617",
    "INFO:root:Epoch[0] Batch [20]\tSpeed: 142.33 samples/sec\taccuracy=0.562500",
    "Epoch[0] Batch [49]\tSpeed: 1934.811369 samples/sec\taccuracy=0.868184\tlr=0.003133",
    "2017-01-01 12:00:00,123 Epoch[1] Batch [0-99]\tSpeed: 90.0 samples/sec\tcross-entropy=nan",
    "INFO:root:Epoch[0] Train-accuracy=0.7",
    "INFO:root:Epoch[0] Validation-top_k_accuracy_5=inf",
    "INFO:root:Epoch[0] Time cost=120.5",
    "Start training from [Epoch 0]",
    "[Epoch 0][Batch 99], Speed: 92.447021 samples/sec, CrossEntropy=7.182524, SmoothL1=2.768559",
    "[Epoch 3] training: accuracy=0.5 loss=1.2",
    "[Epoch 3] speed: 512 samples/sec\ttime cost: 88.1",
    "[Epoch 3] Training cost: 88.1, CrossEntropy=1.5",
    "[Epoch 3] Validation: ",
    "aeroplane=0.71",
    "mAP=0.77",
    'INFO:root:Saved checkpoint to "model/resnet-0003.params"',
    'INFO:root:Saved optimizer state to "model/resnet-0003.states"',
    "INFO:root:Update[3000]: Change learning rate to 1.00000e-02",
    "\x1b[32mINFO\x1b[0m:root:Epoch[2] Validation-accuracy=0.9",
    "train.py[line:42] - INFO: Epoch[4] Batch [7]  Speed: 1.0 samples/sec  acc=-nan(ind)",
]
# Number forms and pieces of syntax the parsers give meaning to, for the mutations.
TOKENS = ["nan", "-nan", "inf", "-inf", "1.#QNAN", "1.#INF", "-nan(ind)", "1e400", "-1e-400", "1_0",
          "9" * 40, "0.5.1", "", " ", "\t", "\r", "\n", "]", "] ", "[", "#", "=", ",", ":", "(", ")", "(*",
          "Iteration ", ", loss = ", ", lr = ", "Testing net (#", "net output #", "Epoch[", "Batch [",
          "[Epoch ", "Speed: ", "samples/sec", "iter/s", "_iter_", "Train-", "Validation-", "\x1b[",
          "I1399 25:61:61.000000 1 x.cpp:1] ", "I0229 00:00:00.0 7 a.cpp:1] ", "I99991231 ", "\x00", "\ufffd"]
text = st.text(st.characters(codec="utf-8"), max_size=200)


def _real_lines(folder: str, pattern: str, limit: int = 400) -> list[str]:
    path = TESTDATA / folder
    if not path.is_dir():
        return []
    keep = re.compile(pattern)
    found: list[str] = []
    for log in sorted(path.glob("*.log")):
        lines = [ln for ln in log.read_bytes().decode("utf-8", "replace").splitlines() if keep.search(ln)]
        step = max(1, len(lines) // (limit // 8))
        found += lines[::step]
    return found


REAL_CAFFE = _real_lines("caffe_logs", r"Iteration|net output|Test score|Snapshot|Restoring|Resuming|Optimization|Solving|created at")
REAL_MXNET = _real_lines("mxnet_logs", r"Epoch|Saved|learning rate|=")


@st.composite
def mutated(draw, templates: list[str]) -> str:
    """A template line with a few random edits: tokens or text inserted, slices cut or swapped,
    and numbers replaced by other number forms."""
    line = draw(st.sampled_from(templates))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(line)))
        action = draw(st.sampled_from(["insert", "token", "cut", "number", "repeat"]))
        if action == "insert":
            line = line[:pos] + draw(st.text(max_size=8)) + line[pos:]
        elif action == "token":
            line = line[:pos] + draw(st.sampled_from(TOKENS)) + line[pos:]
        elif action == "cut":
            end = draw(st.integers(pos, len(line)))
            line = line[:pos] + line[end:]
        elif action == "number":
            numbers = list(re.finditer(r"[-+]?\d[\d.eE+-]*|nan|inf", line))
            if numbers:
                m = draw(st.sampled_from(numbers))
                new = draw(st.one_of(st.sampled_from(TOKENS[:11]), st.floats().map(repr), st.integers().map(str)))
                line = line[:m.start()] + new + line[m.end():]
        else:
            end = draw(st.integers(pos, min(len(line), pos + 20)))
            line = line[:pos] + line[pos:end] * draw(st.integers(2, 5)) + line[end:]
    return line


def _strict_json(text: str):
    def refuse(name: str):
        raise AssertionError(f"{name} is not JSON: {text!r}")

    return json.loads(text, parse_constant=refuse)


def check_records(records, *, caffe: bool = False) -> None:
    """Each record has the contract's shape and survives the jsonl encoder and a strict parser."""
    assert isinstance(records, list)
    for seq, rec in enumerate(records):
        assert isinstance(rec, dict)
        ts, step = rec.get("ts"), rec.get("step")
        assert ts is None or (type(ts) is float and math.isfinite(ts)), rec
        assert step is None or type(step) is int, rec
        if "event" in rec:
            assert isinstance(rec["event"], str) and rec["event"], rec
            assert "name" not in rec and "value" not in rec, rec
            line = {k: to_json_number(v) if type(v) is float else v for k, v in rec.items()}
            line.update(rank=0, seq=seq)
            assert _strict_json(encode_line(line).decode("utf-8")) == line
            continue
        assert set(rec) <= {"ts", "step", "epoch", "batch", "phase", "name", "value", "net", "unit"}, rec
        assert rec["phase"] in PHASES, rec
        assert isinstance(rec["name"], str) and rec["name"] and rec["name"].strip() == rec["name"], rec
        assert type(rec["value"]) in (int, float), rec
        for key in ("epoch", "batch", "net"):
            assert rec.get(key) is None or type(rec[key]) is int, rec
        assert rec.get("unit") is None or isinstance(rec["unit"], str), rec
        if caffe and rec["phase"] == "test":
            assert type(rec.get("net")) is int, rec
        full = make_record(ts if ts is not None else 0.0, step, rec.get("epoch"), rec.get("batch"), rec["phase"],
                           rec["name"], to_json_number(rec["value"]), rank=0, seq=seq, net=rec.get("net"),
                           unit=rec.get("unit"))
        back = _strict_json(encode_line(full).decode("utf-8"))
        assert back == full
        value = rec["value"]
        if math.isfinite(value):
            assert back["value"] == value
        else:
            assert back["value"] == ("nan" if value != value else "inf" if value > 0 else "-inf")


def comparable(records):
    return [{**r, "value": "NaN"} if r.get("value") != r.get("value") else r for r in records]


# -- Caffe ---------------------------------------------------------------------------------------
caffe_lines = st.one_of(text, mutated(CAFFE_TEMPLATES), st.sampled_from(CAFFE_TEMPLATES))


@FUZZ
@given(lines=st.lists(caffe_lines, max_size=12), year=st.one_of(st.none(), st.integers(-5, 10_000)))
@example(lines=["I1231 23:59:59.9 1 a.cpp:1] Iteration 1, loss = 1"] * 2, year=9999)
@example(lines=["I0101 00:00:00.0 1 a.cpp:1] Iteration 1, loss = 1"], year=0)
@example(lines=["I0229 00:00:00.0 1 a.cpp:1] Iteration 1, loss = 1"], year=2001)
def test_caffe_parse_line_never_raises_and_emits_contract_records(lines, year):
    p = CaffeLogParser(year=year)
    for line in lines:
        check_records(p.parse_line(line), caffe=True)


@FUZZ
@given(lines=st.lists(caffe_lines, max_size=12), sep=st.sampled_from(["\n", "\r", "\r\n"]))
def test_caffe_parse_block_equals_parse_line(lines, sep):
    text_block = sep.join(lines)
    by_line: list[dict] = []
    p = CaffeLogParser(year=2016)
    for line in re.split(r"[\r\n]", text_block):
        by_line += p.parse_line(line)
    block = CaffeLogParser(year=2016).parse_block(text_block)
    check_records(block, caffe=True)
    assert comparable(block) == comparable(by_line)


@FUZZ
@given(lines=st.lists(caffe_lines, max_size=12))
def test_caffe_fast_path_equals_general_path(lines):
    """The one-regex fast path for the common lines reads them as the general path does."""
    fast, general = CaffeLogParser(year=2016), CaffeLogParser(year=2016)
    expected: list[dict] = []
    got: list[dict] = []
    for line in lines:
        got += fast.parse_line(line)
    with mock.patch.object(caffe, "_HOT", re.compile(r"(?!)")):
        for line in lines:
            expected += general.parse_line(line)
    assert comparable(got) == comparable(expected)


@pytest.mark.skipif(not REAL_CAFFE, reason="shared/testdata/caffe_logs not present")
@FUZZ
@given(lines=st.lists(st.one_of(mutated(REAL_CAFFE or ["x"]), st.sampled_from(REAL_CAFFE or ["x"])), max_size=20))
def test_caffe_mutated_real_lines(lines):
    p = CaffeLogParser(year=2016)
    for line in lines:
        check_records(p.parse_line(line), caffe=True)
    check_records(CaffeLogParser(year=2016).parse_block("\n".join(lines)), caffe=True)


# -- MXNet ---------------------------------------------------------------------------------------
mxnet_lines = st.one_of(text, mutated(MXNET_TEMPLATES), st.sampled_from(MXNET_TEMPLATES))


@FUZZ
@given(lines=st.lists(mxnet_lines, max_size=12))
@example(lines=["0000-01-01 00:00:00 Epoch[0] Train-a=1"])
@example(lines=["9999-12-31 23:59:59,999999999 Epoch[0] Train-a=1"])
@example(lines=["2017-02-31 99:99:99 Epoch[0] Train-a=1"])
def test_mxnet_parse_line_never_raises_and_emits_contract_records(lines):
    p = MXNetLogParser()
    for line in lines:
        check_records(p.parse_line(line))


@pytest.mark.skipif(not REAL_MXNET, reason="shared/testdata/mxnet_logs not present")
@FUZZ
@given(lines=st.lists(st.one_of(mutated(REAL_MXNET or ["x"]), st.sampled_from(REAL_MXNET or ["x"])), max_size=20))
def test_mxnet_mutated_real_lines(lines):
    p = MXNetLogParser()
    for line in lines:
        check_records(p.parse_line(line))


# -- --metric NAME=REGEX ---------------------------------------------------------------------------
SPECS = [r"loss=Iteration (?P<step>\d+), loss = (\S+)", r"acc=acc(?:uracy)?[:=]\s*(\S+)",
         r"lr=lr = ([-+.\w#()]+)", r"any=(.*)", r"empty=()", r"opt=x(\d+)?"]


@FUZZ
@given(lines=st.lists(st.one_of(text, mutated(CAFFE_TEMPLATES + MXNET_TEMPLATES)), max_size=12))
@example(lines=["Iteration 99999999999999999999999, loss = 1", "Iteration 1e5, loss = nan", "acc: 1e400"])
def test_regex_parse_line_never_raises_and_emits_contract_records(lines):
    p = RegexParser.from_specs(SPECS)
    for line in lines:
        check_records(p.parse_line(line))


@FUZZ
@given(specs=st.lists(st.one_of(text, st.builds("{}={}".format, text, text)), min_size=1, max_size=3),
       line=text)
@example(specs=["x=a{99999999999}()"], line="a")
@example(specs=["x=(?P<step>a)"], line="a")
@example(specs=["x=(?P<step>\\d+)(\\d)"], line="12")
def test_metric_specs_raise_only_usage_errors(specs, line):
    try:
        p = RegexParser.from_specs(specs)
    except UsageError:
        return
    check_records(p.parse_line(line))
