"""A process logging metrics in a loop is killed with SIGKILL: the record must stay whole."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ava.metrics.sinks.jsonl import iter_records
from ava.train import base as train

pytestmark = pytest.mark.integration

LOOP = """
import sys
from ava.train import base as train
ins = train.TrainInstance(sys.argv[1], workspace=sys.argv[2], setup_logging=False)
ins._writer._interval = 0.005
step = 0
while True:
    ins.log_metrics({"loss": 1.0 / (step + 1), "accuracy": step % 100 / 100.0, "name_" + "x" * (step % 700): 1.0},
                    step=step, epoch=step // 1000, batch=step % 1000)
    step += 1
"""


def wait_for_lines(path, n, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > n * 120:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not grow")


@pytest.mark.parametrize("trial", range(5))
def test_kill_9_leaves_whole_lines_and_no_seq_gaps(ws, trial):
    ins_id = f"kill-{trial}"
    metrics = ws.root / "run" / ins_id / "logs" / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", LOOP, ins_id, str(ws.root)])
    try:
        wait_for_lines(metrics, 2000 + trial * 3000)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    raw = metrics.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"", "the file must end with a whole line"
    records = [json.loads(line) for line in lines[:-1]]
    assert len(records) > 2000
    assert [r["seq"] for r in records] == list(range(len(records)))
    # The next process resumes the instance: seq continues, the killed attempt is recorded.
    again = train.TrainInstance(ins_id, workspace=ws.root, setup_logging=False)
    again.log_metrics({"loss": 0.0}, step=10**6)
    again.done()
    after = list(iter_records(metrics))
    assert after[-1]["seq"] == len(records)
    doc = json.loads((ws.root / "run" / ins_id / "status.json").read_text())
    assert doc["history"][-1]["status"] == "crashed" and doc["status"] == "done"
