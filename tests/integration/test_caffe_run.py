"""Real Caffe under `ava run --parser caffe` and under the guide's cmd.logproc code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ava.metrics.sinks.jsonl import iter_records
from tests.conftest import REPO
from tests.integration.caffe_support import (
    caffe_binary,
    iteration_losses,
    net_outputs,
    write_lenet_dataset,
    write_lenet_solver,
)

pytestmark = [pytest.mark.caffe, pytest.mark.integration]

MAX_ITER, TEST_INTERVAL, SNAPSHOT, DISPLAY = 200, 50, 100, 10


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    work = tmp_path_factory.mktemp("lenet-data")
    data = write_lenet_dataset(work / "data", n_train=2000, n_test=400, seed=0)
    return work, data


def solver_in(tmp_path: Path, lenet) -> tuple[Path, Path]:
    _, data = lenet
    prefix = tmp_path / "out" / "lenet"
    solver = write_lenet_solver(tmp_path, data.dir, max_iter=MAX_ITER, test_interval=TEST_INTERVAL,
                                snapshot=SNAPSHOT, snapshot_prefix=prefix, display=DISPLAY)
    return solver, prefix


def check_run(ws: Path, run_id: str, log: str, prefix: Path) -> None:
    """The record matches the log; both snapshots are in storage, LATEST at the last."""
    recs = list(iter_records(ws / "run" / run_id / "logs" / "metrics.jsonl"))
    metrics = [r for r in recs if "event" not in r]
    losses = [(r["step"], r["value"]) for r in metrics if r["name"] == "smoothed_loss"]
    assert losses == [(it, pytest.approx(v)) for it, v in iteration_losses(log)]
    acc = [(r["step"], r["net"], r["value"]) for r in metrics if r["phase"] == "test" and r["name"] == "accuracy"]
    assert [s for s, _, _ in acc] == list(range(0, MAX_ITER + 1, TEST_INTERVAL))
    assert [v for _, _, v in acc] == pytest.approx(net_outputs(log, "accuracy"))
    assert {n for _, n, _ in acc} == {0} and acc[-1][2] > 0.9
    train_loss = [r for r in metrics if r["phase"] == "train" and r["name"] == "loss"]
    assert len(train_loss) == len(losses) - 1  # Caffe prints no Train net output after the last iteration
    lr = [r for r in metrics if r["name"] == "lr"]
    assert lr and lr[0]["step"] == 0 and lr[0]["value"] == pytest.approx(0.01)
    assert any(r.get("event") == "done" for r in recs)
    stored = ws / "storage" / run_id / "snapshots"
    for it in (100, 200):
        for ext in ("caffemodel", "solverstate"):
            local = Path(f"{prefix}_iter_{it}.{ext}")
            remote = stored / f"iter-{it:08d}" / local.name
            assert remote.read_bytes() == local.read_bytes()
        manifest = json.loads((stored / f"iter-{it:08d}" / "MANIFEST.json").read_text())
        assert manifest["meta"]["step"] == it
    assert (stored / "LATEST").read_text() == "iter-00000200"
    assert json.loads((ws / "run" / run_id / "status.json").read_text())["status"] == "done"


def test_ava_run_parser_caffe(tmp_path, lenet):
    solver, prefix = solver_in(tmp_path, lenet)
    ws = tmp_path / "ws"
    out = subprocess.run([sys.executable, "-m", "ava", "run", "--parser", "caffe", "--id", "lenet", "--",
                          caffe_binary(), "train", "-solver", str(solver)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "AVA_WORKSPACE": str(ws)})
    assert out.returncode == 0, out.stderr[-3000:]
    check_run(ws, "lenet", out.stderr, prefix)
    assert "Optimization Done." in (ws / "run" / "lenet" / "logs" / "run.log").read_text()


def test_the_guides_caffe_snippet(tmp_path, lenet):
    solver, prefix = solver_in(tmp_path, lenet)
    ws = tmp_path / "ws"
    out = subprocess.run([sys.executable, str(REPO / "examples" / "guide_caffe.py"), caffe_binary(), str(solver), "100"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "AVA_WORKSPACE": str(ws), "AVA_TRAINING_INSTANCE_ID": "guide"})
    assert out.returncode == 0, out.stderr[-3000:]
    check_run(ws, "guide", out.stdout, prefix)  # startproc merges Caffe's stderr into its stdout, as the old SDK did
    assert json.loads((ws / "storage" / "guide" / "snapshots" / "iter-00000200" / "MANIFEST.json").read_text())["meta"]["epoch"] == 2


def test_a_failing_caffe_is_failed_with_its_error(tmp_path):
    ws = tmp_path / "ws"
    out = subprocess.run([sys.executable, "-m", "ava", "run", "--parser", "caffe", "--id", "broken", "--",
                          caffe_binary(), "train", "-solver", str(tmp_path / "missing.prototxt")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "AVA_WORKSPACE": str(ws)})
    assert out.returncode != 0
    doc = json.loads((ws / "run" / "broken" / "status.json").read_text())
    assert doc["status"] == "failed" and doc["exit_code"] == out.returncode and "missing.prototxt" in doc["err_msg"]


@pytest.mark.parametrize("how", ["ava run", "guide"])
def test_sigterm_makes_caffe_snapshot_and_the_run_preempted(tmp_path, lenet, how):
    """SIGTERM to `ava run`, or to the guide's script (startproc, logproc): Caffe gets SIGINT,
    writes a snapshot of the iteration it reached and stops; the snapshot is uploaded, the status
    is preempted and the process exits 143. (Under the guide's code Caffe got nothing at first,
    then SIGTERM, which killed it without a snapshot.)"""
    _, data = lenet
    prefix = tmp_path / "out" / "lenet"
    solver = write_lenet_solver(tmp_path, data.dir, max_iter=100_000, test_interval=1000, snapshot=100_000,
                                snapshot_prefix=prefix, display=DISPLAY)
    ws = tmp_path / "ws"
    err = open(tmp_path / "stderr.txt", "w+")
    if how == "ava run":
        command = [sys.executable, "-m", "ava", "run", "--parser", "caffe", "--id", "pre", "--",
                   caffe_binary(), "train", "-solver", str(solver)]
    else:
        command = [sys.executable, str(REPO / "examples" / "guide_caffe.py"), caffe_binary(), str(solver), "100"]
    proc = subprocess.Popen(command, stdout=err, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "AVA_WORKSPACE": str(ws), "AVA_PREEMPT_TIMEOUT": "5",
                                 "AVA_TRAINING_INSTANCE_ID": "pre"})
    metrics = ws / "run" / "pre" / "logs" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # until Caffe has reported iteration 50
            if metrics.exists() and any((r.get("step") or 0) >= 50 for r in iter_records(metrics)):
                break
            time.sleep(0.1)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:  # a failed test must not leave a 100,000-iteration Caffe running
            proc.kill()
            proc.wait(30)
        subprocess.run(["pkill", "-KILL", "-f", str(solver)], check=False)
    err.seek(0)
    log = err.read()
    assert code == 143, log[-3000:]
    assert "Optimization stopped early." in log
    doc = json.loads((ws / "run" / "pre" / "status.json").read_text())
    assert doc["status"] == "preempted" and doc["exit_code"] == 143
    recs = list(iter_records(metrics))
    stopped_at = max(r["step"] for r in recs if r.get("name") == "smoothed_loss")
    snaps = [r for r in recs if r.get("event") == "snapshot"]
    assert snaps, "Caffe's stop snapshot must reach the uploader"
    stored = ws / "storage" / "pre" / "snapshots"
    latest = (stored / "LATEST").read_text()
    manifest = json.loads((stored / latest / "MANIFEST.json").read_text())
    assert manifest["meta"]["step"] >= stopped_at
    for f in manifest["files"]:
        local = Path(f"{prefix}_iter_{manifest['meta']['step']}.{f['name'].rsplit('.', 1)[1]}")
        assert (stored / latest / f["name"]).read_bytes() == local.read_bytes()
    assert took < 5 + 1.0, f"took {took:.2f} s"
    print(f"FIGURE caffe-sigterm ({how}): exit {code} {took:.2f} s after SIGTERM, snapshot {latest} uploaded")
