import json
import os
import random
import signal
import subprocess
import sys

import pytest

from ava.errors import InstanceError
from ava.metrics.sinks.jsonl import LINE_RESERVE, PAGE, JsonlSink, frame_lines, iter_records


def rec(seq, rank=0, name="loss"):
    return {"ts": 1.0, "step": seq, "phase": "train", "name": name, "value": 0.5, "rank": rank, "seq": seq}


@pytest.mark.parametrize("longest", [400, 1500])
def test_framed_lines_never_straddle_a_page_and_still_parse(longest):
    rng = random.Random(longest)
    offset = 0
    reserve = LINE_RESERVE
    for _ in range(300):
        lines = [json.dumps({"n": "x" * rng.randint(0, longest)}).encode() + b"\n" for _ in range(rng.randint(1, 40))]
        if len(lines[0]) > reserve:
            offset += PAGE - offset % PAGE  # a line longer than any before: only it may land anywhere
        reserve = max(reserve, *map(len, lines))
        framed = frame_lines(lines, offset, reserve)
        pos = offset
        for original, line in zip(lines, framed):
            assert json.loads(line) == json.loads(original)
            assert pos // PAGE == (pos + len(line) - 1) // PAGE, "a short line crosses a page boundary"
            pos += len(line)
        assert PAGE - pos % PAGE >= reserve or pos % PAGE == 0
        offset = pos


def test_write_then_reopen_continues_last_seq_per_rank(tmp_path):
    path = tmp_path / "m.jsonl"
    sink = JsonlSink(path)
    sink.write([rec(i) for i in range(5000)] + [rec(7, rank=1)])
    sink.close()
    assert JsonlSink(path, rank=0).last_seq == 4999
    assert [r["seq"] for r in iter_records(path)][-2:] == [4999, 7]


def test_second_writer_of_the_same_file_is_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    first = JsonlSink(path)
    with pytest.raises(InstanceError, match="already being written"):
        JsonlSink(path)
    first.close()
    JsonlSink(path).close()


def test_torn_tail_is_moved_aside_not_lost(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"seq":0,"rank":0}\n{"seq":1,"ra')
    sink = JsonlSink(path)
    assert sink.last_seq == 0
    sink.close()
    assert path.read_bytes() == b'{"seq":0,"rank":0}\n'
    assert (tmp_path / "m.jsonl.torn").read_bytes() == b'{"seq":1,"ra\n'


def test_a_failed_write_leaves_only_whole_lines(tmp_path):
    # The file size limit makes write() fail part-way (EFBIG); the sink must cut the partial batch.
    path = tmp_path / "m.jsonl"
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from ava.metrics.sinks.jsonl import JsonlSink
sink = JsonlSink({str(path)!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
seq = 0
try:
    while True:
        sink.write([{{"name": "loss", "value": 1.0, "rank": 0, "seq": seq + i}} for i in range(50)])
        seq += 50
except OSError as exc:
    print(seq, exc.errno)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    written, errno_ = map(int, out.stdout.split())
    assert errno_ == 27  # EFBIG
    seqs = [r["seq"] for r in iter_records(path)]
    assert seqs == list(range(written))
    assert path.read_bytes().endswith(b"\n")
